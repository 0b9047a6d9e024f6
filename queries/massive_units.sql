-- massive_units.sql: the "massive activation" units of each run, a fragility control. A unit whose activation
-- is an outlier in size across the identification images can change captions whatever the concept when it is
-- zeroed, so a neuron set's effect should not rest on one of them (the random_nonmassive baseline and
-- `kneuron select --exclude-massive K` leave them out).
--
-- Parameters (NULL = default): $run_id VARCHAR (NULL: every run, each on its own), $k DOUBLE (NULL: 10).
-- magnitude(l, i) = mean over the run's identification pairs (samples with status 'ok' that splits does not
--   put in 'eval'; every concept) of |o_mean|, where o_mean is the unit's activation on the original image
--   averaged over the recorded positions P (neuron_stats). |mean over P| <= mean over P of |O|: the rule sees
--   the units whose activation keeps one sign and a large size over P, which is what a massive activation is.
-- A unit is massive when (1) magnitude > $k x the median magnitude of all the run's units (every layer) and
--   (2) ln(magnitude) lies beyond Tukey's far-out fence of the run's log magnitudes: > Q3 + 3 x (Q3 - Q1) of
--   ln(magnitude) over the units with magnitude > 0 (continuous quantiles). (1) alone flags the whole upper
--   tail of a skewed distribution (2% of a tiny model's units at k = 10); (2) is scale-free and keeps only
--   units far outside the bulk, a handful or none. k = 10 (an order of magnitude above the typical unit) was
--   fixed before any evaluation; both read only identification images.
-- Read like the selection reads its means: a (run, concept) whose rollup is complete and carries the |o_mean|
--   sums (neuron_rollup.sum_abs_o_mean: written by ingest and compaction) is summed from the rollup, every other
--   one (no rollup yet; a rollup file from before that column, where it is null) from its image rows. The rollup
--   sums every neuron_stats row of its batch, which ingest writes only for ok identification images, so both
--   give the same sums (exact: float16 values), hence the same rows as averaging the image rows.
-- Columns: run_id, model_name, layer, unit, magnitude, median_magnitude, ratio (magnitude / median),
--   n_pairs; ordered by run, ratio descending, layer, unit.
WITH ident AS (
    SELECT DISTINCT run_id, concept, image_id
    FROM samples
    WHERE status = 'ok' AND ($run_id IS NULL OR run_id = $run_id)
      AND NOT EXISTS (SELECT 1 FROM splits AS e
                      WHERE e.run_id = samples.run_id AND e.split = 'eval'
                        AND e.concept = samples.concept AND e.image_id = samples.image_id)
),
rolled AS (
    SELECT run_id, concept, layer, unit, CAST(n_images AS BIGINT) AS n, sum_abs_o_mean AS s
    FROM neuron_rollup_summed WHERE $run_id IS NULL OR run_id = $run_id
    UNION ALL
    SELECT run_id, concept, layer, unit, CAST(n_images AS BIGINT) AS n, sum_abs_o_mean AS s
    FROM neuron_rollup_parts WHERE $run_id IS NULL OR run_id = $run_id
),
without_sums AS (  -- complete rollups written before sum_abs_o_mean existed: read their image rows
    SELECT DISTINCT run_id, concept FROM rolled WHERE s IS NULL
),
from_rollup AS (
    SELECT r.run_id, r.layer, r.unit, sum(r.s) AS s, sum(r.n) AS n
    FROM rolled AS r
    ANTI JOIN without_sums AS w ON w.run_id = r.run_id AND w.concept = r.concept
    GROUP BY r.run_id, r.layer, r.unit
),
image_rows AS (
    SELECT run_id, concept, image_id, layer, unit, o_mean
    FROM neuron_stats_unrolled WHERE $run_id IS NULL OR run_id = $run_id
    UNION ALL
    SELECT s.run_id, s.concept, s.image_id, s.layer, s.unit, s.o_mean
    FROM neuron_stats AS s
    SEMI JOIN without_sums AS w ON w.run_id = s.run_id AND w.concept = s.concept
    WHERE $run_id IS NULL OR s.run_id = $run_id
),
from_rows AS (
    SELECT s.run_id, s.layer, s.unit, sum(abs(CAST(s.o_mean AS DOUBLE))) AS s, count(*) AS n
    FROM image_rows AS s
    SEMI JOIN ident AS i ON i.run_id = s.run_id AND i.concept = s.concept AND i.image_id = s.image_id
    GROUP BY s.run_id, s.layer, s.unit
),
magnitude AS (
    SELECT run_id, layer, unit, sum(s) / sum(n) AS magnitude, CAST(sum(n) AS BIGINT) AS n_pairs
    FROM (SELECT * FROM from_rollup UNION ALL SELECT * FROM from_rows)
    GROUP BY run_id, layer, unit
),
typical AS (
    SELECT run_id, median(magnitude) AS median_magnitude,
           quantile_cont(ln(magnitude), 0.75) FILTER (WHERE magnitude > 0) AS log_q3,
           quantile_cont(ln(magnitude), 0.25) FILTER (WHERE magnitude > 0) AS log_q1
    FROM magnitude GROUP BY run_id
)
SELECT m.run_id, r.model_name, m.layer, m.unit, m.magnitude, t.median_magnitude,
       m.magnitude / NULLIF(t.median_magnitude, 0) AS ratio, m.n_pairs
FROM magnitude AS m
JOIN typical AS t ON t.run_id = m.run_id
LEFT JOIN runs AS r ON r.run_id = m.run_id
WHERE m.magnitude > COALESCE(CAST($k AS DOUBLE), 10.0) * t.median_magnitude
  AND ln(m.magnitude) > t.log_q3 + 3 * (t.log_q3 - t.log_q1)
ORDER BY m.run_id, ratio DESC, m.layer, m.unit

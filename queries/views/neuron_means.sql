-- neuron_means (view): per (run, concept, layer, unit) over the concept's identification images with status 'ok'
-- (samples.status = 'ok', not in the 'eval' split: two_stage.sql's ok_images), the number of images n_images and
-- the means mean_d_max, mean_d_mean, mean_g_max, mean_g_mean of the per-image values — exactly what the mean
-- path of two_stage.sql computes from neuron_stats (avg of the value cast to DOUBLE), without reading the image
-- rows where the rollup is complete.
--
-- Where a (run, concept) has a complete rollup (every neuron_stats batch of it carries its neuron_rollup rows, as
-- `kneuron ingest` writes them and `kneuron compact` keeps or rebuilds them), the means are sum / count of the
-- rollup's exact float64 sums: taken as they are from a partition's single rollup file (neuron_rollup_summed:
-- after `kneuron compact`, one row per neuron) or added up over its per-batch files (neuron_rollup_parts).
-- Elsewhere (warehouses written before the rollup existed, until `kneuron compact` builds it) they are averaged
-- from the image rows (neuron_stats_unrolled). The rollup sums every neuron_stats row of its batch: ingest
-- records rows only for ok identification images, so both give the same numbers (to the last bit: the sums are
-- exact up to 4096 images per concept).
-- Columns: run_id, concept, layer, unit, n_images, mean_d_max, mean_d_mean, mean_g_max, mean_g_mean.
CREATE OR REPLACE TEMP VIEW neuron_means AS
WITH rolled AS (
    SELECT run_id, concept, layer, unit, CAST(n_images AS BIGINT) AS n,
           sum_d_max AS s_d_max, sum_d_mean AS s_d_mean, sum_g_max AS s_g_max, sum_g_mean AS s_g_mean
    FROM neuron_rollup_summed
    UNION ALL
    SELECT run_id, concept, layer, unit, CAST(sum(n_images) AS BIGINT) AS n,
           sum(sum_d_max) AS s_d_max, sum(sum_d_mean) AS s_d_mean,
           sum(sum_g_max) AS s_g_max, sum(sum_g_mean) AS s_g_mean
    FROM neuron_rollup_parts
    GROUP BY run_id, concept, layer, unit
),
ok_images AS (
    SELECT DISTINCT run_id, concept, image_id
    FROM samples
    WHERE status = 'ok'
      AND NOT EXISTS (SELECT 1 FROM splits AS e
                      WHERE e.run_id = samples.run_id AND e.split = 'eval'
                        AND e.concept = samples.concept AND e.image_id = samples.image_id)
),
unrolled AS (
    SELECT s.run_id, s.concept, s.layer, s.unit, count(*) AS n,
           avg(CAST(s.d_max AS DOUBLE)) AS mean_d_max, avg(CAST(s.d_mean AS DOUBLE)) AS mean_d_mean,
           avg(CAST(s.g_max AS DOUBLE)) AS mean_g_max, avg(CAST(s.g_mean AS DOUBLE)) AS mean_g_mean
    FROM neuron_stats_unrolled AS s
    SEMI JOIN ok_images AS o ON o.run_id = s.run_id AND o.concept = s.concept AND o.image_id = s.image_id
    GROUP BY s.run_id, s.concept, s.layer, s.unit
)
SELECT run_id, concept, layer, unit, n AS n_images,
       s_d_max / n AS mean_d_max, s_d_mean / n AS mean_d_mean, s_g_max / n AS mean_g_max, s_g_mean / n AS mean_g_mean
FROM rolled
WHERE n > 0
UNION ALL
SELECT run_id, concept, layer, unit, n AS n_images, mean_d_max, mean_d_mean, mean_g_max, mean_g_mean
FROM unrolled

-- two_stage.sql: two-stage knowledge-neuron selection (Sato & Takagi 2025) over `neuron_stats`.
--
-- Reads the views neuron_stats(run_id, concept, image_id, layer, unit, d_max, d_mean, g_max, g_mean, ...),
-- samples(run_id, concept, image_id, status) and splits(run_id, concept, image_id, split). Only the
-- identification images count: samples with status = 'ok' that the splits table does not put in 'eval'.
-- With $aggregate = 'mean' the per-neuron means come from the view neuron_means (queries/views: the per-batch
-- rollup written at ingest, summed; exact float64 sums), so no image row is scanned; 'share' reads the rows.
-- Returns one row per selected neuron, plus one row with layer/unit NULL for a concept whose set is empty:
--   concept, n_images, n_neurons, threshold_a, threshold_g, n_candidates, n_selected, n_specific,
--   layer, unit, score, score_a, score_g
-- (score = score_g, or score_a when stage 2 is 'none'; thresholds are the values actually applied).
--
-- Definitions, for concept k of run $run_id and neuron (l, i):
--   Per-image value.   v_a = d_max (Δ = O'_orig − O'_inpainted, max over positions P) if $reduce = 'max',
--                      d_mean (mean over P) if 'mean'; v_g = g_max / g_mean likewise (g_c = O' ⊙ ∂y^c/∂O').
--   Mean score.        mean_a = mean over the concept's ok images of v_a (mean_g likewise).
--   Aggregation $aggregate:
--     'mean'   score = mean score; the neuron passes when score > t.
--     'share'  score = share of images with v > t (t is a per-image threshold); passes when score >= $min_share
--              (the "sharing ratio" of Dai et al. 2022, with the prompts of a fact read as the images of k).
--   Threshold kinds ($a_kind for stage 1, $g_kind for stage 2; value $a_value / $g_value, overridden per
--   concept by the parallel lists $a_concepts/$a_values, $g_concepts/$g_values):
--     'absolute'  t = value.
--     'quantile'  t = value-quantile (linear interpolation, quantile_cont) of the concept's mean scores over
--                 the pool. In share mode this t is the per-image threshold: it is taken over the mean scores
--                 because a per-image threshold must live on the scale of one image's values.
--     'budget'    the top n = value neurons by (score desc, mean score desc, layer asc, unit asc). In share mode
--                 the per-image threshold t is the n-th largest mean score (so that the mean-mode top n sit
--                 at the boundary) and $min_share is not applied: a budget fixes the count.
--     'auto'      triangle / knee rule (Zack et al. 1977) with no hand-set number: sort the pool's positive
--                 mean scores descending s_1 >= ... >= s_m, normalise x_j = (j-1)/(m-1) and
--                 y_j = (s_j - s_m)/(s_1 - s_m), take the knee j* = argmax_j |1 - x_j - y_j| (the point
--                 farthest from the chord joining the first and last point; smallest j on ties) and set
--                 t = s_{j*}: the scores above the knee pass (for a step curve the knee is the first point
--                 of the flat tail). When no point lies off the chord (m <= 2, all equal, a straight line)
--                 there is no knee and t = 0: every positive score passes.
--                 Why: neuron attributions are heavy-tailed (a few neurons carry most of the signal); the knee
--                 is where the steep head of the sorted curve meets the flat tail, it is invariant to the
--                 scale of Δ and g_c (which differs per concept and per model) and to the number of neurons,
--                 and it needs no distributional assumption (unlike mean + z·std). Negative and zero scores
--                 never pass. In share mode the knee of the mean scores is the per-image threshold.
--     'none'      every neuron passes (used by the single-stage baselines).
--   C_k = neurons passing stage 1 (pool = all neurons of k).
--   N_k = neurons of C_k passing stage 2. The stage-2 pool ($g_pool) is 'candidates' (C_k; default: the
--         quantile/knee/budget of stage 2 ranks the candidates against each other, which is what refining C_k
--         means) or 'all' (thresholds from all neurons of k, then intersected with C_k).
--   Excluded units ($x_layers/$x_units, parallel lists; e.g. the run's massive units, queries/massive_units.sql)
--         are taken out of every concept's pool before stage 1: they never count, pass or set a threshold.
--   Specificity S_k (beyond the paper; $s_kind, 'none' = off). The neuron (l, i) is specific to k when
--     'stage1'  it is in C_k and in no other concept's C_c (c != k, every concept of the run, each with its own
--               stage-1 threshold: no new number);
--     'ratio'   s_k > 0 and s_k > $s_ratio * max_{c != k} s_c, where s_c is the neuron's mean score over the
--               identification images of concept c (mean_a if $s_stage = 'a', mean_g if 'g'); $s_ratio = 1:
--               k is the concept the neuron scores highest on. A run with one concept: every s_k > 0 passes.
--     With specificity on, the stages run over every concept of the run (others' C_c and s_c are needed) and
--     only the result is restricted to $concepts. $s_scope says where S_k applies: 'final' (a third filter:
--     N_k ∩ S_k) or 'pool' (the stage-2 pool is C_k ∩ S_k, so a stage-2 budget top:n gives the n best
--     specific candidates). n_specific = |C_k ∩ S_k| (= n_candidates when specificity is off).
WITH
selected_concepts AS (
    SELECT unnest(CAST($concepts AS VARCHAR[])) AS concept
),
ok_images AS (
    SELECT DISTINCT concept, image_id
    FROM samples
    WHERE run_id = $run_id AND status = 'ok'
      AND ($s_kind <> 'none' OR len(CAST($concepts AS VARCHAR[])) = 0
           OR concept IN (SELECT concept FROM selected_concepts))
      AND NOT EXISTS (SELECT 1 FROM splits AS e
                      WHERE e.run_id = $run_id AND e.split = 'eval'
                        AND e.concept = samples.concept AND e.image_id = samples.image_id)
),
per_image AS NOT MATERIALIZED (
    SELECT s.concept, s.image_id, s.layer, s.unit,
           CAST(CASE WHEN $reduce = 'max' THEN s.d_max ELSE s.d_mean END AS DOUBLE) AS v_a,
           CAST(CASE WHEN $reduce = 'max' THEN s.g_max ELSE s.g_mean END AS DOUBLE) AS v_g
    FROM neuron_stats AS s
    SEMI JOIN ok_images AS o ON s.concept = o.concept AND s.image_id = o.image_id
    WHERE s.run_id = $run_id
      AND ($s_kind <> 'none' OR len(CAST($concepts AS VARCHAR[])) = 0
           OR s.concept IN (SELECT concept FROM selected_concepts))
),
excluded AS (
    SELECT unnest(CAST($x_layers AS INTEGER[])) AS layer, unnest(CAST($x_units AS INTEGER[])) AS unit
),
neurons AS (
    SELECT concept, layer, unit, n_img, mean_a, mean_g
    FROM (SELECT concept, layer, unit, count(*) AS n_img, avg(v_a) AS mean_a, avg(v_g) AS mean_g
          FROM per_image
          WHERE $aggregate <> 'mean'
          GROUP BY concept, layer, unit
          UNION ALL
          SELECT m.concept, m.layer, m.unit, m.n_images AS n_img,
                 CASE WHEN $reduce = 'max' THEN m.mean_d_max ELSE m.mean_d_mean END AS mean_a,
                 CASE WHEN $reduce = 'max' THEN m.mean_g_max ELSE m.mean_g_mean END AS mean_g
          FROM neuron_means AS m
          WHERE $aggregate = 'mean' AND m.run_id = $run_id
            AND ($s_kind <> 'none' OR len(CAST($concepts AS VARCHAR[])) = 0
                 OR m.concept IN (SELECT concept FROM selected_concepts))) AS p
    ANTI JOIN excluded AS x ON x.layer = p.layer AND x.unit = p.unit
),
concepts AS (
    SELECT concept, max(n_img) AS n_images, count(*) AS n_neurons FROM neurons GROUP BY concept
),
-- ---------------------------------------------------------------- stage 1: threshold per concept
a_value AS (
    SELECT c.concept, COALESCE(o.value, CAST($a_value AS DOUBLE)) AS value
    FROM concepts AS c
    LEFT JOIN (SELECT unnest(CAST($a_concepts AS VARCHAR[])) AS concept,
                      unnest(CAST($a_values AS DOUBLE[])) AS value) AS o ON o.concept = c.concept
),
a_ranked AS (
    SELECT concept, mean_a AS s,
           row_number() OVER (PARTITION BY concept ORDER BY mean_a DESC, layer, unit) AS j,
           count(*) OVER (PARTITION BY concept) AS m,
           max(mean_a) OVER (PARTITION BY concept) AS s_hi,
           min(mean_a) OVER (PARTITION BY concept) AS s_lo
    FROM neurons
    WHERE mean_a > 0 AND $a_kind = 'auto'
),
a_knee AS (
    SELECT concept,
           max(d) AS d_knee,
           first(s ORDER BY d DESC, j) AS s_knee
    FROM (SELECT concept, s, j,
                 COALESCE(abs(1.0 - (j - 1) / NULLIF(m - 1, 0) - (s - s_lo) / NULLIF(s_hi - s_lo, 0)), 0.0) AS d
          FROM a_ranked)
    GROUP BY concept
),
a_auto AS (
    SELECT concept, CASE WHEN d_knee > 0 THEN s_knee ELSE 0.0 END AS t
    FROM a_knee
),
a_sorted AS (
    SELECT n.concept, v.value, list_sort(list(n.mean_a)) AS xs
    FROM neurons AS n JOIN a_value AS v ON v.concept = n.concept
    WHERE $a_kind IN ('quantile', 'budget')
    GROUP BY n.concept, v.value
),
a_stats AS (
    SELECT concept,
           xs[lo + 1] + (h - lo) * (xs[least(lo + 2, len(xs))] - xs[lo + 1]) AS t_quantile,
           xs[greatest(len(xs) - CAST(value AS BIGINT) + 1, 1)] AS t_budget
    FROM (SELECT *, CAST(floor(h) AS BIGINT) AS lo
          FROM (SELECT *, (len(xs) - 1) * least(greatest(value, 0.0), 1.0) AS h FROM a_sorted))
),
a_threshold AS (
    SELECT c.concept, v.value,
           CASE $a_kind
               WHEN 'absolute' THEN v.value
               WHEN 'quantile' THEN st.t_quantile
               WHEN 'budget' THEN st.t_budget
               WHEN 'auto' THEN COALESCE(au.t, 0.0)
           END AS t
    FROM concepts AS c
    JOIN a_value AS v ON v.concept = c.concept
    LEFT JOIN a_stats AS st ON st.concept = c.concept
    LEFT JOIN a_auto AS au ON au.concept = c.concept
),
-- ---------------------------------------------------------------- stage 1: scores and candidates
a_share AS (
    SELECT p.concept, p.layer, p.unit, avg(CASE WHEN p.v_a > t.t THEN 1.0 ELSE 0.0 END) AS share_a
    FROM per_image AS p JOIN a_threshold AS t ON t.concept = p.concept
    WHERE $aggregate = 'share' AND $a_kind <> 'none'
    GROUP BY p.concept, p.layer, p.unit
),
a_scored AS (
    SELECT n.*, t.t AS t_a, t.value AS value_a,
           CASE WHEN $aggregate = 'share' THEN sh.share_a ELSE n.mean_a END AS score_a
    FROM neurons AS n
    JOIN a_threshold AS t ON t.concept = n.concept
    LEFT JOIN a_share AS sh ON sh.concept = n.concept AND sh.layer = n.layer AND sh.unit = n.unit
),
a_passed AS (
    SELECT *,
           COALESCE(CASE
               WHEN $a_kind = 'none' THEN TRUE
               WHEN $a_kind = 'budget' THEN
                   row_number() OVER (PARTITION BY concept ORDER BY score_a DESC, mean_a DESC, layer, unit) <= value_a
               WHEN $aggregate = 'share' THEN score_a >= $min_share
               ELSE score_a > t_a
           END, FALSE) AS in_c
    FROM a_scored
),
-- ---------------------------------------------------------------- specificity S_k
s_other AS (
    SELECT a.concept, a.layer, a.unit,
           max(CASE WHEN $s_stage = 'a' THEN b.mean_a ELSE b.mean_g END) AS other_max
    FROM neurons AS a
    JOIN neurons AS b ON b.layer = a.layer AND b.unit = a.unit AND b.concept <> a.concept
    WHERE $s_kind = 'ratio'
    GROUP BY a.concept, a.layer, a.unit
),
s_passed AS (
    SELECT a.*,
           CASE $s_kind
               WHEN 'stage1' THEN a.in_c AND count(*) FILTER (WHERE a.in_c)
                                                 OVER (PARTITION BY a.layer, a.unit) = 1
               WHEN 'ratio' THEN COALESCE(
                   (CASE WHEN $s_stage = 'a' THEN a.mean_a ELSE a.mean_g END) > 0
                   AND (o.other_max IS NULL
                        OR (CASE WHEN $s_stage = 'a' THEN a.mean_a ELSE a.mean_g END)
                           > CAST($s_ratio AS DOUBLE) * o.other_max), FALSE)
               ELSE TRUE
           END AS in_s
    FROM a_passed AS a
    LEFT JOIN s_other AS o ON o.concept = a.concept AND o.layer = a.layer AND o.unit = a.unit
),
-- ---------------------------------------------------------------- stage 2: threshold over the pool
g_pool AS (
    SELECT * FROM s_passed WHERE (in_c OR $g_pool = 'all') AND (in_s OR $s_scope <> 'pool')
),
g_value AS (
    SELECT c.concept, COALESCE(o.value, CAST($g_value AS DOUBLE)) AS value
    FROM concepts AS c
    LEFT JOIN (SELECT unnest(CAST($g_concepts AS VARCHAR[])) AS concept,
                      unnest(CAST($g_values AS DOUBLE[])) AS value) AS o ON o.concept = c.concept
),
g_ranked AS (
    SELECT concept, mean_g AS s,
           row_number() OVER (PARTITION BY concept ORDER BY mean_g DESC, layer, unit) AS j,
           count(*) OVER (PARTITION BY concept) AS m,
           max(mean_g) OVER (PARTITION BY concept) AS s_hi,
           min(mean_g) OVER (PARTITION BY concept) AS s_lo
    FROM g_pool
    WHERE mean_g > 0 AND $g_kind = 'auto'
),
g_knee AS (
    SELECT concept,
           max(d) AS d_knee,
           first(s ORDER BY d DESC, j) AS s_knee
    FROM (SELECT concept, s, j,
                 COALESCE(abs(1.0 - (j - 1) / NULLIF(m - 1, 0) - (s - s_lo) / NULLIF(s_hi - s_lo, 0)), 0.0) AS d
          FROM g_ranked)
    GROUP BY concept
),
g_auto AS (
    SELECT concept, CASE WHEN d_knee > 0 THEN s_knee ELSE 0.0 END AS t
    FROM g_knee
),
g_sorted AS (
    SELECT n.concept, v.value, list_sort(list(n.mean_g)) AS xs
    FROM g_pool AS n JOIN g_value AS v ON v.concept = n.concept
    WHERE $g_kind IN ('quantile', 'budget')
    GROUP BY n.concept, v.value
),
g_stats AS (
    SELECT concept,
           xs[lo + 1] + (h - lo) * (xs[least(lo + 2, len(xs))] - xs[lo + 1]) AS t_quantile,
           xs[greatest(len(xs) - CAST(value AS BIGINT) + 1, 1)] AS t_budget
    FROM (SELECT *, CAST(floor(h) AS BIGINT) AS lo
          FROM (SELECT *, (len(xs) - 1) * least(greatest(value, 0.0), 1.0) AS h FROM g_sorted))
),
g_threshold AS (
    SELECT c.concept, v.value,
           CASE $g_kind
               WHEN 'absolute' THEN v.value
               WHEN 'quantile' THEN st.t_quantile
               WHEN 'budget' THEN st.t_budget
               WHEN 'auto' THEN COALESCE(au.t, 0.0)
           END AS t
    FROM concepts AS c
    JOIN g_value AS v ON v.concept = c.concept
    LEFT JOIN g_stats AS st ON st.concept = c.concept
    LEFT JOIN g_auto AS au ON au.concept = c.concept
),
-- ---------------------------------------------------------------- stage 2: scores and the final set
g_share AS (
    SELECT p.concept, p.layer, p.unit, avg(CASE WHEN p.v_g > t.t THEN 1.0 ELSE 0.0 END) AS share_g
    FROM per_image AS p
    JOIN g_threshold AS t ON t.concept = p.concept
    SEMI JOIN g_pool AS q ON q.concept = p.concept AND q.layer = p.layer AND q.unit = p.unit
    WHERE $aggregate = 'share' AND $g_kind <> 'none'
    GROUP BY p.concept, p.layer, p.unit
),
g_scored AS (
    SELECT q.*, t.t AS t_g, t.value AS value_g,
           CASE WHEN $aggregate = 'share' THEN sh.share_g ELSE q.mean_g END AS score_g
    FROM g_pool AS q
    JOIN g_threshold AS t ON t.concept = q.concept
    LEFT JOIN g_share AS sh ON sh.concept = q.concept AND sh.layer = q.layer AND sh.unit = q.unit
),
g_passed AS (
    SELECT *,
           COALESCE(CASE
               WHEN $g_kind = 'none' THEN TRUE
               WHEN $g_kind = 'budget' THEN
                   row_number() OVER (PARTITION BY concept ORDER BY score_g DESC, mean_g DESC, layer, unit) <= value_g
               WHEN $aggregate = 'share' THEN score_g >= $min_share
               ELSE score_g > t_g
           END, FALSE) AS in_n
    FROM g_scored
),
final_set AS (
    SELECT concept, layer, unit, score_a, score_g,
           CASE WHEN $g_kind = 'none' THEN score_a ELSE score_g END AS score
    FROM g_passed
    WHERE in_c AND in_n AND (in_s OR $s_scope <> 'final')
),
summary AS (
    SELECT c.concept, c.n_images, c.n_neurons, ta.t AS threshold_a, tg.t AS threshold_g,
           (SELECT count(*) FROM a_passed AS a WHERE a.concept = c.concept AND a.in_c) AS n_candidates,
           (SELECT count(*) FROM final_set AS f WHERE f.concept = c.concept) AS n_selected,
           (SELECT count(*) FROM s_passed AS p WHERE p.concept = c.concept AND p.in_c AND p.in_s) AS n_specific
    FROM concepts AS c
    JOIN a_threshold AS ta ON ta.concept = c.concept
    JOIN g_threshold AS tg ON tg.concept = c.concept
    WHERE len(CAST($concepts AS VARCHAR[])) = 0 OR c.concept IN (SELECT concept FROM selected_concepts)
)
SELECT s.concept, s.n_images, s.n_neurons, s.threshold_a, s.threshold_g, s.n_candidates, s.n_selected,
       s.n_specific, f.layer, f.unit, f.score, f.score_a, f.score_g
FROM summary AS s
LEFT JOIN final_set AS f ON f.concept = s.concept
ORDER BY s.concept, f.layer, f.unit

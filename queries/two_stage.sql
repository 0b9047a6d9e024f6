-- two_stage.sql: two-stage knowledge-neuron selection (Sato & Takagi 2025) over `neuron_stats`.
-- planner: hash joins build on the right-hand side as written
--
-- Reads the views neuron_stats(run_id, concept, image_id, layer, unit, d_max, d_mean, g_max, g_mean, ...),
-- samples(run_id, concept, image_id, status) and splits(run_id, concept, image_id, split). Only the
-- identification images count: samples with status = 'ok' that the splits table does not put in 'eval'.
-- With $aggregate = 'mean' the per-neuron means come from the view neuron_means (queries/views: the per-batch
-- rollup written at ingest, summed; exact float64 sums), so no image row is scanned; 'share' reads the rows.
-- Returns one row per selected neuron, plus one row with layer/unit NULL for a concept whose set is empty:
--   concept, n_images, n_neurons, threshold_a, threshold_g, n_candidates, n_selected, n_specific,
--   layer, unit, score, score_a, score_g, specific
-- ($s_keep_all with $s_scope = 'final': also the neurons of N_k outside S_k, with specific = FALSE, so one pass
-- gives N_k and N_k ∩ S_k; n_selected stays |N_k ∩ S_k|. Otherwise every row has specific = TRUE.)
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
--
-- How (speed at 80 concepts x 352 k neurons on 2 cores; each rule above is what a window or a sort would compute):
--   no window over every neuron in the default plans. The knee sorts only where it can lie: the pool's positive
--   means go into 1024 equal-width value buckets (b = 0 holds the largest), which fixes the ranks each bucket's
--   values take (r0 = 1 + the count of the buckets above, to r0 + k - 1); d is monotone in rank and value, so
--   d_bound (d at the bucket's corners) bounds every d in it, and d_first (d of its largest value, at rank r0) is
--   a d that exists. Only buckets whose d_bound reaches the largest d_first (less 1e-9) are ranked value by value:
--   the others cannot hold the knee, so j* and t are the full sort's (a tie in value sits in one bucket and gives
--   the same t in any order). A budget takes the concept's top n with the aggregate max(struct, n), struct =
--   (score, mean, -layer, -unit) in the budget's order, n = $a_budget_max / $g_budget_max (the largest budget,
--   bound by the caller), and passes the neurons at or above the n-th struct. DuckDB's max(x, n) takes n < 10^6;
--   a larger budget falls back to the sorted list and a row_number() window. Conditions on the parameters alone
--   are folded by the planner, so a plan carries only the branch it uses. Joins build on the right-hand side as
--   written (the line at the top: DuckDB's estimates for the materialized CTEs would build hash tables of every
--   neuron and probe them with one row per concept), and concepts are numbered (concept_index).
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
-- From here on a concept is its number in concept_index (concept, with its name): the joins of every neuron's row to
-- a row per concept run several times faster on an integer than on text.
concept_index AS (
    SELECT concept AS name, CAST(row_number() OVER (ORDER BY concept) AS INTEGER) AS concept
    FROM (SELECT DISTINCT concept FROM ok_images)
),
per_image AS NOT MATERIALIZED (
    SELECT c.concept, s.image_id, s.layer, s.unit,
           CAST(CASE WHEN $reduce = 'max' THEN s.d_max ELSE s.d_mean END AS DOUBLE) AS v_a,
           CAST(CASE WHEN $reduce = 'max' THEN s.g_max ELSE s.g_mean END AS DOUBLE) AS v_g
    FROM neuron_stats AS s
    JOIN concept_index AS c ON c.name = s.concept
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
          SELECT c.concept, m.layer, m.unit, m.n_images AS n_img,
                 CASE WHEN $reduce = 'max' THEN m.mean_d_max ELSE m.mean_d_mean END AS mean_a,
                 CASE WHEN $reduce = 'max' THEN m.mean_g_max ELSE m.mean_g_mean END AS mean_g
          FROM neuron_means AS m
          JOIN concept_index AS c ON c.name = m.concept
          WHERE $aggregate = 'mean' AND m.run_id = $run_id
            AND ($s_kind <> 'none' OR len(CAST($concepts AS VARCHAR[])) = 0
                 OR m.concept IN (SELECT concept FROM selected_concepts))) AS p
    ANTI JOIN excluded AS x ON x.layer = p.layer AND x.unit = p.unit
),
concepts AS (
    SELECT concept, max(n_img) AS n_images, count(*) AS n_neurons FROM neurons GROUP BY concept
),
-- ---------------------------------------------------------------- stage 1: threshold per concept
-- include: threshold s=a pool=neurons mean=mean_a top_pool=neurons
-- ---------------------------------------------------------------- stage 1: scores and candidates
-- include: score_pass s=a pool=neurons images=per_image passed=in_c
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
g_top_pool AS NOT MATERIALIZED (
    SELECT concept, layer, unit, mean_g FROM g_pool WHERE NOT ($a_kind = 'none' AND $s_kind = 'none')
    UNION ALL  -- every neuron is in the pool: read it where it is kept (g_pool is then read once)
    SELECT concept, layer, unit, mean_g FROM neurons WHERE $a_kind = 'none' AND $s_kind = 'none'
),
g_images AS NOT MATERIALIZED (  -- the image rows of the pool's neurons (share mode reads them)
    SELECT p.* FROM per_image AS p
    SEMI JOIN g_pool AS q ON q.concept = p.concept AND q.layer = p.layer AND q.unit = p.unit
),
-- include: threshold s=g pool=g_pool mean=mean_g top_pool=g_top_pool
-- ---------------------------------------------------------------- stage 2: scores and the final set
-- include: score_pass s=g pool=g_pool images=g_images passed=in_n
final_set AS (
    SELECT concept, layer, unit, score_a, score_g,
           CASE WHEN $g_kind = 'none' THEN score_a ELSE score_g END AS score,
           (in_s OR $s_scope <> 'final') AS specific
    FROM g_passed
    WHERE in_c AND in_n AND (in_s OR $s_scope <> 'final' OR $s_keep_all)
),
-- |C_k| and |C_k ∩ S_k|: every neuron when stage 1 is off and S_k too; else g_pool holds every candidate unless
-- S_k restricts the pool, and counting there (a table of the candidates, or of every neuron with $g_pool = 'all')
-- spares keeping s_passed, a row per neuron, for a second reader
counts AS (
    SELECT concept, n_neurons AS n_candidates, n_neurons AS n_specific
    FROM concepts WHERE $a_kind = 'none' AND $s_kind = 'none'
    UNION ALL
    SELECT concept, count(*) FILTER (WHERE in_c) AS n_candidates, count(*) FILTER (WHERE in_c AND in_s) AS n_specific
    FROM g_pool WHERE $s_scope <> 'pool' AND NOT ($a_kind = 'none' AND $s_kind = 'none') GROUP BY concept
    UNION ALL
    SELECT concept, count(*) FILTER (WHERE in_c) AS n_candidates, count(*) FILTER (WHERE in_c AND in_s) AS n_specific
    FROM s_passed WHERE $s_scope = 'pool' AND NOT ($a_kind = 'none' AND $s_kind = 'none') GROUP BY concept
),
summary AS (
    SELECT c.concept, i.name, c.n_images, c.n_neurons, ta.t AS threshold_a, tg.t AS threshold_g,
           COALESCE(k.n_candidates, 0) AS n_candidates,
           (SELECT count(*) FROM final_set AS f WHERE f.concept = c.concept AND f.specific) AS n_selected,
           COALESCE(k.n_specific, 0) AS n_specific
    FROM concepts AS c
    LEFT JOIN counts AS k ON k.concept = c.concept
    JOIN a_threshold AS ta ON ta.concept = c.concept
    JOIN g_threshold AS tg ON tg.concept = c.concept
    JOIN concept_index AS i ON i.concept = c.concept
    WHERE len(CAST($concepts AS VARCHAR[])) = 0 OR i.name IN (SELECT concept FROM selected_concepts)
)
SELECT s.name AS concept, s.n_images, s.n_neurons, s.threshold_a, s.threshold_g, s.n_candidates, s.n_selected,
       s.n_specific, f.layer, f.unit, f.score, f.score_a, f.score_g, f.specific
FROM summary AS s
LEFT JOIN final_set AS f ON f.concept = s.concept
ORDER BY s.name, f.layer, f.unit

-- set_sizes.sql: size of each stage of the current neuron sets, per run, concept and method.
--
-- Parameters (NULL = no filter; `kneuron sql -q set_sizes -p run_id=R -p method=two_stage`):
--   $run_id VARCHAR, $method VARCHAR ('two_stage', 'stage1_only', 'stage2_only', ...).
-- The current sets are the view current_sets (queries/views/current_sets.sql).
-- Columns: run_id, concept, method, set_id, n_images (identification images used),
--   n_candidates (|C_k|, stage 1), n_selected (|N_k|, stage 2 = rows of the set), threshold_a, threshold_g
--   (the thresholds applied, from params_json.resolved; per-image thresholds in share mode).
SELECT run_id, concept, method, set_id,
       CAST(json_extract(params_json, '$.resolved.n_images') AS BIGINT) AS n_images,
       CAST(json_extract(params_json, '$.resolved.n_candidates') AS BIGINT) AS n_candidates,
       n_neurons AS n_selected,
       CAST(json_extract(params_json, '$.resolved.threshold_a') AS DOUBLE) AS threshold_a,
       CAST(json_extract(params_json, '$.resolved.threshold_g') AS DOUBLE) AS threshold_g
FROM current_sets
WHERE ($run_id IS NULL OR run_id = $run_id) AND ($method IS NULL OR method = $method)
ORDER BY run_id, concept, method

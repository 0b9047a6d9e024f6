-- report_set_sizes.sql: size of each stage of the neuron sets a report shows (set_sizes.sql, for given sets).
--
-- Parameters: $set_ids VARCHAR[] (the sets shown: by default the current sets of the run).
-- Columns: concept, method, set_id, n_images (identification images used), n_candidates (|C_k|, stage 1),
--   n_selected (rows of the set), threshold_a, threshold_g (from params_json.resolved); ordered by concept,
--   method, set_id.
SELECT concept, method, set_id,
       CAST(json_extract(any_value(params_json), '$.resolved.n_images') AS BIGINT) AS n_images,
       CAST(json_extract(any_value(params_json), '$.resolved.n_candidates') AS BIGINT) AS n_candidates,
       count(*) AS n_selected,
       CAST(json_extract(any_value(params_json), '$.resolved.threshold_a') AS DOUBLE) AS threshold_a,
       CAST(json_extract(any_value(params_json), '$.resolved.threshold_g') AS DOUBLE) AS threshold_g
FROM neuron_sets
WHERE list_contains(CAST($set_ids AS VARCHAR[]), set_id)
GROUP BY concept, method, set_id
ORDER BY concept, method, set_id

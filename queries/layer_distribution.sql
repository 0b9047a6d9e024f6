-- layer_distribution.sql: how the neurons of the current sets spread over layers, per run, concept, method.
--
-- Parameters (NULL = no filter): $run_id VARCHAR, $method VARCHAR.
-- The neurons of the current sets are the view current_members (queries/views/current_members.sql).
-- Columns: run_id, concept, method, set_id, layer, n_neurons (neurons of the set in that layer),
--   share (n_neurons / size of the set). Layers without neurons are left out.
SELECT run_id, concept, method, set_id, layer, count(*) AS n_neurons,
       count(*) / sum(count(*)) OVER (PARTITION BY set_id) AS share
FROM current_members
WHERE ($run_id IS NULL OR run_id = $run_id) AND ($method IS NULL OR method = $method)
GROUP BY run_id, concept, method, set_id, layer
ORDER BY run_id, concept, method, layer

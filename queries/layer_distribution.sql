-- layer_distribution.sql: how the neurons of the current sets spread over layers, per run, concept, method.
--
-- Parameters (NULL = no filter): $run_id VARCHAR, $method VARCHAR.
-- The current sets are the view current_sets (queries/views/current_sets.sql).
-- Columns: run_id, concept, method, set_id, layer, n_neurons (neurons of the set in that layer),
--   share (n_neurons / size of the set). Layers without neurons are left out.
WITH current_ids AS (
    SELECT set_id
    FROM current_sets
    WHERE ($run_id IS NULL OR run_id = $run_id) AND ($method IS NULL OR method = $method)
)
SELECT run_id, concept, method, set_id, layer, count(*) AS n_neurons,
       count(*) / sum(count(*)) OVER (PARTITION BY set_id) AS share
FROM neuron_sets
WHERE set_id IN (SELECT set_id FROM current_ids)
GROUP BY run_id, concept, method, set_id, layer
ORDER BY run_id, concept, method, layer

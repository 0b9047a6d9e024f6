-- run_sets.sql: the neurons of the stored neuron sets of one run (read by the suppression evaluation and the
-- run reader).
--
-- Parameters: $run_id VARCHAR; $set_ids VARCHAR[] (empty list = every set of the run).
-- Columns: set_id, concept, method, params_json, created_at, layer, unit, score; one row per neuron, ordered by
-- concept, method, created_at, set_id, layer, unit (so the last set of a (concept, method) comes last).
SELECT set_id, concept, method, params_json, created_at, layer, unit, score
FROM neuron_sets
WHERE run_id = $run_id
  AND (len(CAST($set_ids AS VARCHAR[])) = 0 OR list_contains(CAST($set_ids AS VARCHAR[]), set_id))
ORDER BY concept, method, created_at, set_id, layer, unit

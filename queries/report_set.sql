-- report_set.sql: the members of one neuron set of one run, strongest first.
--
-- Parameters: $run_id VARCHAR, $set_id VARCHAR.
-- Columns: concept, method, layer, unit, score; ordered by score descending (NULL last), layer, unit.
-- No row when the run has no set with that id.
SELECT concept, method, layer, unit, score
FROM neuron_sets
WHERE run_id = $run_id AND set_id = $set_id
ORDER BY score DESC NULLS LAST, layer, unit

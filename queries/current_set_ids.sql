-- current_set_ids.sql: the id of the current set of every (concept, method) of one run.
--
-- Parameters: $run_id VARCHAR, $method VARCHAR (NULL: every method).
-- The current sets are the view current_sets (queries/views/current_sets.sql).
-- Columns: concept, method, set_id, current_since, n_neurons; ordered by concept, method.
SELECT concept, method, set_id, current_since, n_neurons
FROM current_sets
WHERE run_id = $run_id AND ($method IS NULL OR method = $method)
ORDER BY concept, method

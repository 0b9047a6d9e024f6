-- list_sets.sql: every stored neuron set, and whether it is the current one (`kneuron ls sets`).
--
-- Parameters: $run_id VARCHAR (NULL: every run).
-- The current sets are the view current_sets (queries/views/current_sets.sql).
-- Columns: set_id, run_id, concept, method, size (neurons), created_at, current (the current set of its
--   (run, concept, method)); ordered by run_id, concept, method, created_at, set_id.
WITH sets AS (
    SELECT set_id, run_id, concept, method, count(*) AS size, max(created_at) AS created_at
    FROM neuron_sets
    WHERE $run_id IS NULL OR run_id = $run_id
    GROUP BY set_id, run_id, concept, method
)
SELECT s.set_id, s.run_id, s.concept, s.method, s.size, s.created_at,
       s.set_id IN (SELECT set_id FROM current_sets) AS current
FROM sets AS s
ORDER BY s.run_id, s.concept, s.method, s.created_at, s.set_id

-- report_neurons.sql: the members of the current neuron set of every (concept, method) of one run.
--
-- Parameters: $run_id VARCHAR, $method VARCHAR (NULL: every method).
-- The current set of a (run, concept, method) is its most recent one (created_at, then set_id), as in
-- layer_distribution.sql and set_sizes.sql.
-- Columns: concept, method, set_id, layer, unit, score; ordered by concept, method, score descending
--   (NULL scores last), layer, unit, so the first rows of a set are its strongest neurons.
WITH current_ids AS (
    SELECT set_id
    FROM neuron_sets
    WHERE run_id = $run_id AND ($method IS NULL OR method = $method)
    GROUP BY set_id, run_id, concept, method
    QUALIFY row_number() OVER (PARTITION BY run_id, concept, method
                               ORDER BY max(created_at) DESC, set_id DESC) = 1
)
SELECT concept, method, set_id, layer, unit, score
FROM neuron_sets
WHERE set_id IN (SELECT set_id FROM current_ids)
ORDER BY concept, method, score DESC NULLS LAST, layer, unit

-- generic_neurons.sql: neurons that the current sets of many concepts share ("generic" rather than
-- concept-specific neurons), per run and method.
--
-- Parameters (NULL = default): $run_id VARCHAR, $method VARCHAR (NULL: every method, each on its own),
--   $min_concepts INTEGER (keep neurons in at least this many concepts; NULL: 2), $top INTEGER (rows per
--   run and method; NULL: 50).
-- The neurons of the current sets are the view current_members (queries/views/current_members.sql).
-- Columns: run_id, method, layer, unit, n_concepts, share_of_concepts (n_concepts / concepts with a
--   non-empty set), concepts (sorted list); ordered by n_concepts desc, then layer, unit.
WITH
-- include: members
per_neuron AS (
    SELECT run_id, method, layer, unit, count(*) AS n_concepts, list_sort(list(concept)) AS concepts
    FROM members
    GROUP BY run_id, method, layer, unit
),
n_sets AS (
    SELECT run_id, method, count(DISTINCT concept) AS n FROM members GROUP BY run_id, method
)
SELECT p.run_id, p.method, p.layer, p.unit, p.n_concepts, p.n_concepts / s.n AS share_of_concepts, p.concepts
FROM per_neuron AS p
JOIN n_sets AS s ON s.run_id = p.run_id AND s.method = p.method
WHERE p.n_concepts >= COALESCE($min_concepts, 2)
QUALIFY row_number() OVER (PARTITION BY p.run_id, p.method
                           ORDER BY p.n_concepts DESC, p.layer, p.unit) <= COALESCE($top, 50)
ORDER BY p.run_id, p.method, p.n_concepts DESC, p.layer, p.unit

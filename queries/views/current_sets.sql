-- current_sets (view): the current neuron set of every (run, concept, method), one row each.
--
-- A set becomes current when `kneuron select` chooses it (a set_choices row, even for a set stored earlier) or,
-- if no one ever chose it, when it was stored (created_at). The current set is the one with the latest of
-- those moments (ties: the larger set_id). Every query about "the current sets" reads this view.
-- Columns: run_id, concept, method, set_id, current_since, params_json, n_neurons.
CREATE OR REPLACE TEMP VIEW current_sets AS
WITH sets AS (
    SELECT set_id, run_id, concept, method, any_value(params_json) AS params_json,
           max(created_at) AS created_at, count(*) AS n_neurons
    FROM neuron_sets
    GROUP BY set_id, run_id, concept, method
),
chosen AS (
    SELECT set_id, max(chosen_at) AS chosen_at FROM set_choices GROUP BY set_id
)
SELECT s.run_id, s.concept, s.method, s.set_id,
       greatest(s.created_at, coalesce(c.chosen_at, s.created_at)) AS current_since,
       s.params_json, s.n_neurons
FROM sets AS s LEFT JOIN chosen AS c ON c.set_id = s.set_id
QUALIFY row_number() OVER (PARTITION BY s.run_id, s.concept, s.method
                           ORDER BY current_since DESC, s.set_id DESC) = 1

-- current_members (view): the neurons of the current sets (current_sets), one row per stored neuron_sets row.
--
-- Every query about "the neurons of the current sets" reads this view instead of repeating the join.
-- Columns: the columns of neuron_sets (set_id, run_id, concept, method, params_json, layer, unit, score,
--   created_at).
CREATE OR REPLACE TEMP VIEW current_members AS
SELECT *
FROM neuron_sets
WHERE set_id IN (SELECT set_id FROM current_sets)

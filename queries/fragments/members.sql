-- fragments/members.sql: the neurons of the current sets of a run and method, included by concept_overlap.sql and
-- generic_neurons.sql (`-- include: members`).
--
-- No placeholders. Reads the view current_members (queries/views/current_members.sql) and the parameters $run_id and
-- $method (NULL = no filter). Gives members(run_id, method, concept, layer, unit), each neuron once per set. The CTE
-- ends with a comma: more CTEs follow the include.
members AS (
    SELECT DISTINCT run_id, method, concept, layer, unit
    FROM current_members
    WHERE ($run_id IS NULL OR run_id = $run_id) AND ($method IS NULL OR method = $method)
),

-- list_evals.sql: the suppression evaluations of the warehouse (`kneuron ls evals`).
--
-- Parameters: $run_id VARCHAR (NULL: every run).
-- Columns: eval_id, run_id, created_at, methods / concepts (sorted lists of the methods and concepts with
--   suppressed captions stored; empty for an evaluation without any yet); ordered by created_at, eval_id.
WITH done AS (
    SELECT eval_id,
           list_sort(list(DISTINCT method)) AS methods,
           list_sort(list(DISTINCT concept)) AS concepts
    FROM captions
    WHERE condition = 'suppressed'
    GROUP BY eval_id
)
SELECT e.eval_id, e.run_id, e.created_at,
       coalesce(d.methods, CAST([] AS VARCHAR[])) AS methods,
       coalesce(d.concepts, CAST([] AS VARCHAR[])) AS concepts
FROM evals AS e
LEFT JOIN done AS d ON d.eval_id = e.eval_id
WHERE $run_id IS NULL OR e.run_id = $run_id
ORDER BY e.created_at, e.eval_id

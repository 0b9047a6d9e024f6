-- list_runs.sql: the runs of the warehouse with what was ingested (`kneuron ls runs`).
--
-- Parameters: $run_id VARCHAR (NULL: every run).
-- Columns: run_id, created_at, model_name, concepts (sorted list of the concepts split or ingested),
--   pairs_ok / pairs_skipped ((concept, image) pairs of samples with status 'ok' / 'skipped');
--   ordered by created_at, then run_id.
WITH concepts AS (
    SELECT run_id, list_sort(list(DISTINCT concept)) AS concepts
    FROM (SELECT run_id, concept FROM splits UNION SELECT run_id, concept FROM samples)
    GROUP BY run_id
),
pairs AS (
    SELECT run_id,
           count(*) FILTER (WHERE status = 'ok') AS pairs_ok,
           count(*) FILTER (WHERE status = 'skipped') AS pairs_skipped
    FROM samples
    GROUP BY run_id
)
SELECT r.run_id, r.created_at, r.model_name,
       coalesce(c.concepts, CAST([] AS VARCHAR[])) AS concepts,
       coalesce(p.pairs_ok, 0) AS pairs_ok,
       coalesce(p.pairs_skipped, 0) AS pairs_skipped
FROM runs AS r
LEFT JOIN concepts AS c ON c.run_id = r.run_id
LEFT JOIN pairs AS p ON p.run_id = r.run_id
WHERE $run_id IS NULL OR r.run_id = $run_id
ORDER BY r.created_at, r.run_id

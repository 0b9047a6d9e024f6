-- latest_run.sql: the id of the most recent run (one row, or none when the warehouse has no runs).
-- Reads the view runs(run_id, created_at, ...).
SELECT run_id
FROM runs
ORDER BY created_at DESC, run_id DESC
LIMIT 1

-- suppress_eval_row.sql: the evals row of one evaluation (no row when it does not exist yet).
--
-- Parameter: $eval_id VARCHAR. Columns: eval_id, run_id, created_at, config_json.
SELECT eval_id, run_id, created_at, config_json
FROM evals
WHERE eval_id = $eval_id

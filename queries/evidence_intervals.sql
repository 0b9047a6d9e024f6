-- evidence_intervals.sql: the stored `evidence_intervals` rows of one evaluation (`kneuron.engine.eval.evidence`).
--
-- Parameter: $eval_id VARCHAR. Columns: every column of evidence_intervals except eval_id and run_id.
SELECT * EXCLUDE (eval_id, run_id)
FROM evidence_intervals
WHERE eval_id = $eval_id

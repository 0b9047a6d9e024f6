-- evidence_gaps.sql: the stored `evidence_gaps` rows of one evaluation (`kneuron.engine.eval.evidence`).
--
-- Parameter: $eval_id VARCHAR. Columns: every column of evidence_gaps except eval_id and run_id.
SELECT * EXCLUDE (eval_id, run_id)
FROM evidence_gaps
WHERE eval_id = $eval_id

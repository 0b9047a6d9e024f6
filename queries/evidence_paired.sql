-- evidence_paired.sql: the stored `evidence_paired` rows of one evaluation (`kneuron.engine.eval.evidence`).
--
-- Parameter: $eval_id VARCHAR. Columns: every column of evidence_paired except eval_id and run_id.
SELECT * EXCLUDE (eval_id, run_id)
FROM evidence_paired
WHERE eval_id = $eval_id

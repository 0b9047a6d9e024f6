-- evidence_stored.sql: whether the evidence of one evaluation (intervals, paired tests, mentions) is stored.
--
-- Parameter: $eval_id VARCHAR. Columns: n_intervals (evidence_intervals rows of the evaluation).
SELECT count(*) AS n_intervals
FROM evidence_intervals
WHERE eval_id = $eval_id

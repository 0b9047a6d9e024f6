-- suppress_eval_scores.sql: every caption score of one suppression evaluation.
--
-- Parameter: $eval_id VARCHAR. Columns: concept, method, group, image_id, metric, reference, value (0-1), ordered
-- by concept, method, group, image_id, metric, reference. Method 'unmodified' scores the unmodified captions
-- (against themselves and against the ground truth); the other methods score the suppressed captions.
SELECT concept, method, "group", image_id, metric, reference, value
FROM scores
WHERE eval_id = $eval_id
ORDER BY concept, method, "group", image_id, metric, reference

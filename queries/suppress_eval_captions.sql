-- suppress_eval_captions.sql: every caption of one suppression evaluation.
--
-- Parameter: $eval_id VARCHAR. Columns: concept, method, set_id, group, image_id, condition, text, ordered by
-- concept, method, group, image_id. Method 'unmodified' (condition 'unmodified') holds the unmodified model's
-- captions of the concept's target and other images; every other method holds the captions with its set
-- suppressed (condition 'suppressed').
SELECT concept, method, set_id, "group", image_id, condition, text
FROM captions
WHERE eval_id = $eval_id
ORDER BY concept, method, "group", image_id

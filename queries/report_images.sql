-- report_images.sql: the images of each concept of one run, evaluation images first.
--
-- Parameters: $run_id VARCHAR.
-- Columns: concept, image_id, split ('eval' | 'ident'); ordered by concept, eval before ident, image_id.
-- Heatmaps and the heatmap contrast use the evaluation images (not used to select the neurons) and fall back
-- to identification images only for a concept without any.
SELECT concept, image_id, split
FROM splits
WHERE run_id = $run_id
ORDER BY concept, split = 'ident', image_id

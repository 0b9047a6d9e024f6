-- suppress_images.sql: the images of one run by concept and role, for the suppression evaluation.
--
-- Parameter: $run_id VARCHAR. Columns: concept, image_id, role:
--   'eval'  = the concept's evaluation images (splits.split = 'eval');
--   'ident' = its identification images that were recorded (samples.status = 'ok', not in the eval split),
--             the images two_stage.sql selects from.
-- Ordered by concept, role, image_id.
SELECT DISTINCT concept, image_id, 'eval' AS role
FROM splits
WHERE run_id = $run_id AND split = 'eval'
UNION
SELECT DISTINCT concept, image_id, 'ident' AS role
FROM samples
WHERE run_id = $run_id AND status = 'ok'
  AND NOT EXISTS (SELECT 1 FROM splits AS e
                  WHERE e.run_id = $run_id AND e.split = 'eval'
                    AND e.concept = samples.concept AND e.image_id = samples.image_id)
ORDER BY concept, role, image_id

-- suppress_cached_captions.sql: unmodified captions of a run made with the same generation settings.
--
-- Parameters: $run_id VARCHAR; $generation_key VARCHAR (evals.config_json -> generation_key: a hash of the
-- model, dtype, prompt and decoding settings). Columns: image_id, text. One row per image: the caption of the
-- oldest evaluation that has one (greedy decoding makes them equal anyway).
SELECT c.image_id, first(c.text ORDER BY e.created_at, e.eval_id) AS text
FROM captions AS c
JOIN evals AS e ON e.eval_id = c.eval_id AND e.run_id = c.run_id
WHERE c.run_id = $run_id AND c.condition = 'unmodified'
  AND json_extract_string(e.config_json, '$.generation_key') = $generation_key
GROUP BY c.image_id
ORDER BY c.image_id

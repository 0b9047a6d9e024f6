-- report_evals.sql: the suppression evaluations of one run, newest first.
--
-- Parameters: $run_id VARCHAR.
-- Columns: eval_id, created_at, n_suppressed (suppressed captions stored), n_methods and n_concepts (distinct
--   methods / concepts with suppressed captions), ablation (the evaluation's ablation mode, `zero` when its
--   config names none); ordered by created_at descending, then eval_id descending.
SELECT e.eval_id, e.created_at,
       count(c.image_id) AS n_suppressed,
       count(DISTINCT c.method) AS n_methods,
       count(DISTINCT c.concept) AS n_concepts,
       coalesce(json_extract_string(any_value(e.config_json), '$.ablation.mode'), 'zero') AS ablation
FROM evals AS e
LEFT JOIN captions AS c ON c.eval_id = e.eval_id AND c.condition = 'suppressed'
WHERE e.run_id = $run_id
GROUP BY e.eval_id, e.created_at
ORDER BY e.created_at DESC, e.eval_id DESC

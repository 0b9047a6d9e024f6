-- report_budget_evals.sql: the budget evaluations of one run (those whose method labels carry a budget,
-- "<method>@<n>", as `kneuron suppress --budgets` stores them), newest first.
--
-- Parameters: $run_id VARCHAR.
-- Columns: eval_id, created_at, n_labels (distinct method@budget labels with suppressed captions), n_concepts,
--   ablation (the evaluation's ablation mode, `zero` when its config names none);
--   ordered by created_at descending, then eval_id descending.
SELECT e.eval_id, e.created_at,
       count(DISTINCT c.method) AS n_labels,
       count(DISTINCT c.concept) AS n_concepts,
       coalesce(json_extract_string(any_value(e.config_json), '$.ablation.mode'), 'zero') AS ablation
FROM evals AS e
JOIN captions AS c ON c.eval_id = e.eval_id AND c.condition = 'suppressed'
WHERE e.run_id = $run_id AND regexp_matches(c.method, '@[0-9]+$')
GROUP BY e.eval_id, e.created_at
ORDER BY e.created_at DESC, e.eval_id DESC

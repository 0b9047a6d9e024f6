-- Powered re-run (issue #26): budget curves of evaluation $eval: per method and budget n, T(n) (target mention
-- drop), O(n) (share of the other images' object mentions lost) and T(n) - O(n), each with its 95 % bootstrap
-- interval (images within concepts), and n.
--   python -m kneuron.cli.main sql --warehouse WH -f benchmarks/powered/budget_table.sql -p eval=EVAL_ID
WITH iv AS (
    SELECT * FROM evidence_intervals WHERE eval_id = $eval AND budget IS NOT NULL
), gp AS (
    SELECT * FROM evidence_gaps WHERE eval_id = $eval AND quantity = 'gap' AND baseline IS NULL AND budget IS NOT NULL
)
SELECT t.method, t.budget,
       round(t.estimate, 3) AS T, round(t.images_low, 3) AS T_lo, round(t.images_high, 3) AS T_hi,
       round(o.estimate, 3) AS O, round(o.images_low, 3) AS O_lo, round(o.images_high, 3) AS O_hi,
       round(g.estimate, 3) AS T_minus_O, round(g.images_low, 3) AS g_lo, round(g.images_high, 3) AS g_hi,
       g.n_target_images AS n_target, g.n_other_pairs AS n_other, g.n_concepts AS concepts
FROM iv t
JOIN iv o ON o.method = t.method AND o.budget = t.budget AND o."group" = 'other' AND o.measure = 'retention'
JOIN gp g ON g.method = t.method AND g.budget = t.budget
WHERE t."group" = 'target' AND t.measure = 'mention'
ORDER BY t.method, t.budget

-- Powered re-run (issue #26): each method's specificity area over the budgets of evaluation $eval with its two
-- 95 % bootstrap intervals, and the paired area difference against random (sign-flip p, Holm across the
-- method's baselines), with n.
--   python -m kneuron.cli.main sql --warehouse WH -f benchmarks/powered/area_table.sql -p eval=EVAL_ID
WITH a AS (SELECT * FROM evidence_gaps WHERE eval_id = $eval AND quantity = 'area')
SELECT s.method,
       round(s.estimate, 3) AS area, round(s.images_low, 3) AS lo, round(s.images_high, 3) AS hi,
       round(s.concepts_low, 3) AS clo, round(s.concepts_high, 3) AS chi,
       round(r.estimate, 3) AS minus_random, round(r.images_low, 3) AS d_lo, round(r.images_high, 3) AS d_hi,
       round(r.concepts_low, 3) AS d_clo, round(r.concepts_high, 3) AS d_chi, round(r.p_holm, 3) AS p_holm,
       s.n_target_images AS n_target, s.n_other_pairs AS n_other, s.n_concepts AS concepts
FROM a s
LEFT JOIN a r ON r.method = s.method AND r.baseline = 'random'
WHERE s.baseline IS NULL
ORDER BY s.estimate DESC

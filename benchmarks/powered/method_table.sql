-- Powered re-run (issue #26): one row per method of evaluation $eval at budget $budget (NULL: the single-budget
-- evaluation): T (target mention drop), O (share of the other images' object mentions lost, measure retention), T - O, each with its 95 % bootstrap
-- intervals (images within concepts / concepts), and the paired differences against random (sign-flip p,
-- Holm-adjusted across each method's baselines), with n.
--   python -m kneuron.cli.main sql --warehouse WH -f benchmarks/powered/method_table.sql -p eval=EVAL_ID [-p budget=N]
WITH iv AS (
    SELECT * FROM evidence_intervals
    WHERE eval_id = $eval AND measure IN ('mention', 'retention') AND budget IS NOT DISTINCT FROM $budget
), pr AS (
    SELECT * FROM evidence_paired
    WHERE eval_id = $eval AND measure IN ('mention', 'retention') AND baseline = 'random' AND budget IS NOT DISTINCT FROM $budget
), gp AS (
    SELECT * FROM evidence_gaps
    WHERE eval_id = $eval AND quantity = 'gap' AND budget IS NOT DISTINCT FROM $budget
)
SELECT t.method,
       round(t.estimate, 3) AS T, round(t.images_low, 3) AS T_lo, round(t.images_high, 3) AS T_hi,
       round(o.estimate, 3) AS O, round(o.images_low, 3) AS O_lo, round(o.images_high, 3) AS O_hi,
       round(g.estimate, 3) AS T_minus_O, round(g.images_low, 3) AS g_lo, round(g.images_high, 3) AS g_hi,
       round(g.concepts_low, 3) AS g_clo, round(g.concepts_high, 3) AS g_chi,
       round(pt.difference, 3) AS dT_rand, round(pt.p_holm, 3) AS pT_holm,
       round(po.difference, 3) AS dO_rand, round(po.p_holm, 3) AS pO_holm,
       round(gr.estimate, 3) AS dgap_rand, round(gr.images_low, 3) AS dgap_lo, round(gr.images_high, 3) AS dgap_hi,
       round(gr.p_holm, 3) AS pgap_holm,
       g.n_target_images AS n_target, g.n_other_pairs AS n_other, g.n_concepts AS concepts
FROM iv t
JOIN iv o ON o.method = t.method AND o."group" = 'other' AND o.measure = 'retention'
JOIN gp g ON g.method = t.method AND g.baseline IS NULL
LEFT JOIN pr pt ON pt.method = t.method AND pt."group" = 'target' AND pt.measure = 'mention'
LEFT JOIN pr po ON po.method = t.method AND po."group" = 'other' AND po.measure = 'retention'
LEFT JOIN gp gr ON gr.method = t.method AND gr.baseline = 'random'
WHERE t."group" = 'target' AND t.measure = 'mention'
ORDER BY g.estimate DESC

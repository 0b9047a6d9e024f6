-- fragments/score_pass.sql: the scores of one stage and whether each neuron of its pool passes, included twice by
-- two_stage.sql after the stage's threshold (`-- include: score_pass s=a ...` for stage 1, `s=g` for stage 2; the
-- rules are in two_stage.sql's header).
--
-- Placeholders (each key, written between double braces, is replaced by the include line's key=value):
--   s       the stage's prefix, as in fragments/threshold.sql: its CTEs are {{s}}_share .. {{s}}_passed, it reads
--           {{s}}_threshold and {{s}}_top (the threshold fragment's) and the parameters $<s>_kind, $<s>_budget_max;
--           the columns it reads end in _<s> (v_<s> of the images, mean_<s> of the pool), so do those it adds.
--   pool    the relation of the neurons the stage passes or not (concept, layer, unit, mean_<s>, ...): the same
--           neurons the threshold was taken over.
--   images  the per-image rows (concept, layer, unit, v_<s>) of the pool's neurons, read in share mode only.
--   passed  the name of the boolean column that says whether a neuron passes the stage.
-- Also reads $aggregate and $min_share. Gives {{s}}_passed: every row of the pool with t_<s>, value_<s> (the
-- threshold and the value of the concept), score_<s> and the column named by passed. The last CTE ends with a
-- comma: more CTEs follow the include.
{{s}}_share AS (
    SELECT p.concept, p.layer, p.unit, avg(CASE WHEN p.v_{{s}} > t.t THEN 1.0 ELSE 0.0 END) AS share_{{s}}
    FROM {{images}} AS p JOIN {{s}}_threshold AS t ON t.concept = p.concept
    WHERE $aggregate = 'share' AND ${{s}}_kind <> 'none'
    GROUP BY p.concept, p.layer, p.unit
),
{{s}}_scored AS (
    SELECT n.*, t.t AS t_{{s}}, t.value AS value_{{s}},
           CASE WHEN $aggregate = 'share' THEN sh.share_{{s}} ELSE n.mean_{{s}} END AS score_{{s}}
    FROM {{pool}} AS n
    JOIN {{s}}_threshold AS t ON t.concept = n.concept
    LEFT JOIN {{s}}_share AS sh ON sh.concept = n.concept AND sh.layer = n.layer AND sh.unit = n.unit
),
{{s}}_edge AS (
    SELECT concept, ks[least(CAST(value AS BIGINT), len(ks))] AS edge
    FROM (SELECT concept, value, xs AS ks FROM {{s}}_top WHERE $aggregate = 'mean'
          UNION ALL
          SELECT concept, value_{{s}} AS value,
                 max({'s': COALESCE(score_{{s}}, '-inf'::DOUBLE), 'm': mean_{{s}}, 'l': -CAST(layer AS INTEGER),
                      'u': -CAST(unit AS INTEGER)}, greatest(least(${{s}}_budget_max, 999999), 1)) AS ks
          FROM {{s}}_scored
          WHERE $aggregate <> 'mean' AND ${{s}}_kind = 'budget' AND ${{s}}_budget_max < 1000000
          GROUP BY concept, value_{{s}})
    WHERE value >= 1
),
{{s}}_passed AS (
    SELECT s.*,
           COALESCE(CASE
               WHEN ${{s}}_kind = 'none' THEN TRUE
               WHEN ${{s}}_kind = 'budget' AND ${{s}}_budget_max < 1000000 THEN
                   {'s': COALESCE(score_{{s}}, '-inf'::DOUBLE), 'm': mean_{{s}}, 'l': -CAST(s.layer AS INTEGER),
                    'u': -CAST(s.unit AS INTEGER)} >= e.edge
               WHEN ${{s}}_kind = 'budget' THEN
                   row_number() OVER (PARTITION BY s.concept
                                      ORDER BY score_{{s}} DESC, mean_{{s}} DESC, s.layer, s.unit) <= value_{{s}}
               WHEN $aggregate = 'share' THEN score_{{s}} >= $min_share
               ELSE score_{{s}} > t_{{s}}
           END, FALSE) AS {{passed}}
    FROM {{s}}_scored AS s
    LEFT JOIN {{s}}_edge AS e ON e.concept = s.concept
),

-- fragments/threshold.sql: the threshold t of one stage per concept, included twice by two_stage.sql
-- (`-- include: threshold s=a ...` for stage 1, `s=g` for stage 2; the rules are in two_stage.sql's header).
--
-- Placeholders (each key, written between double braces, is replaced by the include line's key=value):
--   s         the stage's prefix: its CTEs are {{s}}_value .. {{s}}_threshold and its parameters $<s>_kind,
--             $<s>_value, $<s>_concepts, $<s>_values, $<s>_budget_max.
--   pool      the relation of the neurons the stage thresholds (concept, layer, unit, mean scores).
--   mean      the pool's column of mean scores (mean_a or mean_g).
--   top_pool  the relation the budget's top n is taken from (the pool, or the same neurons read elsewhere).
-- Reads concepts and concept_index; gives {{s}}_threshold(concept, value, t), one row per concept. The last CTE
-- ends with a comma: more CTEs follow the include.
{{s}}_value AS (
    SELECT c.concept, COALESCE(o.value, CAST(${{s}}_value AS DOUBLE)) AS value
    FROM concepts AS c
    JOIN concept_index AS i ON i.concept = c.concept
    LEFT JOIN (SELECT unnest(CAST(${{s}}_concepts AS VARCHAR[])) AS concept,
                      unnest(CAST(${{s}}_values AS DOUBLE[])) AS value) AS o ON o.concept = i.name
),
{{s}}_knee_range AS (
    SELECT concept, count(*) AS m, max({{mean}}) AS hi, min({{mean}}) AS lo
    FROM {{pool}}
    WHERE {{mean}} > 0 AND ${{s}}_kind = 'auto'
    GROUP BY concept
),
{{s}}_knee_points AS (
    SELECT n.concept, n.{{mean}} AS s,
           COALESCE(least(CAST(floor((r.hi - n.{{mean}}) / NULLIF(r.hi - r.lo, 0) * 1024) AS INTEGER), 1023), 0) AS b
    FROM {{pool}} AS n JOIN {{s}}_knee_range AS r ON r.concept = n.concept
    WHERE n.{{mean}} > 0 AND ${{s}}_kind = 'auto'
),
{{s}}_knee_buckets AS (
    SELECT *,
           COALESCE(abs(1.0 - (r0 - 1) / NULLIF(m - 1, 0) - (max_s - lo) / NULLIF(hi - lo, 0)), 0.0) AS d_first,
           greatest(COALESCE(abs(1.0 - (r0 - 1) / NULLIF(m - 1, 0) - (min_s - lo) / NULLIF(hi - lo, 0)), 0.0),
                    COALESCE(abs(1.0 - ((r0 + k - 1) - 1) / NULLIF(m - 1, 0) - (max_s - lo) / NULLIF(hi - lo, 0)),
                             0.0)) AS d_bound
    FROM (SELECT q.*, r.m, r.hi, r.lo,
                 CAST(1 + COALESCE(sum(q.k) OVER (PARTITION BY q.concept ORDER BY q.b
                                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS BIGINT) AS r0
          FROM (SELECT concept, b, count(*) AS k, max(s) AS max_s, min(s) AS min_s
                FROM {{s}}_knee_points GROUP BY concept, b) AS q
          JOIN {{s}}_knee_range AS r ON r.concept = q.concept)
),
{{s}}_knee AS (
    SELECT concept,
           max({'d': COALESCE(abs(1.0 - (j - 1) / NULLIF(m - 1, 0) - (s - lo) / NULLIF(hi - lo, 0)), 0.0),
                'j': -j, 's': s}) AS knee
    FROM (SELECT p.concept, p.s, k.m, k.hi, k.lo,
                 k.r0 + row_number() OVER (PARTITION BY p.concept, p.b ORDER BY p.s DESC) - 1 AS j
          FROM {{s}}_knee_points AS p
          JOIN (SELECT * FROM {{s}}_knee_buckets
                QUALIFY d_bound + 1e-9 >= max(d_first) OVER (PARTITION BY concept)) AS k
              ON k.concept = p.concept AND k.b = p.b)
    GROUP BY concept
),
{{s}}_auto AS (
    SELECT concept, CASE WHEN knee.d > 0 THEN knee.s ELSE 0.0 END AS t
    FROM {{s}}_knee
),
{{s}}_sorted AS (
    SELECT n.concept, v.value, list_sort(list(n.{{mean}})) AS xs
    FROM {{pool}} AS n JOIN {{s}}_value AS v ON v.concept = n.concept
    WHERE ${{s}}_kind = 'quantile' OR (${{s}}_kind = 'budget' AND ${{s}}_budget_max >= 1000000)
    GROUP BY n.concept, v.value
),
{{s}}_stats AS (
    SELECT concept,
           xs[lo + 1] + (h - lo) * (xs[least(lo + 2, len(xs))] - xs[lo + 1]) AS t_quantile,
           xs[greatest(len(xs) - CAST(value AS BIGINT) + 1, 1)] AS t_budget
    FROM (SELECT *, CAST(floor(h) AS BIGINT) AS lo
          FROM (SELECT *, (len(xs) - 1) * least(greatest(value, 0.0), 1.0) AS h FROM {{s}}_sorted))
),
{{s}}_top AS (
    SELECT n.concept, v.value,
           max({'s': n.{{mean}}, 'm': n.{{mean}}, 'l': -CAST(n.layer AS INTEGER), 'u': -CAST(n.unit AS INTEGER)},
               greatest(least(${{s}}_budget_max, 999999), 1)) AS xs
    FROM {{top_pool}} AS n JOIN {{s}}_value AS v ON v.concept = n.concept
    WHERE ${{s}}_kind = 'budget' AND ${{s}}_budget_max < 1000000
    GROUP BY n.concept, v.value
),
{{s}}_budget AS (
    SELECT concept, CASE WHEN value >= 1 THEN xs[least(CAST(value AS BIGINT), len(xs))].m END AS t_budget
    FROM {{s}}_top
    UNION ALL
    SELECT concept, t_budget FROM {{s}}_stats WHERE ${{s}}_kind = 'budget' AND ${{s}}_budget_max >= 1000000
),
{{s}}_threshold AS (
    SELECT c.concept, v.value,
           CASE ${{s}}_kind
               WHEN 'absolute' THEN v.value
               WHEN 'quantile' THEN st.t_quantile
               WHEN 'budget' THEN bu.t_budget
               WHEN 'auto' THEN COALESCE(au.t, 0.0)
           END AS t
    FROM concepts AS c
    JOIN {{s}}_value AS v ON v.concept = c.concept
    LEFT JOIN {{s}}_stats AS st ON st.concept = c.concept
    LEFT JOIN {{s}}_budget AS bu ON bu.concept = c.concept
    LEFT JOIN {{s}}_auto AS au ON au.concept = c.concept
),

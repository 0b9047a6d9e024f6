-- mention_rates.sql: mention rates from the stored per-(caption, object) outcomes (`mentions`): per evaluation,
-- method label, budget, concept, group and condition, the share of captions naming the concept and the share of
-- the other objects' annotations named, each with its n.
--
-- Parameters: none. Columns: eval_id, method, budget, concept, group, condition, concept_rate, n_captions,
--   other_object_rate, n_object_pairs; ordered by eval_id, method, budget, concept, group, condition.
SELECT eval_id, method, budget, concept, "group", condition,
       avg(CASE WHEN is_concept THEN mentioned::INTEGER END) AS concept_rate,
       count(*) FILTER (WHERE is_concept) AS n_captions,
       avg(CASE WHEN NOT is_concept THEN mentioned::INTEGER END) AS other_object_rate,
       count(*) FILTER (WHERE NOT is_concept) AS n_object_pairs
FROM mentions
GROUP BY ALL
ORDER BY eval_id, method, budget NULLS FIRST, concept, "group", condition

-- report_overlap.sql: pairwise overlap of the sets a report shows, between concepts, within one method
-- (concept_overlap.sql, for given sets).
--
-- Parameters: $set_ids VARCHAR[] (give at most one set per (concept, method)).
-- Columns: method, concept_a, concept_b (concept_a < concept_b), n_a = |A|, n_b = |B|, n_shared = |A ∩ B|
--   (same (layer, unit)), jaccard = |A ∩ B| / |A ∪ B|; every pair of non-empty sets of the same method appears,
--   also with n_shared = 0; ordered by method, jaccard descending, concept_a, concept_b.
WITH members AS (
    SELECT DISTINCT method, concept, layer, unit
    FROM neuron_sets
    WHERE list_contains(CAST($set_ids AS VARCHAR[]), set_id)
),
sizes AS (
    SELECT method, concept, count(*) AS n FROM members GROUP BY method, concept
),
shared AS (
    SELECT a.method, a.concept AS concept_a, b.concept AS concept_b, count(*) AS n_shared
    FROM members AS a
    JOIN members AS b
      ON a.method = b.method AND a.layer = b.layer AND a.unit = b.unit AND a.concept < b.concept
    GROUP BY a.method, a.concept, b.concept
)
SELECT sa.method, sa.concept AS concept_a, sb.concept AS concept_b, sa.n AS n_a, sb.n AS n_b,
       COALESCE(sh.n_shared, 0) AS n_shared,
       COALESCE(sh.n_shared, 0) / (sa.n + sb.n - COALESCE(sh.n_shared, 0)) AS jaccard
FROM sizes AS sa
JOIN sizes AS sb ON sa.method = sb.method AND sa.concept < sb.concept
LEFT JOIN shared AS sh
  ON sh.method = sa.method AND sh.concept_a = sa.concept AND sh.concept_b = sb.concept
ORDER BY sa.method, jaccard DESC, concept_a, concept_b

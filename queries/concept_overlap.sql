-- concept_overlap.sql: pairwise overlap of the current neuron sets of two concepts (same run, same method).
--
-- Parameters (NULL = no filter): $run_id VARCHAR, $method VARCHAR (use one method, e.g. 'two_stage', to
-- compare like with like; with NULL every method is paired within itself).
-- The neurons of the current sets are the view current_members (queries/views/current_members.sql).
-- Columns: run_id, method, concept_a, concept_b (concept_a < concept_b), n_a = |A|, n_b = |B|,
--   n_shared = |A ∩ B| (same (layer, unit)), jaccard = |A ∩ B| / |A ∪ B|. Every pair of non-empty sets appears,
--   also with n_shared = 0.
WITH
-- include: members
sizes AS (
    SELECT run_id, method, concept, count(*) AS n FROM members GROUP BY run_id, method, concept
),
shared AS (
    SELECT a.run_id, a.method, a.concept AS concept_a, b.concept AS concept_b, count(*) AS n_shared
    FROM members AS a
    JOIN members AS b
      ON a.run_id = b.run_id AND a.method = b.method AND a.layer = b.layer AND a.unit = b.unit
     AND a.concept < b.concept
    GROUP BY a.run_id, a.method, a.concept, b.concept
)
SELECT sa.run_id, sa.method, sa.concept AS concept_a, sb.concept AS concept_b, sa.n AS n_a, sb.n AS n_b,
       COALESCE(sh.n_shared, 0) AS n_shared,
       COALESCE(sh.n_shared, 0) / (sa.n + sb.n - COALESCE(sh.n_shared, 0)) AS jaccard
FROM sizes AS sa
JOIN sizes AS sb ON sa.run_id = sb.run_id AND sa.method = sb.method AND sa.concept < sb.concept
LEFT JOIN shared AS sh
  ON sh.run_id = sa.run_id AND sh.method = sa.method AND sh.concept_a = sa.concept AND sh.concept_b = sb.concept
ORDER BY sa.run_id, sa.method, jaccard DESC, concept_a, concept_b

-- report_layers.sql: how the neurons of the sets a report shows spread over layers (layer_distribution.sql,
-- for given sets).
--
-- Parameters: $set_ids VARCHAR[].
-- Columns: concept, method, set_id, layer, n_neurons (neurons of the set in that layer), share (n_neurons /
--   size of the set); layers without neurons are left out; ordered by concept, method, set_id, layer.
SELECT concept, method, set_id, layer, count(*) AS n_neurons,
       count(*) / sum(count(*)) OVER (PARTITION BY set_id) AS share
FROM neuron_sets
WHERE list_contains(CAST($set_ids AS VARCHAR[]), set_id)
GROUP BY concept, method, set_id, layer
ORDER BY concept, method, set_id, layer

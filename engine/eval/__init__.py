"""Evaluation of captions, pure compute (no storage): standard caption metrics (BLEU-4, ROUGE-L, BERTScore,
`engine.eval.metrics`) and concept mentions (`engine.eval.mentions`); for the suppression evaluation its settings
(`engine.eval.config`), image choice (`engine.eval.images`), cached scoring (`engine.eval.scoring`) and the
summary of stored outcomes (`engine.eval.summary`). The runner is `engine.pipelines.suppress`."""
from engine.eval.mentions import SYNONYMS, concepts_mentioned, mention_rate, mentions
from engine.eval.metrics import METRICS, CaptionScorer, MetricConfig

__all__ = ["CaptionScorer", "METRICS", "MetricConfig", "SYNONYMS", "concepts_mentioned", "mention_rate", "mentions"]

"""Evaluation of captions: standard caption metrics (BLEU-4, ROUGE-L, BERTScore) and concept mentions."""
from engine.eval.mentions import SYNONYMS, concepts_mentioned, mention_rate, mentions
from engine.eval.metrics import METRICS, CaptionScorer, MetricConfig

__all__ = ["CaptionScorer", "METRICS", "MetricConfig", "SYNONYMS", "concepts_mentioned", "mention_rate", "mentions"]

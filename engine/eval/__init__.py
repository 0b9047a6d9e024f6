"""Evaluation of captions, pure compute (no storage): standard caption metrics (BLEU-4, ROUGE-L, BERTScore,
`kneuron.engine.eval.metrics`) and concept mentions (`kneuron.engine.eval.mentions`); for the suppression evaluation its
settings
(`kneuron.engine.eval.config`), image choice (`kneuron.engine.eval.images`), cached scoring
(`kneuron.engine.eval.scoring`) and the
summary of stored outcomes (`kneuron.engine.eval.summary`). The runner is
`kneuron.engine.pipelines.suppress.pipeline`."""
from kneuron.engine.eval.mentions import SYNONYMS, concepts_mentioned, mention_rate, mentions
from kneuron.engine.eval.metrics import METRICS, CaptionScorer, MetricConfig

__all__ = ["CaptionScorer", "METRICS", "MetricConfig", "SYNONYMS", "concepts_mentioned", "mention_rate", "mentions"]

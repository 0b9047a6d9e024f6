"""Captioning with a neuron set suppressed: kneuron's batched greedy decoding with the KV cache (`caption_images`,
an nnsight edit on every decoding step) against the way the reference implementation of Pan et al. generates:
one image at a time, no cache, the whole sequence forwarded again at every step (``use_cache=False``), the
units zeroed by a plain forward pre-hook on ``down_proj``. Both must give the same captions token for token
(on the tiny model exactly; on random-weight models with a 32k vocabulary a caption may depart at a step whose
two best logits are within 1e-3, a float32 tie, counted in ``extra_info``); the time ratio reference / kneuron
(kneuron: median over rounds) goes to ``benchmark.extra_info``.

Models (``KNEURON_BENCH_SUPPRESS_MODEL``):
- ``tiny`` (default): the tiny random MiniGPT-4 of the tests;
- ``llama7b_slice``: a MiniGPT-4 whose LLM is a 2-layer LLaMA of 7B width (hidden 4096, d_ff 11008, vocab
  32000) with 32 Q-Former queries, random weights;
- any other value: a model name or folder for `kneuron.engine.models.load_model`.

Environment: ``KNEURON_BENCH_DEVICE`` (default cuda when available), ``KNEURON_BENCH_SUPPRESS_IMAGES`` (16),
``KNEURON_BENCH_SUPPRESS_BATCH`` (16), ``KNEURON_BENCH_SUPPRESS_TOKENS`` (new tokens, 24),
``KNEURON_BENCH_ROUNDS`` (kneuron rounds, 3; the reference runs once). The set: 5% of every layer's units.

    pytest benchmarks/test_bench_suppress.py --benchmark-enable -s
    KNEURON_BENCH_SUPPRESS_MODEL=llama7b_slice KNEURON_BENCH_DEVICE=cuda pytest benchmarks/test_bench_suppress.py -s
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.neurons import as_neuron_set
from tests.helpers.tiny_models import random_images, tiny_minigpt4

DEVICE = os.environ.get("KNEURON_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
MODEL = os.environ.get("KNEURON_BENCH_SUPPRESS_MODEL", "tiny")
N_IMAGES = int(os.environ.get("KNEURON_BENCH_SUPPRESS_IMAGES") or 16)
BATCH = int(os.environ.get("KNEURON_BENCH_SUPPRESS_BATCH") or 16)
NEW_TOKENS = int(os.environ.get("KNEURON_BENCH_SUPPRESS_TOKENS") or 24)
ROUNDS = int(os.environ.get("KNEURON_BENCH_ROUNDS") or 3)
FRACTION = 0.05
TIE = 1e-3  # largest logit gap accepted as a numerical tie (see `compare`)


def load_adapter() -> VLMAdapter:
    if MODEL == "tiny":
        adapter = tiny_minigpt4()
        adapter.model.to(DEVICE)
        return adapter
    if MODEL == "llama7b_slice":
        from benchmarks.test_bench_record import llama7b_slice

        return llama7b_slice()
    from kneuron.engine.models import load_model

    return load_model(MODEL, device=DEVICE)


def neuron_set(adapter: VLMAdapter, seed: int = 0) -> dict[int, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    n = max(1, int(adapter.d_ff * FRACTION))
    return as_neuron_set([(layer, int(u)) for layer in range(adapter.n_layers)
                          for u in torch.randperm(adapter.d_ff, generator=gen)[:n]])


class _Zero:
    """Forward pre-hooks on ``down_proj`` that zero the set's units of its input (every position)."""

    def __init__(self, adapter: VLMAdapter, neurons: dict[int, list[int]]) -> None:
        self.adapter, self.neurons = adapter, neurons
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Zero:
        for layer, units in self.neurons.items():
            index = torch.tensor(units, dtype=torch.long, device=self.adapter.device)

            def hook(module, args, index=index):  # noqa: ANN001
                x = args[0].clone()
                x[..., index] = 0
                return (x,) + tuple(args[1:])
            self.handles.append(self.adapter.neuron_module(self.adapter.model, layer).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def full_forward_logits(adapter: VLMAdapter, image, tokens: list[int]) -> torch.Tensor:  # noqa: ANN001
    """Next-token logits ``[V]`` after ``tokens``: the whole sequence (image encoder included), no cache."""
    prepared = adapter.prepare([image], targets=[tokens])
    if "input_ids" in prepared.kwargs:  # Hugging Face VLMs
        output = adapter.model(*prepared.args, **prepared.kwargs, use_cache=False)
    else:  # MiniGPT-4: its forward takes no cache flag; run its LLM on the same embeddings
        embeds = adapter.model.embed(*prepared.args)  # type: ignore[operator]
        output = adapter.language_model(inputs_embeds=embeds, use_cache=False)
    return adapter.logits(output)[0, -1].float()


def reference_captions(adapter: VLMAdapter, images, neurons):  # noqa: ANN001
    """Pan et al.'s way: per image, per step, a full forward without cache; stop at a stop token.

    Returns (tokens per image, per image and step the top-5 (logits, ids) the step chose from).
    """
    stops = set(adapter.stop_token_ids)
    out, tops = [], []
    with _Zero(adapter, neurons), torch.no_grad():
        for image in images:
            tokens: list[int] = []
            top: list[tuple[list[float], list[int]]] = []
            for _ in range(NEW_TOKENS):
                values, ids = full_forward_logits(adapter, image, tokens).topk(5)
                top.append((values.tolist(), ids.tolist()))
                token = int(ids[0])
                if token in stops:
                    break
                tokens.append(token)
            out.append(tokens)
            tops.append(top)
    return out, tops


def compare(ours: list[list[int]], reference: list[list[int]], tops: list, stops: set[int]
            ) -> tuple[int, list[float]]:
    """(captions equal token for token, logit gaps where a caption departs from the reference).

    A departure is accepted only as a numerical tie: the token kneuron chose at the first differing step is among
    the reference's top 5 there with a logit within ``TIE`` of the maximum (random-weight models with a 32k
    vocabulary have near-equal logits; float32 sums in another order can swap them). Anything else fails.
    """
    equal, gaps = 0, []
    for mine, ref, top in zip(ours, reference, tops, strict=True):
        if mine == ref:
            equal += 1
            continue
        step = next(j for j in range(min(len(mine), len(ref)) + 1)
                    if j == len(mine) or j == len(ref) or mine[j] != ref[j])
        values, ids = top[step]
        chosen = {mine[step]} if step < len(mine) else stops
        close = [values[0] - values[k] for k in range(len(ids)) if ids[k] in chosen]
        assert close and min(close) <= TIE, f"caption departs from the reference at step {step}: not a tie {close}"
        gaps.append(min(close))
    return equal, gaps


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def test_batched_kv_cache_suppression_vs_full_recomputation(benchmark) -> None:  # noqa: ANN001
    adapter = load_adapter()
    size = getattr(getattr(getattr(adapter, "spec", None), "architecture", None), "image_size", 32)
    images = random_images(N_IMAGES, size=size, seed=1)
    neurons = neuron_set(adapter)

    def ours() -> list[list[int]]:
        return caption_images(adapter, images, neurons, batch_size=BATCH, max_new_tokens=NEW_TOKENS).token_ids

    ours()  # warm-up (nnsight envoy, kernels)
    ours_times = []
    for _ in range(ROUNDS):
        _sync()
        start = time.perf_counter()
        ids = ours()
        _sync()
        ours_times.append(time.perf_counter() - start)
    _sync()
    start = time.perf_counter()
    reference, tops = reference_captions(adapter, images, neurons)
    _sync()
    reference_time = time.perf_counter() - start
    equal, gaps = compare(ids, reference, tops, set(adapter.stop_token_ids))
    if MODEL == "tiny":
        assert equal == len(images), "batched KV-cache captions differ from the full-recomputation reference"
    assert benchmark(ours) == ids

    ours_median = statistics.median(ours_times)
    ratio = reference_time / ours_median
    n_tokens = sum(len(t) for t in reference)
    benchmark.extra_info.update({
        "model": MODEL, "device": DEVICE, "images": N_IMAGES, "batch_size": BATCH, "max_new_tokens": NEW_TOKENS,
        "suppressed_units": sum(len(u) for u in neurons.values()), "generated_tokens": n_tokens,
        "captions_equal": equal, "captions_departing_at_a_tie": len(gaps), "largest_tie_gap": max(gaps, default=0.0),
        "kneuron_s": round(ours_median, 4), "reference_s": round(reference_time, 4),
        "ratio_reference_over_kneuron": round(ratio, 2),
    })
    print(f"\nsuppressed captioning, {MODEL} on {DEVICE}: {N_IMAGES} images, {n_tokens} tokens; kneuron batched "
          f"KV cache {ours_median:.3f} s, per-step full recomputation {reference_time:.3f} s = {ratio:.1f}x; "
          f"{equal} captions equal, {len(gaps)} departing at a logit tie (largest gap {max(gaps, default=0.0):.2g})")

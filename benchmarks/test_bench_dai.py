"""Cost of Dai et al.'s integrated gradients per image, in units of one forward+backward of that image.

Three timings of the same image and target, interleaved round by round in one test (medians over rounds):

- ``fwd_bwd``: the unit: one teacher-forced forward of the image and one backward of ``P(t)`` at the target
  position (plain PyTorch, a pre-hook makes the residual stream require grad; the cost of recording one pair);
- ``cached``: `kneuron.engine.baselines.dai.ig_attributions` (20 steps): the prefix once with the KV cache, then every
  (layer, step) row as one-token steps at the target position;
- ``reference``: the implementation before it (one forward+backward of the 20 scaled copies per layer over the
  full sequence; `tests.engine.baselines.test_baselines.per_layer_ig_reference`), for the speed-up; timed once (it is
  slow),
  after a warm-up call that also checks that both give the same attributions.

``benchmark.extra_info`` gets ``ratio_cached_over_fwd_bwd``, ``ratio_reference_over_fwd_bwd`` and ``speedup``
(reported, not asserted); the attributions of both implementations must agree (rtol 1e-3).

Models (random weights, CPU float32):
- ``deep30``: a MiniGPT-4 whose LLM has 30 LLaMA layers (d_model 256, d_ff 688, vocab 4096; tiny vision part,
  32 Q-Former queries), ~100 tokens per sequence: the depth of a 7B model at a width a CPU runs;
- ``tiny``: the tiny random MiniGPT-4 of the tests (3 layers).

    pytest benchmarks/test_bench_dai.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from kneuron.engine.baselines.dai import ig_attributions
from kneuron.engine.models.minigpt4 import MiniGPT4
from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter, ModelSpec
from kneuron.engine.models.tiny import tiny_config
from kneuron.engine.signals.record import Target, target_positions
from tests.engine.baselines.test_baselines import per_layer_ig_reference
from tests.helpers.tiny_models import random_images, tiny_minigpt4, tiny_tokenizer

STEPS = 20
SEQUENCE_TOKENS = 100
ROUNDS = int(os.environ.get("KNEURON_BENCH_ROUNDS") or 3)


def deep30() -> MiniGPT4Adapter:
    """MiniGPT-4 with a 30-layer LLaMA (d_model 256, d_ff 688, vocab 4096), random weights, frozen, CPU."""
    config = tiny_config("qformer", vocab_size=4096, image_size=32, vision_width=32, qformer_width=32,
                         num_query_tokens=32, d_model=256, d_ff=688, n_layers=30, n_heads=8)
    torch.manual_seed(0)
    model = MiniGPT4(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(architecture=config, template="vicuna0", answer_prefix="a", max_new_tokens=8)
    return MiniGPT4Adapter(model, tiny_tokenizer(), spec, name="deep30")


BUILDERS: dict[str, Callable[[], MiniGPT4Adapter]] = {"deep30": deep30, "tiny": tiny_minigpt4}


def target_for(adapter: MiniGPT4Adapter) -> Target:
    """Teacher-forced tokens filling the sequence to ~SEQUENCE_TOKENS, the concept token last."""
    prompt_length = adapter.prepare(random_images(1, size=32)).prompt_length
    length = max(2, SEQUENCE_TOKENS - prompt_length)
    vocab = len(adapter.tokenizer)
    tokens = torch.randint(4, vocab, (length,), generator=torch.Generator().manual_seed(2)).tolist()
    return Target(tuple(tokens), length - 1, tokens[-1])


def forward_backward(adapter: MiniGPT4Adapter, image, target: Target) -> None:  # noqa: ANN001
    """The unit of cost: one forward of the image and one backward of ``P(t)`` at the target position."""
    prepared = adapter.prepare([image], targets=[list(target.tokens)])
    at = int(target_positions(prepared.prompt_length, [target])[0])

    def start_graph(module, args, kwargs):  # noqa: ANN001 - frozen weights: the residual stream needs grad
        (args[0] if args else kwargs["hidden_states"]).requires_grad_(True)

    handle = adapter.decoder_layers(adapter.model)[0].register_forward_pre_hook(start_graph, with_kwargs=True)
    try:
        with torch.enable_grad():
            logits = adapter.logits(adapter.model(*prepared.args, **prepared.kwargs))[0, at].float()
            torch.softmax(logits, dim=-1)[target.token_id].backward()
    finally:
        handle.remove()


@pytest.mark.parametrize("shape", list(BUILDERS))
def test_dai_cost_vs_one_forward_backward(benchmark, shape: str) -> None:  # noqa: ANN001
    adapter = BUILDERS[shape]()
    image = random_images(1, size=32, seed=3)[0]
    target = target_for(adapter)
    cached = ig_attributions(adapter, [image], [target], steps=STEPS)  # also the warm-up
    reference = per_layer_ig_reference(adapter, [image], [target], steps=STEPS)
    torch.testing.assert_close(cached, reference, rtol=1e-3, atol=1e-6 * float(reference.abs().max()))
    times: dict[str, list[float]] = {"fwd_bwd": [], "cached": [], "reference": []}

    def timed(name: str, work: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = work()
        times[name].append(time.perf_counter() - start)
        return result

    timed("reference", lambda: per_layer_ig_reference(adapter, [image], [target], steps=STEPS))

    def setup() -> tuple[tuple, dict]:
        timed("fwd_bwd", lambda: forward_backward(adapter, image, target))
        return (), {}

    benchmark.pedantic(lambda: timed("cached", lambda: ig_attributions(adapter, [image], [target], steps=STEPS)),
                       setup=setup, rounds=ROUNDS, iterations=1)
    unit, fast, old = (statistics.median(times[k]) for k in ("fwd_bwd", "cached", "reference"))
    info = {"shape": shape, "layers": adapter.n_layers, "d_ff": adapter.d_ff, "steps": STEPS,
            "tokens": adapter.prepare([image]).prompt_length + len(target.tokens), "threads": torch.get_num_threads(),
            "fwd_bwd_s": unit, "cached_s": fast, "reference_s": old, "ratio_cached_over_fwd_bwd": fast / unit,
            "ratio_reference_over_fwd_bwd": old / unit, "speedup": old / fast}
    benchmark.extra_info.update(info)
    print(f"\n[dai {shape}: {info['layers']} layers, {info['tokens']} tokens, {STEPS} steps, "
          f"{info['threads']} threads] one fwd+bwd {unit * 1e3:.1f} ms; IG cached {fast / unit:.1f}x, "
          f"per-layer reference {old / unit:.1f}x; speed-up {old / fast:.1f}x")

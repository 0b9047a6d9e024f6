"""Recording cost per pair: `record_pairs` (nnsight trace, forward + backward, reduced on device) against the
floor, a bare forward of both images plus one backward with plain PyTorch hooks keeping the same slices and
doing the same reductions. Both run in the same test, interleaved round by round; the ratio
record / floor (median over rounds) goes to ``benchmark.extra_info`` (target <= 1.25; reported, not asserted).
The recorded values must equal the floor's.

Models:
- ``llama7b_slice``: a MiniGPT-4 whose LLM is a 2-layer LLaMA of 7B width (hidden 4096, d_ff 11008, vocab
  32000, 32 heads) with a tiny vision part and 32 Q-Former queries; ~100 tokens per row. Random weights.
- ``tiny``: the tiny random MiniGPT-4 of the tests.

Environment: ``KNEURON_BENCH_DEVICE`` (default: cuda when available, else cpu), ``KNEURON_BENCH_DTYPE``
(default float32 on CPU, bfloat16 on CUDA), ``KNEURON_BENCH_PAIRS`` (pairs per batch; default 2 on CPU, 8 on
CUDA), ``KNEURON_BENCH_ROUNDS`` (default 2 for the slice on CPU, else 10).

    pytest benchmarks/test_bench_record.py --benchmark-enable
    KNEURON_BENCH_DEVICE=cuda pytest benchmarks/test_bench_record.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import pytest
import torch

from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.models.minigpt4 import MiniGPT4
from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter, ModelSpec
from kneuron.engine.models.tiny import tiny_config
from kneuron.engine.signals.record import (
    PairRecord,
    RecordConfig,
    Target,
    record_pairs,
    reduce_pairs,
    target_positions,
)
from tests.helpers.tiny_models import random_images, tiny_minigpt4, tiny_tokenizer

DEVICE = os.environ.get("KNEURON_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.startswith("cuda")
DTYPE = getattr(torch, os.environ.get("KNEURON_BENCH_DTYPE") or ("bfloat16" if ON_CUDA else "float32"))
PAIRS = int(os.environ.get("KNEURON_BENCH_PAIRS") or (8 if ON_CUDA else 2))
SEQUENCE_TOKENS = 100
TOP_K = 16


def rounds_for(shape: str) -> int:
    default = 2 if shape == "llama7b_slice" and not ON_CUDA else 10
    return int(os.environ.get("KNEURON_BENCH_ROUNDS") or default)


def llama7b_slice() -> MiniGPT4Adapter:
    """MiniGPT-4 with a 2-layer LLaMA of 7B width (random weights), on DEVICE in DTYPE, frozen."""
    tokenizer = tiny_tokenizer()
    config = tiny_config("qformer", vocab_size=32000, image_size=32, vision_width=32, qformer_width=32,
                         num_query_tokens=32, d_model=4096, d_ff=11008, n_layers=2, n_heads=32)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = MiniGPT4(config)
    model.to(dtype=DTYPE).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(architecture=config, template="vicuna0", answer_prefix="a", max_new_tokens=8)
    return MiniGPT4Adapter(model, tokenizer, spec, name="llama7b-width-2-layers")


def tiny() -> MiniGPT4Adapter:
    adapter = tiny_minigpt4()
    adapter.model.to(device=DEVICE, dtype=DTYPE)
    return adapter


BUILDERS: dict[str, Callable[[], MiniGPT4Adapter]] = {"llama7b_slice": llama7b_slice, "tiny": tiny}


@dataclass
class Workload:
    adapter: VLMAdapter
    originals: list
    inpainted: list
    targets: list[Target]
    config: RecordConfig


def make_workload(adapter: VLMAdapter) -> Workload:
    """PAIRS random image pairs; teacher-forced targets filling rows up to ~SEQUENCE_TOKENS tokens, the concept
    token near the end (so the backward runs through nearly the whole sequence)."""
    images = random_images(2 * PAIRS, size=32, seed=1)
    prompt_length = adapter.prepare(images[:1]).prompt_length
    length = max(2, SEQUENCE_TOKENS - prompt_length)
    generator = torch.Generator().manual_seed(2)
    vocab = len(adapter.tokenizer)
    targets = []
    for row in range(PAIRS):
        tokens = torch.randint(4, vocab, (length,), generator=generator).tolist()
        index = length - 1 - row % 2
        targets.append(Target(tuple(tokens), index, tokens[index]))
    return Workload(adapter, images[:PAIRS], images[PAIRS:], targets, RecordConfig(top_k=TOP_K))


def floor_record(w: Workload) -> PairRecord:
    """The floor: plain forward pre-hooks keep ``O^l[:, P]`` and a tensor hook keeps ``dO^l[:B, P]``; one forward
    of the 2B rows, one backward of ``y^c``; the same reductions as `record_pairs`."""
    adapter, b = w.adapter, len(w.targets)
    tokens = [list(t.tokens) for t in w.targets]
    prepared = adapter.prepare(list(w.originals) + list(w.inpainted), targets=tokens + tokens)
    device = adapter.device
    positions = prepared.positions(w.config.positions).to(device)
    at = target_positions(prepared.prompt_length, w.targets).to(device)
    rows = torch.arange(b, device=device)
    token_ids = torch.tensor([t.token_id for t in w.targets], device=device)
    n_layers = adapter.n_layers
    acts: list[torch.Tensor | None] = [None] * n_layers
    grads: list[torch.Tensor | None] = [None] * n_layers

    def keep(layer: int):
        def hook(module, args):  # noqa: ANN001
            x = args[0]
            acts[layer] = x[:, positions].float()

            def keep_grad(grad: torch.Tensor) -> None:
                grads[layer] = grad[:b, positions].float()

            x.register_hook(keep_grad)
        return hook

    def start_graph(module, args, kwargs):  # noqa: ANN001 - frozen weights: the residual stream needs grad
        (args[0] if args else kwargs["hidden_states"]).requires_grad_(True)

    layers = adapter.decoder_layers(adapter.model)
    handles = [layers[0].register_forward_pre_hook(start_graph, with_kwargs=True)]
    handles += [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(keep(layer))
                for layer in range(n_layers)]
    try:
        with torch.enable_grad():
            out = adapter.model(*prepared.args, **prepared.kwargs)
            y = adapter.logits(out)[rows, at, token_ids]
            y.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return reduce_pairs(acts, grads, b, w.config.top_k, positions, y.detach().float(), at)


def record(w: Workload) -> PairRecord:
    return record_pairs(w.adapter, w.originals, w.inpainted, w.targets, w.config)


def assert_same(ours: PairRecord, floor: PairRecord) -> None:
    for f in fields(PairRecord):
        a, b = getattr(ours, f.name), getattr(floor, f.name)
        assert torch.equal(a, b), f"{f.name}: max difference {(a.float() - b.float()).abs().max().item()}"


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module", params=list(BUILDERS))
def workload(request) -> Workload:  # noqa: ANN001
    adapter = BUILDERS[request.param]()
    workload = make_workload(adapter)
    workload.shape = request.param  # type: ignore[attr-defined]
    yield workload
    del adapter, workload
    if ON_CUDA:
        torch.cuda.empty_cache()


def test_record_cost_vs_floor(benchmark, workload: Workload) -> None:  # noqa: ANN001
    shape = workload.shape  # type: ignore[attr-defined]
    assert_same(record(workload), floor_record(workload))  # also the warm-up of both paths
    floor_times: list[float] = []
    record_times: list[float] = []

    def timed_floor():
        sync()
        start = time.perf_counter()
        floor_record(workload)
        sync()
        floor_times.append(time.perf_counter() - start)
        return (), {}

    def timed_record() -> PairRecord:
        sync()
        start = time.perf_counter()
        result = record(workload)
        sync()
        record_times.append(time.perf_counter() - start)
        return result

    result = benchmark.pedantic(timed_record, setup=timed_floor, rounds=rounds_for(shape), iterations=1)
    assert_same(result, floor_record(workload))
    floor_s, record_s = statistics.median(floor_times), statistics.median(record_times)
    info = {
        "shape": shape, "device": DEVICE, "dtype": str(DTYPE).removeprefix("torch."), "pairs": PAIRS,
        "tokens_per_row": workload.adapter.prepare(workload.originals[:1]).prompt_length
        + len(workload.targets[0].tokens),
        "rounds": len(record_times), "floor_s_per_pair": floor_s / PAIRS, "record_s_per_pair": record_s / PAIRS,
        "ratio_record_over_floor": record_s / floor_s, "target_ratio": 1.25,
    }
    benchmark.extra_info.update(info)
    print(f"\n[{shape} {info['device']} {info['dtype']}] record {record_s / PAIRS * 1e3:.1f} ms/pair, floor "
          f"{floor_s / PAIRS * 1e3:.1f} ms/pair, ratio {info['ratio_record_over_floor']:.3f} (target <= 1.25)")

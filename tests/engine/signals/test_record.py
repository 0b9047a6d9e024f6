"""`record_pairs` (nnsight forward + backward, reduced on device) against a plain PyTorch reference, for both
MiniGPT-4 variants and every Hugging Face adapter, with 3 pairs of different target lengths."""
from __future__ import annotations

import pytest
import torch

from kneuron.engine.signals.record import RecordConfig, Target, record_pairs
from tests.helpers.hf_tiny import ALL_KINDS, MINIGPT4_KINDS, tiny_adapter, varied_images

TOP_K = 5


def make_targets(adapter) -> list[Target]:  # noqa: ANN001
    """Three targets of lengths 3, 1, 4: concept mid-caption, after the tokens (prefix style), first token."""
    first = adapter.encode("a red circle")
    second = adapter.encode("blue")
    third = adapter.encode("the green square on")
    return [Target(tuple(first), 1, first[1]),
            Target(tuple(second), 1, adapter.encode("star")[0], source="prefix"),
            Target(tuple(third), 0, third[0])]


def reference_positions(adapter, prepared, which: str) -> torch.Tensor:  # noqa: ANN001
    """Image / prompt positions worked out from the raw inputs (not from the adapter's bookkeeping)."""
    t_max = max(len(t) for t in prepared.target_ids.tolist())
    if "input_ids" in prepared.kwargs:  # Hugging Face: placeholders sit in input_ids
        ids = prepared.kwargs["input_ids"][0]
        image = (ids == adapter.model.config.image_token_id).nonzero().flatten()
        prompt_length = ids.shape[0] - t_max
    else:  # MiniGPT-4: [before, image tokens, after, targets]
        n0, n1 = prepared.args[1].shape[-1], prepared.args[2].shape[-1]
        image = torch.arange(n0, n0 + adapter.n_image_tokens)
        prompt_length = n0 + adapter.n_image_tokens + n1
    return image if which == "image" else torch.arange(prompt_length)


def reference_record(adapter, originals, inpainted, targets, which: str):  # noqa: ANN001
    """Plain hooks: every down_proj input kept with retain_grad; y = logit of each target token; backward."""
    tokens = [list(t.tokens) for t in targets]
    prepared = adapter.prepare(list(originals) + list(inpainted), targets=tokens + tokens)
    model = adapter.model
    acts: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(module, args):  # noqa: ANN001
            args[0].retain_grad()
            acts[layer] = args[0]
        return hook

    def grad_from_here(module, args, output):  # noqa: ANN001 - weights are frozen: start the graph at embeddings
        return output.detach().requires_grad_(True)

    handles = [adapter.neuron_module(model, layer).register_forward_pre_hook(keep(layer))
               for layer in range(adapter.n_layers)]
    handles.append(adapter.language_model.model.embed_tokens.register_forward_hook(grad_from_here))
    try:
        with torch.enable_grad():
            out = model(*prepared.args, **prepared.kwargs)
            b = len(targets)
            prompt_length = int(reference_positions(adapter, prepared, "prompt").numel())
            y = torch.stack([out.logits[row, prompt_length + t.index - 1, t.token_id]
                             for row, t in enumerate(targets)])
            y.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    positions = reference_positions(adapter, prepared, which)
    return acts, positions, y.detach(), b, prompt_length


def reference_reductions(acts, positions, b):  # noqa: ANN001
    """Loop-by-loop reductions: per row and layer over positions P; top-k by sorting."""
    n_layers = len(acts)
    out = {name: [] for name in ("o_mean", "i_mean", "d_max", "g_max", "g_mean", "units", "top_o", "top_i",
                                 "top_g")}
    for row in range(b):
        rows = {name: [] for name in out}
        for layer in range(n_layers):
            full = acts[layer]
            o = full[row, positions].detach()             # [P, d_ff]
            i = full[b + row, positions].detach()
            g = o * full.grad[row, positions]
            rows["o_mean"].append(o.sum(0) / len(positions))
            rows["i_mean"].append(i.sum(0) / len(positions))
            rows["d_max"].append(torch.max(o - i, dim=0).values)
            rows["g_max"].append(torch.max(g, dim=0).values)
            rows["g_mean"].append(g.sum(0) / len(positions))
            order = torch.argsort(o, dim=-1, descending=True)[:, :TOP_K]   # [P, k]
            rows["units"].append(order)
            rows["top_o"].append(torch.take_along_dim(o, order, -1))
            rows["top_i"].append(torch.take_along_dim(i, order, -1))
            rows["top_g"].append(torch.take_along_dim(g, order, -1))
        for name in out:
            out[name].append(torch.stack(rows[name]))
    return {name: torch.stack(parts) for name, parts in out.items()}  # [B, L, ...]


@pytest.fixture(scope="module", params=ALL_KINDS)
def adapter(request):  # noqa: ANN001
    return tiny_adapter(request.param)


@pytest.mark.parametrize("which", ["image", "prompt"])
def test_record_pairs_matches_plain_torch(adapter, which):  # noqa: ANN001
    images = varied_images(6, seed=3)
    originals, inpainted = images[:3], images[3:]
    targets = make_targets(adapter)
    assert len({len(t.tokens) for t in targets}) == 3
    record = record_pairs(adapter, originals, inpainted, targets, RecordConfig(positions=which, top_k=TOP_K))
    acts, positions, y, b, prompt_length = reference_record(adapter, originals, inpainted, targets, which)
    ref = reference_reductions(acts, positions, b)

    n_pos = len(positions)
    assert torch.equal(record.positions, positions)
    expected_n = adapter.n_image_tokens if which == "image" else prompt_length
    assert n_pos == expected_n
    assert record.o_mean.shape == (3, adapter.n_layers, adapter.d_ff)
    assert record.top_units.shape == (3, adapter.n_layers, n_pos, TOP_K)
    assert torch.equal(record.target_position, torch.tensor([prompt_length + t.index - 1 for t in targets]))
    torch.testing.assert_close(record.target_logit, y, rtol=1e-5, atol=1e-5)
    for name, ours in (("o_mean", record.o_mean), ("i_mean", record.i_mean), ("d_max", record.d_max),
                       ("g_max", record.g_max), ("g_mean", record.g_mean), ("top_o", record.top_o),
                       ("top_i", record.top_i), ("top_g", record.top_g)):
        torch.testing.assert_close(ours, ref[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(record.top_units, ref["units"])
    # the signals are not trivially zero: gradients flow and the pairs differ
    assert record.g_max.abs().max() > 0 and (record.o_mean - record.i_mean).abs().max() > 0


def test_reference_sees_the_concept_token(adapter):  # noqa: ANN001
    """Guard for the reference itself: a different target token changes y and the attributions."""
    images = varied_images(6, seed=3)
    targets = make_targets(adapter)
    other = [Target(t.tokens, t.index, adapter.encode("square")[0] if t.token_id != adapter.encode("square")[0]
                    else adapter.encode("circle")[0]) for t in targets]
    first = record_pairs(adapter, images[:3], images[3:], targets, RecordConfig(top_k=TOP_K))
    second = record_pairs(adapter, images[:3], images[3:], other, RecordConfig(top_k=TOP_K))
    assert not torch.allclose(first.target_logit, second.target_logit)
    assert not torch.allclose(first.g_mean, second.g_mean)
    torch.testing.assert_close(first.o_mean, second.o_mean)  # activations do not depend on the target


def test_minigpt4_kinds_are_both_variants():
    assert {tiny_adapter(k).spec.architecture.variant for k in MINIGPT4_KINDS} == {"qformer", "patch"}


def test_target_positions_read_the_position_that_predicts_the_concept(adapter):  # noqa: ANN001
    images = varied_images(6, seed=3)
    originals, inpainted = images[:3], images[3:]
    targets = make_targets(adapter)
    record = record_pairs(adapter, originals, inpainted, targets, RecordConfig(positions="target", top_k=TOP_K))
    acts, _, _, b, prompt_length = reference_record(adapter, originals, inpainted, targets, "image")
    at = [prompt_length + t.index - 1 for t in targets]
    assert record.positions.tolist() == [[p] for p in at]
    for layer in range(adapter.n_layers):
        full = acts[layer]
        for row, pos in enumerate(at):
            o, i = full[row, pos].detach(), full[b + row, pos].detach()
            g = o * full.grad[row, pos]
            torch.testing.assert_close(record.o_mean[row, layer], o, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(record.i_mean[row, layer], i, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(record.d_max[row, layer], o - i, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(record.g_max[row, layer], g, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(record.g_mean[row, layer], g, rtol=1e-4, atol=1e-6)
    assert record.top_units.shape == (3, adapter.n_layers, 1, TOP_K)

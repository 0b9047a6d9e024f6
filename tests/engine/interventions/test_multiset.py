"""`caption_under_sets`: several neuron sets in one generate equal one set at a time token for token (bundled
tiny models, and every tiny adapter kind: MiniGPT-4, LLaVA and the other HF families); mean and resample
ablation equal plain forward-pre-hook references built from teacher-forced activations; the reference means
per position kind are exact."""
from __future__ import annotations

import pytest
import torch

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions.ablation import Ablation, donors, record_reference
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models import load_model
from tests.helpers.hf_tiny import ALL_KINDS, tiny_adapter, varied_images

KINDS = ("minigpt4-qformer", "minigpt4-patch", "llava")


def some_sets(adapter, n: int = 4, size: int = 12, seed: int = 0):  # noqa: ANN001
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        flat = torch.randperm(adapter.n_layers * adapter.d_ff, generator=gen)[:size].tolist()
        s: dict[int, list[int]] = {}
        for i in sorted(flat):
            s.setdefault(i // adapter.d_ff, []).append(i % adapter.d_ff)
        out.append(s)
    return out


@pytest.fixture(scope="module", params=KINDS)
def adapter(request):  # noqa: ANN001
    return tiny_adapter(request.param)


@pytest.fixture(scope="module")
def images():
    return varied_images(5, seed=3)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_many_sets_equal_one_set_at_a_time(kind: str, images) -> None:  # noqa: ANN001
    adapter = tiny_adapter(kind)
    sets = [None, *some_sets(adapter), {}]
    together = caption_under_sets(adapter, images, sets, rows_per_generate=7)
    for s, got in zip(sets, together, strict=True):
        alone = caption_images(adapter, images, s, batch_size=2)
        assert got.token_ids == alone.token_ids
        assert got.texts == alone.texts
    # the sets do change captions (else the test could not fail)
    assert any(t.token_ids != together[0].token_ids for t in together[1:-1])


@pytest.mark.parametrize("name", ["tiny-shapes-qformer", "tiny-shapes-patch"])
def test_bundled_models_many_sets(name: str, tmp_path) -> None:  # noqa: ANN001
    from dataclasses import replace

    from kneuron.engine.data.world import generate_world
    from kneuron.engine.training.train import TRAIN_WORLD

    world = CocoDataset(generate_world(tmp_path / "w", replace(TRAIN_WORLD, n_train=0, n_val=0, n_test=6)), "test")
    pictures = [world.load_image(i) for i in world.image_ids()]
    model = load_model(name)
    sets = some_sets(model, n=3, size=24, seed=1)
    together = caption_under_sets(model, pictures, sets, rows_per_generate=16)
    for s, got in zip(sets, together, strict=True):
        assert got.token_ids == caption_images(model, pictures, s, batch_size=4).token_ids


def teacher_forced(adapter, images, captions):  # noqa: ANN001
    """Per image: ``[L, P + n, d_ff]`` activations of prompt + its caption tokens (one forward, plain hooks)."""
    out = []
    for image, ids in zip(images, captions, strict=True):
        prepared = adapter.prepare([image], targets=[ids] if ids else None)
        store: dict[int, torch.Tensor] = {}

        def grab(layer: int, store: dict[int, torch.Tensor] = store):  # noqa: ANN202
            def hook(module, args):  # noqa: ANN001
                store[layer] = args[0][0].detach().float()
            return hook
        handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(grab(layer))
                   for layer in range(adapter.n_layers)]
        with torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
        for h in handles:
            h.remove()
        out.append((torch.stack([store[layer] for layer in range(adapter.n_layers)]), prepared))
    return out


def test_reference_means_per_position_kind(adapter, images) -> None:  # noqa: ANN001
    ref = record_reference(adapter, images, batch_size=2)
    plain = caption_images(adapter, images).token_ids
    acts = teacher_forced(adapter, images, plain)
    P = acts[0][1].prompt_length
    image_pos = acts[0][1].image_positions
    other = [p for p in range(P) if p not in set(image_pos.tolist())]
    m_image = torch.stack([a[:, image_pos] for a, _ in acts]).mean(dim=(0, 2))
    m_prompt = torch.stack([a[:, other] for a, _ in acts]).mean(dim=(0, 2))
    fed = [min(len(ids), adapter.max_new_tokens - 1) for ids in plain]  # the last new token is never fed back
    gen = [a[:, P:P + n] for (a, _), n in zip(acts, fed, strict=True) if n]
    m_gen = torch.cat(gen, dim=1).mean(dim=1)
    means = ref.means()
    torch.testing.assert_close(means[:, 0], m_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(means[:, 1], m_prompt, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(means[:, 2], m_gen, atol=1e-4, rtol=1e-4)
    assert ref.n_generated == fed


def replacing_hook(values_at):  # noqa: ANN001
    """Plain pre-hook: positions counted per call; ``values_at(positions) -> [B?, T, d_ff]`` at the masked units."""
    state = {"seen": 0}

    def make(units: list[int], layer: int):  # noqa: ANN202
        index = torch.tensor(units, dtype=torch.long)
        seen = {"n": 0}

        def hook(module, args):  # noqa: ANN001
            x = args[0].clone()
            start = seen["n"] if x.shape[1] == 1 else 0
            seen["n"] = start + x.shape[1]
            values = values_at(layer, torch.arange(start, start + x.shape[1]), x.shape[0])
            x[..., index] = values[..., index].to(x.dtype)
            return (x,) + tuple(args[1:])
        return hook
    del state
    return make


def hooked_captions(adapter, images, neurons, make):  # noqa: ANN001
    handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(make(units, layer))
               for layer, units in neurons.items()]
    try:
        prepared = adapter.prepare(images)
        args, kwargs = adapter.generate_call(prepared)
        with torch.no_grad():
            out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return [adapter.caption_ids(row) for row in adapter.new_tokens(prepared, out).tolist()]


def test_mean_ablation_equals_plain_hooks(adapter, images) -> None:  # noqa: ANN001
    ref_images, eval_images = images[:3], images[3:]
    ref = record_reference(adapter, ref_images)
    means = ref.means()
    P = ref.prompt_length
    kinds = ref.kind_of_positions()
    sets = some_sets(adapter, n=3, size=30, seed=2)

    def values_at(layer, pos, batch):  # noqa: ANN001
        rows = [means[layer, int(kinds[p]) if p < P else 2] for p in pos.tolist()]
        return torch.stack(rows)[None].expand(batch, -1, -1)

    got = caption_under_sets(adapter, eval_images, sets, Ablation("mean", ref))
    zero = caption_under_sets(adapter, eval_images, sets, Ablation("zero"))
    for s, g in zip(sets, got, strict=True):
        assert g.token_ids == hooked_captions(adapter, eval_images, s, replacing_hook(values_at))
    assert [g.token_ids for g in got] != [z.token_ids for z in zero]


def test_resample_ablation_equals_plain_hooks(adapter, images) -> None:  # noqa: ANN001
    ref_images, eval_images = images[:3], images[3:]
    ref = record_reference(adapter, ref_images)
    plain = caption_images(adapter, ref_images).token_ids
    acts = teacher_forced(adapter, ref_images, plain)
    P = ref.prompt_length
    donor = donors(len(eval_images), len(ref_images), seed=5)
    fed = [min(len(ids), adapter.max_new_tokens - 1) for ids in plain]
    gen_means = [a[:, P:P + n].mean(dim=1) if n else a[:, P - 1] for (a, _), n in zip(acts, fed, strict=True)]
    sets = some_sets(adapter, n=2, size=30, seed=4)

    def values_at(layer, pos, batch):  # noqa: ANN001
        out = []
        for d in donor:
            a = acts[d][0][layer]
            out.append(torch.stack([a[p] if p < P else gen_means[d][layer] for p in pos.tolist()]))
        return torch.stack(out)

    got = caption_under_sets(adapter, eval_images, sets, Ablation("resample", ref, seed=5), rows_per_generate=3)
    for s, g in zip(sets, got, strict=True):
        assert g.token_ids == hooked_captions(adapter, eval_images, s, replacing_hook(values_at))


def test_donors_are_seeded_per_image() -> None:
    assert donors(6, 4, seed=1) == donors(6, 4, seed=1)
    assert donors(6, 4, seed=1)[:3] == donors(3, 4, seed=1)
    assert donors(40, 4, seed=1) != donors(40, 4, seed=2)
    assert set(donors(40, 4, seed=1)) == {0, 1, 2, 3}


def test_errors() -> None:
    with pytest.raises(KneuronError, match="unknown ablation 'half'; known: zero, mean, resample"):
        Ablation("half")
    with pytest.raises(KneuronError, match="mean ablation needs a reference set of images"):
        Ablation("mean")

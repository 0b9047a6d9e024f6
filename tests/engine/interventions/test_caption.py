"""`caption_images` with a neuron set equals a plain forward-pre-hook reference token for token (both
MiniGPT-4 variants and every Hugging Face adapter, batched); an empty set or None gives the plain captions."""
from __future__ import annotations

import pytest
import torch

from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.signals.neurons import as_neuron_set
from tests.helpers.hf_tiny import ALL_KINDS, tiny_adapter, varied_images

BATCH = 2
N_IMAGES = 4


def zeroing_hook(units: list[int]):
    index = torch.tensor(units, dtype=torch.long)

    def hook(module, args):  # noqa: ANN001
        x = args[0].clone()
        x[..., index.to(x.device)] = 0
        return (x,) + tuple(args[1:])
    return hook


class Suppressed:
    """Plain PyTorch suppression: forward pre-hooks on ``down_proj`` that zero the units of its input."""

    def __init__(self, adapter, neurons: dict[int, list[int]]) -> None:  # noqa: ANN001
        self.adapter, self.neurons, self.handles = adapter, neurons, []

    def __enter__(self):
        for layer, units in self.neurons.items():
            module = self.adapter.neuron_module(self.adapter.model, layer)
            self.handles.append(module.register_forward_pre_hook(zeroing_hook(units)))

    def __exit__(self, *exc):  # noqa: ANN002
        for handle in self.handles:
            handle.remove()


def reference_captions(adapter, images, neurons: dict[int, list[int]]):  # noqa: ANN001
    """Token ids and texts from the model's own generate under plain hooks, in the same batches."""
    ids, texts = [], []
    for start in range(0, len(images), BATCH):
        prepared = adapter.prepare(images[start:start + BATCH])
        args, kwargs = adapter.generate_call(prepared)
        with Suppressed(adapter, neurons), torch.no_grad():
            out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
        for row in adapter.new_tokens(prepared, out).tolist():
            ids.append(adapter.caption_ids(row))
            texts.append(adapter.caption_text(row))
    return ids, texts


def first_step_logits(adapter, images, neurons: dict[int, list[int]]) -> torch.Tensor:  # noqa: ANN001
    """Logits of the first generated token ``[B, V]`` under plain hooks."""
    prepared = adapter.prepare(images)
    with Suppressed(adapter, neurons), torch.no_grad():
        out = adapter.model(*prepared.args, **prepared.kwargs)
    return adapter.logits(out)[:, -1]


def random_neurons(adapter, fraction: float = 0.4, seed: int = 0) -> dict[int, list[int]]:  # noqa: ANN001
    gen = torch.Generator().manual_seed(seed)
    pairs = [(layer, int(u)) for layer in range(adapter.n_layers)
             for u in torch.randperm(adapter.d_ff, generator=gen)[: int(adapter.d_ff * fraction)]]
    return as_neuron_set(pairs)


@pytest.fixture(scope="module", params=ALL_KINDS)
def adapter(request):  # noqa: ANN001
    return tiny_adapter(request.param)


@pytest.fixture(scope="module")
def images():
    return varied_images(N_IMAGES, seed=1)


def test_plain_captions_are_not_degenerate(adapter, images):  # noqa: ANN001
    ids, _ = reference_captions(adapter, images, {})
    assert len({tuple(row) for row in ids}) > 1, "every image got the same caption"
    assert max(len(set(row)) for row in ids) >= 3, "captions are too short or repetitive"


@pytest.mark.parametrize("neurons", [None, {}, {0: [], 1: []}])
def test_empty_neuron_set_reproduces_plain_captions(adapter, images, neurons):  # noqa: ANN001
    ids, texts = reference_captions(adapter, images, {})
    captions = caption_images(adapter, images, neurons, batch_size=BATCH)
    assert captions.token_ids == ids
    assert captions.texts == texts


@pytest.mark.parametrize("seed", [0, 1])
def test_suppressed_captions_match_hook_reference(adapter, images, seed):  # noqa: ANN001
    neurons = random_neurons(adapter, seed=seed)
    ids, texts = reference_captions(adapter, images, neurons)
    captions = caption_images(adapter, images, neurons, batch_size=BATCH)
    assert captions.token_ids == ids
    assert captions.texts == texts
    plain_ids, _ = reference_captions(adapter, images, {})
    assert ids != plain_ids, "suppressing 40% of all units changed no caption"
    plain = first_step_logits(adapter, images, {})
    suppressed = first_step_logits(adapter, images, neurons)
    assert not torch.allclose(plain, suppressed, atol=1e-3)


def test_single_unit_suppression_matches_reference(adapter, images):  # noqa: ANN001
    """A one-unit set in the last layer (the smallest intervention): still token-for-token equal."""
    last = adapter.n_layers - 1
    neurons = {last: [adapter.d_ff - 1]}
    ids, _ = reference_captions(adapter, images, neurons)
    assert caption_images(adapter, images, neurons, batch_size=BATCH).token_ids == ids
    assert not torch.equal(first_step_logits(adapter, images, {}), first_step_logits(adapter, images, neurons))


@pytest.mark.parametrize("bad", [{-1: [0]}, {0: [10**6]}])
def test_neurons_outside_the_model_are_refused(adapter, images, bad):  # noqa: ANN001
    from kneuron.engine.errors import KneuronError

    with pytest.raises(KneuronError, match=r"is outside the model \(\d+ layers x \d+ units\)"):
        caption_images(adapter, images, bad, batch_size=BATCH)

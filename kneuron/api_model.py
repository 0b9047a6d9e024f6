"""Models from Python: load one by name, folder or Hub id, and caption images with a neuron set suppressed.

    model = kneuron.load_model("tiny-shapes-qformer")                      # or "llava-hf/llava-1.5-7b-hf@main"
    neurons = wh.neuron_set(concept="circle")                             # [(layer, unit), ...]
    kneuron.caption(model, ["a.png"])                                     # ["a red circle ..."]
    kneuron.caption(model, ["a.png"], suppress=neurons)                   # the same with those units zeroed
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from kneuron.engine.models.base import VLMAdapter



def resolve_model(name: str) -> Path:
    """The folder a model reference names: a bundled name, a folder, or a Hugging Face Hub id
    ``org/name[@revision]`` (its snapshot in the Hub cache; fetched unless ``HF_HUB_OFFLINE`` is set)."""
    from kneuron.engine.models import resolve_model_path

    return resolve_model_path(name)


def load_model(name: str = "tiny-shapes-qformer", *, device: str = "auto", dtype: str | None = None) -> VLMAdapter:
    """Load a supported VLM as a frozen `VLMAdapter` (``.model``, ``.tokenizer``, ``.n_layers``, ``.d_ff``).

    name: a bundled model, a model folder, or a Hub id ``org/name[@revision]``. device: ``auto`` (CUDA when
    available), ``cpu``, ``cuda:N``, ``mps``. dtype: ``float32`` | ``float16`` | ``bfloat16`` | None (as stored).
    """
    import logging

    from kneuron.engine.models import load_model as load

    return load(name, device=device, dtype=dtype, log=logging.getLogger("kneuron.engine.models").info)


def open_image(item: Any) -> Image.Image:
    """An RGB PIL image from a PIL image or a file path; `KneuronError` (one line) when it is missing or unreadable."""
    from PIL import Image

    from kneuron.engine.data.coco import to_rgb
    from kneuron.engine.errors import KneuronError

    if isinstance(item, Image.Image):
        return to_rgb(item)
    path = os.fspath(item)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise KneuronError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise KneuronError(f"corrupt or unreadable image {path}: {' '.join(str(exc).split())}") from None


def caption(model: VLMAdapter, images: Sequence[Any],
            suppress: Iterable[tuple[int, int]] | Mapping[int, Sequence[int]] | None = None,
            batch_size: int = 16) -> list[str]:
    """Greedy captions of ``images`` (PIL images or paths), one per image.

    suppress: FFN units ``[(layer, unit), ...]`` (e.g. `Warehouse.neuron_set`) or ``{layer: [unit, ...]}`` set to
    zero at every position while generating; None: the unmodified model. `KneuronError` for a unit outside the
    model, before any captioning.
    """
    from kneuron.engine.interventions.caption import caption_images
    from kneuron.engine.signals.neurons import as_neuron_set

    pictures = [open_image(item) for item in images]
    neurons = None
    if suppress is not None:
        pairs = ([(layer, unit) for layer, units in suppress.items() for unit in units]
                 if isinstance(suppress, Mapping) else list(suppress))
        neurons = as_neuron_set(pairs)
    return caption_images(model, pictures, neurons, batch_size=batch_size).texts

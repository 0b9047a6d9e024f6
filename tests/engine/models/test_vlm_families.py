"""What every pinned-resolution family (Qwen2-VL / 2.5-VL, LLaVA-NeXT / OneVision, Idefics3 / SmolVLM, Gemma 3)
shares: structure, prompt and image positions, teacher forcing, pixel tensors, the token -> region map checked
against the model's own Jacobian, heatmaps on the region grid, and `load_model` round trips.

(`tests/engine/signals/test_record.py` and `tests/engine/interventions/test_caption.py` run the recorder and suppression
on these kinds too.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model
from kneuron.engine.models.ffn_site import walk
from kneuron.engine.signals.heatmap import heatmap, region_map, token_activations, token_to_patch_map
from tests.helpers.hf_tiny import varied_images
from tests.helpers.hf_tiny_vlm import D_FF, N_LAYERS, SIDE, VLM_KINDS, tiny_image_processor, tiny_vlm_adapter

NEURONS = {0: [1, 7], 2: [5]}
#: inputs of the model that follow the token sequence (not image inputs)
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@pytest.fixture(scope="module", params=VLM_KINDS)
def adapter(request):  # noqa: ANN001
    return tiny_vlm_adapter(request.param)


def test_structure(adapter) -> None:  # noqa: ANN001
    assert (adapter.n_layers, adapter.d_ff) == (N_LAYERS, D_FF)
    assert adapter.ffn_site.mlp_path == ("mlp", "down_proj")
    layers = walk(adapter.model, adapter.ffn_site.layers_path)
    assert adapter.neuron_module(adapter.model, 2) is layers[2].mlp.down_proj
    assert adapter.decoder_layers(adapter.model) is layers
    assert adapter.image_side == SIDE and adapter.describe()["image_side"] == SIDE
    assert adapter.stop_token_ids[0] == adapter.tokenizer.eos_token_id and len(adapter.stop_token_ids) == 2
    with pytest.raises(KneuronError, match=r"has no Q-Former: its image tokens map to image regions through "
                                           r"image_regions\(\)$"):
        adapter.image_connector()


def test_prompt_positions_and_sequence_inputs(adapter) -> None:  # noqa: ANN001
    prepared = adapter.prepare(varied_images(2))
    ids = prepared.kwargs["input_ids"]
    assert ids[0].tolist() == ids[1].tolist() == adapter.prompt_ids()
    image = (ids[0] == adapter.model.config.image_token_id).nonzero().flatten()
    assert torch.equal(prepared.image_positions, image) and len(image) == adapter.n_image_tokens
    assert prepared.prompt_length == ids.shape[1] and prepared.target_ids is None
    if "mm_token_type_ids" in prepared.kwargs or "token_type_ids" in prepared.kwargs:
        types = prepared.kwargs.get("mm_token_type_ids", prepared.kwargs.get("token_type_ids"))
        assert torch.equal(types, (ids == adapter.model.config.image_token_id).long())
    with pytest.raises(ValueError, match="no <image>"):
        type(adapter)(adapter.model, adapter.tokenizer, image_processor=adapter.image_processor,
                      template="{instruction}").prompt_ids()


def test_targets_are_appended_and_cannot_change_the_prompt(adapter) -> None:  # noqa: ANN001
    targets = [adapter.encode("a red circle"), adapter.encode("blue"), []]
    prepared = adapter.prepare(varied_images(3), targets=targets)
    n = prepared.prompt_length
    pad = adapter.pad_id
    assert prepared.kwargs["input_ids"][:, n:].tolist() == [targets[0], targets[1] + [pad, pad], [pad] * 3]
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in prepared.kwargs:
            assert not prepared.kwargs[key][:, n:].any()  # appended text is text
    with torch.no_grad():
        logits = adapter.logits(adapter.model(**prepared.kwargs))
        alone = adapter.logits(adapter.model(**adapter.prepare(varied_images(3)).kwargs))
    torch.testing.assert_close(logits[:, :n], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone[0, -1], alone[1, -1])  # the image matters


def test_pixel_tensors_and_pinned_resizing(adapter) -> None:  # noqa: ANN001
    images = varied_images(2, seed=4)
    pixels = adapter.pixel_values(images)
    assert adapter.pixel_values(pixels) is pixels
    expected = tiny_image_processor_output(adapter, [im.resize((SIDE, SIDE)) for im in images])
    torch.testing.assert_close(pixels, expected)
    assert adapter.batch_size_of(pixels) == 2
    from_tensor, from_images = adapter.prepare(pixels), adapter.prepare(images)
    for key, value in from_images.kwargs.items():
        torch.testing.assert_close(from_tensor.kwargs[key], value)
    odd = [im.resize((40, 24)) for im in images]  # any size is resized to the pinned side first
    assert adapter.prepare(odd).kwargs["input_ids"].tolist() == from_images.kwargs["input_ids"].tolist()
    torch.testing.assert_close(adapter.pixel_values(odd), tiny_image_processor_output(
        adapter, [im.resize((SIDE, SIDE), resample=3) for im in odd]))


def tiny_image_processor_output(adapter, images):  # noqa: ANN001
    """The family's image processor called the way its HF processor calls it (one image per sample)."""
    processor = tiny_image_processor(adapter.family)
    if adapter.family in ("idefics3", "smolvlm"):
        return processor(images=[[im] for im in images], return_tensors="pt")["pixel_values"]
    return processor(images=images, return_tensors="pt", **adapter.process_options)["pixel_values"]


# ------------------------------------------------------------------------------------------ regions vs the model
def feature_rows(adapter):  # noqa: ANN001
    """(module whose input (``pre``) or output carries per-tile patch features, pre, boxes of its rows ``[N, 4]``)
    from each family's own processor layout (the test's independent statement of where each row comes from)."""
    model = adapter.model.model
    if adapter.family == "qwen2-vl":  # merger input [N, d], rows in the processor's (h/m, w/m, m, m) order
        rows, cols = adapter.grid[1], adapter.grid[2]
        m = adapter.merge
        boxes = []
        for i in range(rows * cols):
            block, inner = divmod(i, m * m)
            by, bx = divmod(block, cols // m)
            dy, dx = divmod(inner, m)
            r, c = by * m + dy, bx * m + dx
            boxes.append((r / rows, c / cols, (r + 1) / rows, (c + 1) / cols))
        return model.visual.merger, True, torch.tensor(boxes)
    if adapter.family in ("llava-next", "llava-onevision"):  # projector output [1 + k², s², d]: base, then tiles
        s, k = adapter.side_features, adapter.tiles
        boxes = [grid_box(j, s, (0, 0, 1, 1)) for j in range(s * s)]
        for tile in range(k * k):
            r, c = divmod(tile, k)
            boxes += [grid_box(j, s, (r / k, c / k, (r + 1) / k, (c + 1) / k)) for j in range(s * s)]
        return model.multi_modal_projector, False, torch.tensor(boxes)
    patches = adapter.vision_config.image_size // adapter.vision_config.patch_size
    if adapter.family in ("idefics3", "smolvlm"):  # connector input [k² + 1, p², d]: tiles, then global
        k = adapter.tiles
        boxes = []
        for tile in range(k * k):
            r, c = divmod(tile, k)
            boxes += [grid_box(j, patches, (r / k, c / k, (r + 1) / k, (c + 1) / k)) for j in range(patches ** 2)]
        boxes += [grid_box(j, patches, (0, 0, 1, 1)) for j in range(patches ** 2)]
        return model.connector, True, torch.tensor(boxes)
    assert adapter.family == "gemma3"  # projector input [1, P², d], raster
    return model.multi_modal_projector, True, torch.tensor([grid_box(j, patches, (0, 0, 1, 1))
                                                            for j in range(patches ** 2)])


def grid_box(index: int, side: int, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    r, c = divmod(index, side)
    top, left, bottom, right = box
    h, w = (bottom - top) / side, (right - left) / side
    return (top + r * h, left + c * w, top + (r + 1) * h, left + (c + 1) * w)


def support_boxes(adapter, images) -> torch.Tensor:  # noqa: ANN001
    """``[T, 4]``: for every image token, the bounding box of the feature rows its embedding depends on (NaN when
    none), from one vector-Jacobian product per token through the model's own ``get_image_features``."""
    module, pre, row_boxes = feature_rows(adapter)
    prepared = adapter.prepare(images)
    inputs = {k: v for k, v in prepared.kwargs.items() if k not in SEQUENCE_KEYS}
    held: dict[str, torch.Tensor] = {}

    def swap(value: torch.Tensor) -> torch.Tensor:
        if "x" not in held:
            held["x"] = value.detach().clone().requires_grad_(True)
        return held["x"]

    hook = (module.register_forward_pre_hook(lambda m, args: (swap(args[0]),) + tuple(args[1:])) if pre
            else module.register_forward_hook(lambda m, args, out: swap(out)))
    try:
        with torch.enable_grad():
            out = adapter.model.model.get_image_features(**inputs).pooler_output
            tokens = torch.cat(list(out)) if isinstance(out, (list, tuple)) else out.reshape(-1, out.shape[-1])
            assert tokens.shape[0] == adapter.n_image_tokens
            gen = torch.Generator().manual_seed(0)
            probe = torch.randn(tokens.shape, generator=gen)
            result = torch.full((tokens.shape[0], 4), float("nan"))
            for t in range(tokens.shape[0]):
                (grad,) = torch.autograd.grad((tokens[t] * probe[t]).sum(), held["x"], retain_graph=True)
                rows = grad.reshape(-1, grad.shape[-1]).abs().sum(-1).nonzero().flatten()
                assert len(row_boxes) == grad.reshape(-1, grad.shape[-1]).shape[0]
                if len(rows):
                    picked = row_boxes[rows]
                    result[t] = torch.stack([picked[:, 0].min(), picked[:, 1].min(), picked[:, 2].max(),
                                             picked[:, 3].max()])
    finally:
        hook.remove()
    return result


@pytest.mark.parametrize("kind", [k for k in VLM_KINDS if k != "qwen2.5-vl"])  # 2.5: see test_qwen2_vl (M-RoPE)
def test_image_regions_are_the_models_own_geometry(kind: str) -> None:
    adapter = tiny_vlm_adapter(kind)
    regions = adapter.image_regions()
    assert regions.boxes.shape == (adapter.n_image_tokens, 4)
    expected = support_boxes(adapter, varied_images(1))
    torch.testing.assert_close(regions.boxes, expected, equal_nan=True, rtol=0, atol=1e-6)


def test_heatmap_on_the_region_grid(adapter) -> None:  # noqa: ANN001
    image = varied_images(1, size=48)[0].resize((40, 24))
    mapping = token_to_patch_map(adapter, [image])
    regions = adapter.image_regions()
    rows, cols = regions.grid
    assert mapping.shape == (1, adapter.n_image_tokens, rows * cols)
    sums = mapping.sum(-1)[0]
    region_less = regions.boxes.isnan().any(-1)
    torch.testing.assert_close(sums, (~region_less).float())  # 1 per token, 0 for newline tokens
    heat = heatmap(adapter, image, NEURONS)
    assert heat.shape == (24, 40) and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    acts = token_activations(adapter, [image], NEURONS)[0]
    grid = (acts @ region_map(regions)).view(1, 1, rows, cols)
    up = torch.nn.functional.interpolate(grid, size=(24, 40), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(heat, (up - up.min()) / (up.max() - up.min()), atol=1e-5)


# ------------------------------------------------------------------------------------------ loading
def save_folder(adapter, folder, processor: bool = True):  # noqa: ANN001
    adapter.model.save_pretrained(folder)
    adapter.tokenizer.save_pretrained(folder)
    if processor:
        tiny_image_processor(adapter.family).save_pretrained(folder)
    return folder


def test_load_model_round_trip(adapter, tmp_path) -> None:  # noqa: ANN001
    folder = save_folder(adapter, tmp_path / adapter.family)
    loaded = load_model(str(folder))
    assert type(loaded) is type(adapter) and loaded.image_side == SIDE
    assert loaded.prompt_ids() == adapter.prompt_ids() and loaded.n_image_tokens == adapter.n_image_tokens
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    images = varied_images(2)
    with torch.no_grad():
        a = adapter.logits(adapter.model(**adapter.prepare(images).kwargs))
        b = loaded.logits(loaded.model(**loaded.prepare(images).kwargs))
    torch.testing.assert_close(a, b)


def test_a_folder_without_image_processor_is_one_line_error(tmp_path) -> None:  # noqa: ANN001
    adapter = tiny_vlm_adapter("gemma3")
    folder = save_folder(adapter, tmp_path / "g", processor=False)
    with pytest.raises(KneuronError) as info:
        load_model(str(folder))
    assert str(info.value) == f"gemma3 folder has no preprocessor_config.json (its image processor): {folder}"
    with pytest.raises(KneuronError, match="needs its image processor"):
        type(adapter)(adapter.model, adapter.tokenizer)

"""`kneuron.engine.signals.heatmap`: token activations, token -> patch maps (grouping, region boxes and Q-Former
Jacobian),
heatmaps, overlays and the object-contrast share (the region families: `tests/engine/models/test_vlm_families.py`)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageRegions, grid_boxes
from kneuron.engine.signals.heatmap import (
    grouping_map,
    heatmap,
    heatmap_figure,
    heatmaps,
    jacobian_patch_map,
    overlay,
    region_map,
    side_by_side,
    token_activations,
    token_to_patch_map,
)
from kneuron.engine.signals.heatmap_contrast import (
    ImageContrast,
    heatmap_object_contrast,
    object_contrast,
    share_vs_others,
)
from tests.helpers.hf_tiny import tiny_adapter, varied_images

NEURONS = {0: [1, 7], 2: [5]}


@pytest.fixture(scope="module")
def qformer():
    return tiny_adapter("minigpt4-qformer")


@pytest.fixture(scope="module")
def patch():
    return tiny_adapter("minigpt4-patch")


# ------------------------------------------------------------------------------------------------ activations
def reference_activations(adapter, images, neurons, signed: bool = False) -> torch.Tensor:  # noqa: ANN001
    """Plain forward pre-hooks on down_proj; image positions worked out from the prompt segments."""
    seen: dict[int, torch.Tensor] = {}
    handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: seen.__setitem__(layer, args[0].detach().clone()))
        for layer in neurons]
    try:
        prepared = adapter.prepare(images)
        with torch.no_grad():
            adapter.model(*prepared.args)
    finally:
        for handle in handles:
            handle.remove()
    n0 = prepared.args[1].shape[-1]
    cols = [seen[layer][:, n0:n0 + adapter.n_image_tokens, unit] for layer, units in neurons.items() for unit in units]
    stacked = torch.stack(cols, -1)
    return (stacked if signed else stacked.abs()).mean(-1)


@pytest.mark.parametrize("kind", ["qformer", "patch"])
def test_token_activations_match_plain_hooks(kind: str, qformer, patch) -> None:  # noqa: ANN001
    adapter = qformer if kind == "qformer" else patch
    images = varied_images(3)
    got = token_activations(adapter, images, NEURONS, batch_size=2)
    assert got.shape == (3, adapter.n_image_tokens)
    torch.testing.assert_close(got, reference_activations(adapter, images, NEURONS), rtol=1e-5, atol=1e-6)
    signed = token_activations(adapter, images, NEURONS, value="signed")
    torch.testing.assert_close(signed, reference_activations(adapter, images, NEURONS, signed=True),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(signed, got)  # SwiGLU activations are signed: the two differ
    one = token_activations(adapter, images, [(2, 5)])
    torch.testing.assert_close(one, reference_activations(adapter, images, {2: [5]}), rtol=1e-5, atol=1e-6)
    with pytest.raises(KneuronError, match="unknown heat value 'max'"):
        token_activations(adapter, images, NEURONS, value="max")
    with pytest.raises(KneuronError, match="empty"):
        token_activations(adapter, images, [])
    with pytest.raises(KneuronError, match="outside the model"):
        token_activations(adapter, images, [(9, 0)])


# ------------------------------------------------------------------------------------------------ patch variant
def test_grouping_map_is_the_exact_grouping() -> None:
    mapping = grouping_map((8, 2))  # 8x8 patches, 4 horizontally adjacent patches per token
    assert mapping.shape == (16, 64)
    for token in range(16):
        row, col = divmod(token, 2)
        expected = [row * 8 + col * 4 + j for j in range(4)]  # same patch row, adjacent columns
        assert mapping[token].nonzero().flatten().tolist() == expected
        assert torch.allclose(mapping[token, expected], torch.full((4,), 0.25))
    assert torch.equal(grouping_map((4, 4)), torch.eye(16))  # LLaVA: one patch per token
    with pytest.raises(KneuronError, match="does not group"):
        grouping_map((8, 3))


def test_patch_variant_map_matches_the_models_own_grouping(patch) -> None:  # noqa: ANN001
    """Support of the grouping map == the patches each LLM image token actually depends on (its Jacobian)."""
    images = varied_images(2)
    mapping = token_to_patch_map(patch, images)
    assert mapping.shape == (2, patch.n_image_tokens, 16)
    assert torch.equal(mapping[0], grouping_map(patch.patch_grid))
    features = {}
    vision = patch.model.vision_model
    handle = vision.register_forward_hook(lambda m, a, out: features.__setitem__("x", out.last_hidden_state))
    pixels = patch.pixel_values(images)
    with torch.no_grad():
        patch.model.encode_img(pixels)
    handle.remove()

    def tokens_of(rows: torch.Tensor) -> torch.Tensor:
        def replace(module, args, output):  # noqa: ANN001
            output.last_hidden_state = rows
            return output
        hook = vision.register_forward_hook(replace)
        try:
            return patch.model.encode_img(pixels[:1])
        finally:
            hook.remove()

    jac = jacobian_patch_map(tokens_of, features["x"], n_probes=64)
    assert torch.equal(jac > 0, mapping > 0)


# ------------------------------------------------------------------------------------------------ region models
def test_region_map_spreads_each_box_over_the_cells_it_overlaps() -> None:
    """Grid 2 x 4: a cell, a box over 2 x 2 cells, a box straddling half of two cells, a newline (NaN) token."""
    boxes = torch.tensor([[0.0, 0.25, 0.5, 0.5],      # exactly cell (0, 1)
                          [0.0, 0.5, 1.0, 1.0],       # cells (0, 2), (0, 3), (1, 2), (1, 3)
                          [0.5, 0.125, 1.0, 0.375],   # half of (1, 0) and half of (1, 1)
                          [float("nan")] * 4])
    mapping = region_map(ImageRegions(boxes, (2, 4)))
    expected = torch.zeros(4, 8)
    expected[0, 1] = 1.0
    expected[1, [2, 3, 6, 7]] = 0.25
    expected[2, [4, 5]] = 0.5
    torch.testing.assert_close(mapping, expected)
    assert torch.equal(region_map(ImageRegions(grid_boxes(3, 5), (3, 5))), torch.eye(15))  # a grid is identity
    newline = grid_boxes(2, 2, box=(0.0, 0.5, 1.0, 1.0), newline=True)
    assert newline.shape == (6, 4) and newline[[2, 5]].isnan().all() and not newline[[0, 1, 3, 4]].isnan().any()
    torch.testing.assert_close(newline[1], torch.tensor([0.0, 0.75, 0.5, 1.0]))


@pytest.mark.parametrize(("regions", "grid", "message"), [
    (ImageRegions(grid_boxes(2, 2), (2, 2)), None, "image regions of 'stub' give 4 tokens but the model has 5 image "
                                                   "tokens"),
    (None, (4, 2), r"token grid \(4, 2\) has 8 tokens but 'stub' has 5 image tokens"),
])
def test_a_map_of_the_wrong_token_count_is_one_line(regions, grid, message: str) -> None:  # noqa: ANN001
    stub = types.SimpleNamespace(name="stub", n_image_tokens=5, patch_grid=grid, image_regions=lambda: regions)
    with pytest.raises(KneuronError, match=f"^{message}$"):
        token_to_patch_map(stub, [Image.new("RGB", (8, 8))])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ Q-Former
def test_jacobian_map_on_a_constructed_connector() -> None:
    """tokens_q = Σ_p a[q, p] · (e_p U): ‖∂z_q/∂e_p‖_F = |a[q, p]| ‖U‖_F, so the map is |a| row-normalised."""
    gen = torch.Generator().manual_seed(0)
    n_patches, d_in, d_out = 9, 5, 6
    a = torch.zeros(3, n_patches)
    a[0, [2, 5]] = torch.tensor([1.0, -3.0])  # query 0 reads patches 2 and 5 (5 three times as strongly)
    a[1, 7] = 0.5  # query 1 reads patch 7 only
    a[2] = torch.linspace(-1, 1, n_patches)
    u = torch.randn(d_in, d_out, generator=gen)
    features = torch.randn(2, 1 + n_patches, d_in, generator=gen)  # CLS first

    def tokens_of(rows: torch.Tensor) -> torch.Tensor:
        return torch.einsum("qp,kpi,io->kqo", a, rows[:, 1:], u) + rows[:, :1] @ u  # CLS feeds every query

    expected = a.abs() / a.abs().sum(-1, keepdim=True)
    exact = jacobian_patch_map(tokens_of, features, n_probes=d_out, max_rows=5)
    assert exact.shape == (2, 3, n_patches)
    torch.testing.assert_close(exact, expected.expand(2, -1, -1), rtol=1e-5, atol=1e-6)
    probed = jacobian_patch_map(tokens_of, features, n_probes=4, seed=3)  # Hutchinson estimate
    torch.testing.assert_close(probed.sum(-1), torch.ones(2, 3))
    assert probed[:, 0].nonzero()[:, 1].unique().tolist() == [2, 5]
    assert probed[:, 1].argmax(-1).tolist() == [7, 7] and torch.allclose(probed[:, 1, 7], torch.ones(2))


def reference_qformer_map(adapter, images) -> torch.Tensor:  # noqa: ANN001
    """Full Jacobian (torch.autograd.functional.jacobian) of llama_proj(qformer(queries, e)) w.r.t. e."""
    model = adapter.model
    with torch.no_grad():
        feats = model.vision_model(pixel_values=adapter.pixel_values(images)).last_hidden_state

    def tokens(e: torch.Tensor) -> torch.Tensor:
        queries = model.query_tokens.expand(1, -1, -1)
        mask = torch.ones(e.shape[:-1], dtype=torch.long)[None]
        out = model.qformer(query_embeds=queries, encoder_hidden_states=e[None],
                            encoder_attention_mask=mask).last_hidden_state
        return model.llama_proj(out)[0]

    maps = []
    for row in feats:
        jac = torch.autograd.functional.jacobian(tokens, row)  # [T, d, 1+N, d_v]
        norms = jac.pow(2).sum((1, 3)).sqrt()[:, 1:]  # [T, N]
        maps.append(norms / norms.sum(-1, keepdim=True))
    return torch.stack(maps)


def test_qformer_map_equals_the_full_jacobian(qformer) -> None:  # noqa: ANN001
    images = varied_images(2)
    reference = reference_qformer_map(qformer, images)
    exact = token_to_patch_map(qformer, images, n_probes=64)  # d_model = 64: the unit basis, exact
    assert exact.shape == (2, qformer.n_image_tokens, 16)
    torch.testing.assert_close(exact, reference, rtol=1e-4, atol=1e-6)
    estimate = token_to_patch_map(qformer, images)  # 16 Rademacher probes
    torch.testing.assert_close(estimate.sum(-1), torch.ones(2, qformer.n_image_tokens))
    assert torch.equal(estimate, token_to_patch_map(qformer, images))  # seeded: deterministic
    corr = torch.corrcoef(torch.stack([estimate.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.8


def test_qformer_map_follows_the_image(qformer) -> None:  # noqa: ANN001
    """Rows depend on the image (attention is content-dependent) and are not uniform."""
    maps = token_to_patch_map(qformer, varied_images(2, seed=5), n_probes=64)
    assert not torch.allclose(maps[0], maps[1])
    assert not torch.allclose(maps, torch.full_like(maps, 1 / 16), atol=1e-2)


@pytest.mark.parametrize("kind", ["blip-2", "instructblip", "llava"])
def test_hf_models_have_maps(kind: str) -> None:
    adapter = tiny_adapter(kind)
    images = varied_images(2)
    mapping = token_to_patch_map(adapter, images)
    assert mapping.shape == (2, adapter.n_image_tokens, 16)
    torch.testing.assert_close(mapping.sum(-1), torch.ones(2, adapter.n_image_tokens))


# ------------------------------------------------------------------------------------------------ heatmaps
@pytest.mark.parametrize("kind", ["qformer", "patch"])
def test_heatmap_size_range_and_recipe(kind: str, qformer, patch) -> None:  # noqa: ANN001
    adapter = qformer if kind == "qformer" else patch
    image = varied_images(1, size=48)[0].resize((40, 24))
    heat = heatmap(adapter, image, NEURONS)
    assert heat.shape == (24, 40) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    # Pan's recipe by hand: activation @ map on the 4x4 patch grid, bilinear upsample, min-max
    for value in ("magnitude", "signed"):
        acts = token_activations(adapter, [image], NEURONS, value=value)[0]
        grid = (acts @ token_to_patch_map(adapter, [image])[0]).view(1, 1, 4, 4)
        up = torch.nn.functional.interpolate(grid, size=(24, 40), mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(heatmap(adapter, image, NEURONS, value=value),
                                   (up - up.min()) / (up.max() - up.min()), atol=1e-5)


def test_joint_normalisation(patch) -> None:  # noqa: ANN001
    images = varied_images(2)
    joint = heatmaps(patch, images, NEURONS, joint=True)
    single = heatmaps(patch, images, NEURONS)
    assert max(h.max() for h in joint) == pytest.approx(1.0) and min(h.min() for h in joint) == 0.0
    assert all(h.max() == pytest.approx(1.0) for h in single)
    assert not all(np.allclose(a, b) for a, b in zip(joint, single, strict=True))


def test_overlay_and_side_by_side() -> None:
    image = Image.fromarray(np.full((10, 20, 3), 200, dtype=np.uint8))
    heat = np.zeros((10, 20), dtype=np.float32)
    heat[:, 10:] = 1.0
    out = overlay(image, heat)
    assert out.size == (20, 10) and out.mode == "RGB"
    pixels = np.asarray(out).astype(int)
    np.testing.assert_allclose(pixels[0, 0], [100, 100, 164], atol=1)  # jet(0) = (0, 0, 0.5)
    np.testing.assert_allclose(pixels[0, 19], [164, 100, 100], atol=1)  # jet(1) = (0.5, 0, 0)
    small = overlay(image, np.ones((2, 4), dtype=np.float32))  # heat resized to the image
    assert small.size == (20, 10)
    both = side_by_side(out, image, labels=("a", "b"), min_side=40, gap=4)
    assert both.size == (80 + 80 + 3 * 4, 40 + 18 + 8)


def test_heatmap_figure(patch, tmp_path) -> None:  # noqa: ANN001
    original, inpainted = varied_images(2)
    figure = heatmap_figure(patch, original, inpainted, NEURONS)
    assert figure.width > 2 * 256 and figure.height > 256
    figure.save(tmp_path / "fig.png")
    assert Image.open(tmp_path / "fig.png").size == figure.size


# ------------------------------------------------------------------------------------------------ contrast
class SquaresDataset:
    """Synthetic dataset: each image shows boxes ``(concept, (x0, y0, x1, y1), brightness)`` on a dark ground;
    ``masks`` may override a concept's mask (to point it at the wrong place)."""

    def __init__(self, objects: dict[int, list[tuple[str, tuple[int, int, int, int], int]]], size: int = 32,
                 masks: dict[tuple[int, str], tuple[int, int, int, int]] | None = None) -> None:
        self.objects, self.size, self.masks = objects, size, masks or {}

    def box_mask(self, box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        mask = np.zeros((self.size, self.size), dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask

    def load_image(self, image_id: int) -> Image.Image:
        pixels = np.full((self.size, self.size, 3), 40, dtype=np.uint8)
        for _, box, brightness in self.objects[image_id]:
            pixels[self.box_mask(box)] = brightness
        return Image.fromarray(pixels)

    def concepts_in(self, image_id: int) -> list[str]:
        return [concept for concept, _, _ in self.objects[image_id]]

    def concept_mask(self, image_id: int, concept: str) -> np.ndarray:
        if (image_id, concept) in self.masks:
            return self.box_mask(self.masks[(image_id, concept)])
        (box,) = [box for c, box, _ in self.objects[image_id] if c == concept]
        return self.box_mask(box)


def test_object_contrast_values() -> None:
    heat = np.array([[1.0, 0.0], [0.5, 0.0]], dtype=np.float32)
    mask = np.array([[True, False], [True, False]])
    assert object_contrast(heat, mask) == (0.75, 0.0)
    inside, outside = object_contrast(heat, np.ones((2, 2), dtype=bool))
    assert inside == pytest.approx(0.375) and np.isnan(outside)
    with pytest.raises(KneuronError, match="does not match"):
        object_contrast(heat, np.ones((3, 2), dtype=bool))


def test_heatmap_object_contrast_share(monkeypatch) -> None:  # noqa: ANN001
    """A stand-in heatmap (image brightness): the square is brighter than the rest in images 1 and 2, the
    full-image mask of image 3 does not count, image 4's mask points at the background; against the other
    objects, image 1's square beats a dim circle and image 2's loses to a bright one."""
    import kneuron.engine.signals.heatmap_contrast as hm

    data = SquaresDataset({
        1: [("square", (4, 4, 12, 12), 230), ("circle", (20, 20, 26, 26), 120)],
        2: [("square", (16, 10, 30, 20), 200), ("circle", (2, 2, 8, 8), 255)],
        3: [("square", (0, 0, 32, 32), 230)],
        4: [("square", (20, 20, 28, 28), 230)],
    }, masks={(4, "square"): (0, 0, 8, 8)})
    monkeypatch.setattr(hm, "token_to_patch_map", lambda adapter, images, **kw: None)
    monkeypatch.setattr(hm, "heatmaps", lambda adapter, images, neurons, **kw: [
        np.asarray(im.convert("L"), dtype=np.float32) / 255.0 for im in images])
    monkeypatch.setattr(hm, "raw_heats", lambda adapter, images, neurons, mapping, **kw: [
        (np.asarray(im.convert("L"), dtype=np.float32), np.ones((im.height, im.width), np.float32)) for im in images])
    share, per_image = heatmap_object_contrast(None, data, [1, 2, 3, 4], "square", NEURONS, batch_size=3)
    # uniform patch mass: the lift is the brightness' own relative contrast
    grey = np.asarray(data.load_image(1).convert("L"), dtype=np.float32)
    assert per_image[0].lift == pytest.approx(hm.relative_contrast(grey, data.concept_mask(1, "square")))
    assert [r.image_id for r in per_image] == [1, 2, 3, 4]
    assert [r.brighter_inside for r in per_image] == [True, True, False, False]
    assert np.isnan(per_image[2].outside)
    assert share == pytest.approx(2 / 3)
    assert per_image[0].others == pytest.approx(120 / 255) and per_image[1].others == pytest.approx(1.0)
    assert np.isnan(per_image[2].others) and np.isnan(per_image[3].others)
    assert share_vs_others(per_image) == pytest.approx(1 / 2)


def test_heatmap_object_contrast_runs_on_a_model(patch) -> None:  # noqa: ANN001
    data = SquaresDataset({1: [("square", (4, 4, 12, 12), 230)],
                           2: [("square", (16, 10, 30, 20), 230), ("circle", (0, 0, 6, 6), 90)]})
    share, per_image = heatmap_object_contrast(patch, data, [1, 2], "square", NEURONS)
    assert len(per_image) == 2 and 0.0 <= share <= 1.0
    assert all(0.0 <= r.inside <= 1.0 and 0.0 <= r.outside <= 1.0 for r in per_image)
    assert all(np.isfinite(r.lift) for r in per_image)
    assert np.isnan(per_image[0].others) and 0.0 <= per_image[1].others <= 1.0


# ------------------------------------------------------------------------------------------------ adapter method
def test_heatmap_imports_no_concrete_adapter() -> None:
    """Model-specific knowledge lives in the adapters (`VLMAdapter.image_connector`), not in the heatmap."""
    import ast
    import inspect

    import kneuron.engine.signals.heatmap_contrast as hm

    tree = ast.parse(inspect.getsource(hm))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    models = {name for name in imported if name and name.startswith("kneuron.engine.models")}
    assert not models - {"kneuron.engine.models.base"}
    assert "isinstance(adapter" not in inspect.getsource(hm)


def test_qformer_connector_tokens_are_the_models_image_tokens(qformer) -> None:  # noqa: ANN001
    connector = qformer.image_connector()
    assert connector.vision is qformer.model.vision_model
    pixels = qformer.pixel_values(varied_images(2))
    with torch.no_grad():
        torch.testing.assert_close(connector.tokens(pixels, 2), qformer.model.encode_img(pixels))


def test_adapters_without_a_connector_say_so(patch) -> None:  # noqa: ANN001
    with pytest.raises(KneuronError) as caught:
        patch.image_connector()
    assert str(caught.value) == (f"model {patch.name!r} (MiniGPT-4 patch variant) has no Q-Former: its image "
                                 "tokens map to patches through its patch grid")
    llava = tiny_adapter("llava")
    llava.model.config.vision_feature_select_strategy = "full"  # CLS token first: no patch grid
    assert llava.patch_grid is None
    with pytest.raises(KneuronError) as caught:
        token_to_patch_map(llava, varied_images(1))
    assert str(caught.value) == ("model 'tiny-random-llava' (LLaVA, vision_feature_select_strategy='full') has no "
                                 "Q-Former and its image tokens are not a patch grid: no token -> patch map for "
                                 "its image tokens")
    with pytest.raises(KneuronError, match="no token -> patch map"):
        heatmap(llava, varied_images(1)[0], NEURONS)
    from kneuron.engine.models.base import VLMAdapter

    with pytest.raises(KneuronError) as caught:
        VLMAdapter.image_connector(llava)  # the interface's default, for adapters that know no connector
    assert str(caught.value) == ("model 'tiny-random-llava' has neither a patch grid nor a known Q-Former: no "
                                 "token -> patch map for its image tokens")


def test_lift_discriminates_where_the_brighter_inside_share_is_one_for_both_sets() -> None:
    """A map whose tokens read mostly the object patches (as Q-Former queries do; 4 object patches of 16): a random
    set firing equally at every token and a concept set firing more at the object's tokens are both brighter
    inside on every image (the old share: 1.00 for both); the lift is 0 for the random set and positive for the
    concept set."""
    from kneuron.engine.signals.heatmap_contrast import contrast_share, object_lift

    rng = np.random.default_rng(0)
    n_tokens, side = 6, 4
    mask = np.zeros((side, side), dtype=bool)
    mask[:2, :2] = True
    obj, rest = np.flatnonzero(mask.ravel()), np.flatnonzero(~mask.ravel())
    random_rows, concept_rows = [], []
    for image_id in range(8):
        mapping = np.zeros((n_tokens, side * side))
        object_tokens = np.arange(n_tokens) < n_tokens // 2
        for t in range(n_tokens):  # object tokens: 90% of their weight on object patches; the others 50%
            share = 0.9 if object_tokens[t] else 0.5
            mapping[t, obj] = rng.dirichlet(np.ones(len(obj))) * share
            mapping[t, rest] = rng.dirichlet(np.ones(len(rest))) * (1 - share)
        mass = mapping.sum(0).reshape(side, side)
        for acts, rows in ((np.full(n_tokens, 2.0), random_rows),
                           (np.where(object_tokens, 3.0, 1.0), concept_rows)):
            heat = (acts @ mapping).reshape(side, side)
            norm = (heat - heat.min()) / (heat.max() - heat.min())
            inside, outside = object_contrast(norm, mask)
            rows.append(ImageContrast(image_id, inside, outside, lift=object_lift(heat, mass, mask)))
    assert contrast_share(random_rows) == contrast_share(concept_rows) == 1.0
    assert all(abs(r.lift) < 1e-9 for r in random_rows)
    assert all(r.lift > 0 for r in concept_rows)

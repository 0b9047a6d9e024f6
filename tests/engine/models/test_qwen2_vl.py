"""Qwen2-VL / Qwen2.5-VL: the processor's grid (``image_grid_thw``) decides the image tokens; the model's own
M-RoPE positions of the image tokens agree with the adapter's region grid; the pinned side."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from kneuron.engine.models.qwen2_vl import Qwen2VLAdapter
from tests.helpers.hf_tiny import varied_images
from tests.helpers.hf_tiny_vlm import SIDE, tiny_vlm_adapter

KINDS = ("qwen2-vl", "qwen2.5-vl")


@pytest.fixture(scope="module", params=KINDS)
def adapter(request):  # noqa: ANN001
    return tiny_vlm_adapter(request.param)


def test_prompt_is_the_processors_expansion(adapter) -> None:  # noqa: ANN001
    """``<|vision_start|>`` + ``prod(image_grid_thw) / merge²`` ``<|image_pad|>`` + ``<|vision_end|>`` in the user
    turn (``Qwen2VLProcessor.replace_image_token``), BOS from the tiny tokenizer."""
    grid = adapter.image_processor(images=adapter.resize(varied_images(1)), return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, SIDE // 4, SIDE // 4]]
    n = int(grid.prod()) // 2 ** 2
    assert n == adapter.n_image_tokens == 16 and adapter.token_grid == (4, 4)
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * n + f"<|vision_end|>{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert adapter.prompt_ids() == adapter.tokenizer(text)["input_ids"]
    prepared = adapter.prepare(varied_images(3))
    assert prepared.kwargs["image_grid_thw"].tolist() == grid.tolist() * 3
    assert prepared.kwargs["pixel_values"].shape == (3 * 1 * 8 * 8, 3 * 2 * 4 * 4)  # [B * patches, C * T * p * p]
    assert adapter.stop_token_ids == [adapter.tokenizer.eos_token_id,
                                      adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_mrope_positions_of_the_image_tokens_follow_the_region_grid(adapter) -> None:  # noqa: ANN001
    """The model's own ``get_rope_index``: image token ``k`` gets (t, h, w) = (s, s + row_k, s + col_k) with
    (row_k, col_k) the cell of its region box; text after the image continues from ``s + max(rows, cols)``."""
    prepared = adapter.prepare(varied_images(2), targets=[[5, 6], [7, 8]])
    kwargs = prepared.kwargs
    position_ids, _ = adapter.model.model.get_rope_index(kwargs["input_ids"], kwargs["mm_token_type_ids"],
                                                         image_grid_thw=kwargs["image_grid_thw"])
    image = prepared.image_positions
    start = int(image[0])
    regions = adapter.image_regions()
    rows, cols = regions.grid
    cell_row = (regions.boxes[:, 0] * rows).round().long()
    cell_col = (regions.boxes[:, 1] * cols).round().long()
    for row in range(2):
        t, h, w = position_ids[:, row, image]
        assert t.tolist() == [start] * len(image)
        assert (h - start).tolist() == cell_row.tolist() and (w - start).tolist() == cell_col.tolist()
        after = int(image[-1]) + 1
        assert position_ids[:, row, after].tolist() == [start + max(rows, cols)] * 3


def test_default_side_and_bad_sides() -> None:
    adapter = tiny_vlm_adapter("qwen2-vl")
    assert adapter.default_image_side() == SIDE  # 448 px clamped to the tiny processor's max pixels (32 x 32)
    full = tf.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2)  # real max pixels: 448 px rounded to 8 px
    big = Qwen2VLAdapter(adapter.model, adapter.tokenizer, image_processor=full)
    assert big.image_side == 448 and big.n_image_tokens == (448 // 8) ** 2
    with pytest.raises(KneuronError, match=r"image side 100 px is not kept by the image processor \(it makes "
                                           r"96x96\): use a multiple of 8 px"):
        Qwen2VLAdapter(adapter.model, adapter.tokenizer, image_processor=full, image_side=100)
    with pytest.raises(KneuronError, match=r"image side 40 px is not kept by the image processor \(it makes "
                                           r"32x32\)"):  # more than the tiny processor's max pixels
        Qwen2VLAdapter(adapter.model, adapter.tokenizer, image_processor=adapter.image_processor, image_side=40)
    with pytest.raises(KneuronError, match="not a whole number"):
        adapter.batch_size_of(torch.zeros(65, 96))


def test_qwen25_window_attention_keeps_the_order() -> None:
    """Qwen2.5-VL's tower permutes patches into attention windows and back: with the tower cut to its first
    (windowed) layer, image token ``t`` depends exactly on the patches of the window of 2 x 2 tokens that holds
    its raster cell, so the merged tokens come out in raster order again."""
    adapter = tiny_vlm_adapter("qwen2.5-vl")
    visual = adapter.model.model.visual
    assert visual.fullatt_block_indexes == [1]
    blocks = visual.blocks
    visual.blocks = torch.nn.ModuleList([blocks[0]])  # windowed attention only: windows of 2 x 2 tokens
    try:
        pixels = adapter.pixel_values(varied_images(1)).requires_grad_(True)
        grid = torch.tensor([list(adapter.grid)])
        with torch.enable_grad():
            tokens = visual(pixels, grid_thw=grid).pooler_output  # [16, d], raster over the 4 x 4 token grid
            support = []
            for t in range(tokens.shape[0]):
                (grad,) = torch.autograd.grad(tokens[t].sum(), pixels, retain_graph=True)
                support.append(set((grad.abs().sum(-1) > 0).nonzero().flatten().tolist()))
    finally:
        visual.blocks = blocks
    for t, rows in enumerate(support):  # window = 2 x 2 tokens = 16 patches (processor order: 4 per token)
        r, c = divmod(t, 4)
        window = [(wr, wc) for wr in (r // 2 * 2, r // 2 * 2 + 1) for wc in (c // 2 * 2, c // 2 * 2 + 1)]
        assert rows == {4 * (wr * 4 + wc) + i for wr, wc in window for i in range(4)}, t

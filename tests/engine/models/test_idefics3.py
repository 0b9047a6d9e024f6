"""Idefics3 / SmolVLM: prompt expansion against ``Idefics3Processor`` (tiles with row/col tags, global image),
the tile layout, and the layout without image splitting."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from kneuron.engine.models.idefics3 import Idefics3Adapter
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from tests.helpers.hf_tiny import varied_images
from tests.helpers.hf_tiny_vlm import tiny_vlm_adapter


@pytest.mark.parametrize("kind", ["idefics3", "smolvlm"])
def test_prompt_is_the_processors_expansion(kind: str) -> None:
    """2 x 2 tiles + global image of 2 x 2 pixel-shuffled tokens each (16 px tiles, 4 px patches, scale 2)."""
    adapter = tiny_vlm_adapter(kind)
    assert (adapter.tiles, adapter.tokens_per_side, adapter.n_image_tokens) == (2, 2, 20)
    processor = tf.Idefics3Processor(image_processor=adapter.image_processor, tokenizer=adapter.tokenizer,
                                     image_seq_len=adapter.image_seq_len)  # SmolVLM's expansion is the same
    out = processor(text=[adapter.template.format(instruction=DEFAULT_INSTRUCTION)] * 2,
                    images=[[image] for image in adapter.resize(varied_images(2))], return_tensors="pt")
    prepared = adapter.prepare(varied_images(2))
    assert prepared.kwargs["input_ids"].tolist() == out["input_ids"].tolist()
    torch.testing.assert_close(prepared.kwargs["pixel_values"], out["pixel_values"])
    tokens = adapter.tokenizer.convert_ids_to_tokens(adapter.prompt_ids())
    assert tokens.count("<row_1_col_2>") == 1 and tokens.count("<global-img>") == 1
    assert "<end_of_utterance>" in tokens and adapter.stop_token_ids[-1] == adapter.tokenizer.convert_tokens_to_ids(
        "<end_of_utterance>")


def test_without_image_splitting_the_global_image_is_all() -> None:
    tiled = tiny_vlm_adapter("idefics3")
    processor = tf.Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                             do_image_splitting=False)
    adapter = Idefics3Adapter(tiled.model, tiled.tokenizer, image_processor=processor)
    assert (adapter.image_side, adapter.tiles, adapter.n_image_tokens) == (16, 0, 4)
    regions = adapter.image_regions()
    assert regions.grid == (2, 2)
    torch.testing.assert_close(regions.boxes, torch.tensor([[0, 0, .5, .5], [0, .5, .5, 1], [.5, 0, 1, .5],
                                                            [.5, .5, 1, 1]]))
    reference = tf.Idefics3Processor(image_processor=processor, tokenizer=tiled.tokenizer, image_seq_len=4)
    out = reference(text=[adapter.template.format(instruction=DEFAULT_INSTRUCTION)],
                    images=[[adapter.resize(varied_images(1))[0]]], return_tensors="pt")
    assert adapter.prompt_ids() == out["input_ids"][0].tolist()
    with torch.no_grad():
        logits = adapter.logits(adapter.model(**adapter.prepare(varied_images(2)).kwargs))
    assert logits.shape[:2] == (2, len(adapter.prompt_ids()))

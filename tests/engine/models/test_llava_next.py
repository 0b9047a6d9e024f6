"""LLaVA-NeXT / OneVision: prompt expansion against ``LlavaNextProcessor``, the template chosen by text model,
the pinned square pinpoint, and OneVision's bilinear shrinking (no region map: a one-line error)."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.llava_next import (
    CHATML_TEMPLATE,
    MISTRAL_TEMPLATE,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
)
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from kneuron.engine.signals.heatmap import heatmap, token_to_patch_map
from tests.helpers.hf_tiny import varied_images
from tests.helpers.hf_tiny_vlm import SIDE, tiny_image_processor, tiny_vlm_adapter, tiny_vlm_model


@pytest.mark.parametrize("kind, strategy, cls_tokens", [("llava-next", "default", 1), ("llava-onevision", "full", 0)])
def test_prompt_is_the_processors_expansion(kind: str, strategy: str, cls_tokens: int) -> None:
    """Base 2 x 2 + fine 4 x (4 + newline) = 24 ``<image>`` tokens, as ``LlavaNextProcessor`` counts them
    (CLIP towers count their CLS and drop it with ``"default"``; OneVision's SigLIP has none)."""
    adapter = tiny_vlm_adapter(kind)
    processor = tf.LlavaNextProcessor(image_processor=adapter.image_processor, tokenizer=adapter.tokenizer,
                                      patch_size=8, vision_feature_select_strategy=strategy,
                                      num_additional_image_tokens=cls_tokens)
    images = adapter.resize(varied_images(2))
    out = processor(text=[adapter.template.format(instruction=DEFAULT_INSTRUCTION)] * 2, images=images,
                    return_tensors="pt")
    prepared = adapter.prepare(varied_images(2))
    assert prepared.kwargs["input_ids"].tolist() == out["input_ids"].tolist()
    torch.testing.assert_close(prepared.kwargs["pixel_values"], out["pixel_values"])
    assert prepared.kwargs["image_sizes"].tolist() == out["image_sizes"].tolist() == [[SIDE, SIDE]] * 2
    assert (adapter.tiles, adapter.side_features, adapter.fine, adapter.n_image_tokens) == (2, 2, (4, 4), 24)


def test_template_follows_the_text_model() -> None:
    next_model = tiny_vlm_adapter("llava-next")  # a Mistral text model
    plain = LlavaNextAdapter(next_model.model, next_model.tokenizer, image_processor=next_model.image_processor)
    assert plain.template == MISTRAL_TEMPLATE
    one = tiny_vlm_adapter("llava-onevision")  # Qwen2
    assert LlavaOnevisionAdapter(one.model, one.tokenizer, image_processor=one.image_processor).template == \
        CHATML_TEMPLATE


def test_pinned_side_is_a_square_pinpoint() -> None:
    adapter = tiny_vlm_adapter("llava-next")
    assert adapter.square_pinpoints() == [32] and adapter.default_image_side() == 32
    with pytest.raises(KneuronError) as info:
        LlavaNextAdapter(adapter.model, adapter.tokenizer, image_processor=adapter.image_processor, image_side=48)
    assert str(info.value) == ("llava-next image side 48 px is not a square pinpoint of the model ([32]): other "
                               "sides pad the image")
    config = adapter.model.config
    saved = config.image_grid_pinpoints
    config.image_grid_pinpoints = [[16, 32], [32, 16]]
    try:
        with pytest.raises(KneuronError, match="has no square image_grid_pinpoints"):
            LlavaNextAdapter(adapter.model, adapter.tokenizer, image_processor=adapter.image_processor)
    finally:
        config.image_grid_pinpoints = saved


def test_onevision_shrunk_grid_records_but_has_no_region_map() -> None:
    """``anyres_max_1`` with 2 x 2 tiles: ratio 2 > 1.1, the 4 x 4 fine grid is resized bilinearly to 2 x 2: the
    token count follows the model (it accepts the prompt) and the heatmap says there is no exact map."""
    one = tiny_vlm_adapter("llava-onevision")
    model = tiny_vlm_model("llava-onevision", one.tokenizer)
    model.config.vision_aspect_ratio = "anyres_max_1"  # the model reads it from its config at every forward
    adapter = LlavaOnevisionAdapter(model, one.tokenizer, name="shrunk",
                                    image_processor=tiny_image_processor("llava-onevision"))
    assert adapter.fine == (2, 2) and adapter.n_image_tokens == 4 + 2 * 3
    with torch.no_grad():
        logits = adapter.logits(adapter.model(**adapter.prepare(varied_images(2)).kwargs))
    assert logits.shape[1] == len(adapter.prompt_ids())
    message = ("model 'shrunk' (llava-onevision) resamples its 2x2-tile grid bilinearly to 2x2: no exact token -> "
               "region map (pin a side with fewer tiles)")
    with pytest.raises(KneuronError) as info:
        token_to_patch_map(adapter, varied_images(1))
    assert str(info.value) == message
    with pytest.raises(KneuronError, match="no exact token -> region map"):
        heatmap(adapter, varied_images(1)[0], {0: [1]})

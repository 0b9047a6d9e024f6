"""Hugging Face LLaVA / BLIP-2 / InstructBLIP adapters: structure, prompt and image positions, teacher-forced
inputs, generation slicing, unembedding pieces, preprocessing, and `load_model` round trips / errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model
from kneuron.engine.models.hf_adapters import Blip2Adapter, InstructBlipAdapter, LlavaAdapter, encode_prompt
from kneuron.engine.models.hf_loader import load_hf_vlm, read_hf_config
from kneuron.engine.models.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from tests.helpers.hf_tiny import (
    D_FF,
    FAMILIES,
    IMAGE_SIZE,
    N_LAYERS,
    N_QUERY,
    save_hf_folder,
    tiny_hf_adapter,
    tiny_image_processor,
    varied_images,
)

CLASSES = {"llava": LlavaAdapter, "blip-2": Blip2Adapter, "instructblip": InstructBlipAdapter}


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):  # noqa: ANN001
    return tiny_hf_adapter(request.param)


def words(adapter, text: str) -> list[int]:  # noqa: ANN001
    return adapter.encode(text)


def expected_prompt(adapter, instruction: str = DEFAULT_INSTRUCTION) -> list[int]:  # noqa: ANN001
    """The prompt ids written out by hand for each family's convention."""
    bos, img = adapter.tokenizer.bos_token_id, adapter.model.config.image_token_id
    if adapter.family == "llava":
        return ([bos] + words(adapter, "USER:") + [img] * 16
                + words(adapter, f"{instruction} ASSISTANT:"))
    if adapter.family == "blip-2":
        return [img] * N_QUERY + [bos] + words(adapter, f"Question: {instruction} Answer:")
    return [img] * N_QUERY + [bos] + words(adapter, instruction)


def test_structure(adapter):  # noqa: ANN001
    assert isinstance(adapter, CLASSES[adapter.family])
    assert adapter.n_layers == N_LAYERS
    assert adapter.d_ff == D_FF
    assert adapter.n_image_tokens == (16 if adapter.family == "llava" else N_QUERY)
    assert adapter.patch_grid == ((4, 4) if adapter.family == "llava" else None)
    layers = adapter.decoder_layers(adapter.model)
    assert adapter.neuron_module(adapter.model, 2) is layers[2].mlp.down_proj
    assert adapter.down_proj_weight(1).shape == (64, D_FF)
    assert adapter.stop_token_ids == [adapter.tokenizer.eos_token_id]
    assert adapter.describe()["family"] == adapter.family


def test_prompt_and_image_positions(adapter):  # noqa: ANN001
    prepared = adapter.prepare(varied_images(2))
    ids = prepared.kwargs["input_ids"]
    assert ids.shape == (2, len(expected_prompt(adapter)))
    assert ids[0].tolist() == expected_prompt(adapter) == ids[1].tolist()
    placeholders = (ids[0] == adapter.model.config.image_token_id).nonzero().flatten()
    assert torch.equal(prepared.image_positions, placeholders)
    start = 3 if adapter.family == "llava" else 0  # after "<s> USER :" / first for BLIP
    assert prepared.image_positions.tolist() == list(range(start, start + adapter.n_image_tokens))
    assert prepared.prompt_length == ids.shape[1]
    assert torch.equal(prepared.kwargs["attention_mask"], torch.ones_like(ids))
    assert prepared.args == () and prepared.target_ids is None
    if adapter.family == "instructblip":
        q = adapter.qformer_tokenizer(DEFAULT_INSTRUCTION)["input_ids"]
        assert prepared.kwargs["qformer_input_ids"].tolist() == [q, q]
        assert prepared.kwargs["qformer_attention_mask"].tolist() == [[1] * len(q)] * 2
    custom = adapter.prepare(varied_images(1), instruction="Describe the star.")
    assert custom.kwargs["input_ids"][0].tolist() == expected_prompt(adapter, "Describe the star.")
    assert custom.prompt_length == prepared.prompt_length - 2


def test_prepare_appends_right_padded_targets(adapter):  # noqa: ANN001
    targets = [words(adapter, "a red circle"), words(adapter, "blue"), []]
    prepared = adapter.prepare(varied_images(3), targets=targets)
    ids = prepared.kwargs["input_ids"]
    n = prepared.prompt_length
    assert ids.shape == (3, n + 3)
    assert ids[:, :n].tolist() == [expected_prompt(adapter)] * 3
    pad = adapter.tokenizer.pad_token_id
    assert ids[:, n:].tolist() == [targets[0], targets[1] + [pad, pad], [pad] * 3]
    assert prepared.target_lengths == [3, 1, 0]
    assert torch.equal(prepared.target_ids, ids[:, n:])
    assert torch.equal(prepared.kwargs["attention_mask"], torch.ones_like(ids))
    logits = adapter.logits(adapter.model(**prepared.kwargs))
    assert logits.shape == (3, n + 3, len(adapter.tokenizer))
    # causal: the prompt part does not depend on the appended targets; the image matters
    alone = adapter.logits(adapter.model(**adapter.prepare(varied_images(3)).kwargs))
    torch.testing.assert_close(logits[:, :n], alone)
    assert not torch.allclose(alone[0, -1], alone[1, -1])


def test_new_tokens_are_the_greedy_continuation(adapter):  # noqa: ANN001
    """`new_tokens` of HF generate = step-by-step argmax of full forwards (no cache) after the prompt."""
    images = varied_images(2, seed=5)
    prepared = adapter.prepare(images)
    args, kwargs = adapter.generate_call(prepared, max_new_tokens=3, eos_token_id=[])  # no stop: exactly 3
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1 and kwargs["pad_token_id"] == 0
    with torch.no_grad():
        new = adapter.new_tokens(prepared, adapter.model.generate(*args, **kwargs))
    assert new.shape == (2, 3)
    steps = []
    with torch.no_grad():
        for _ in range(3):
            so_far = torch.tensor(steps, dtype=torch.long).reshape(len(steps), 2).T.tolist()  # [2, steps]
            grown = adapter.prepare(images, targets=so_far if steps else None)
            steps.append(adapter.logits(adapter.model(**grown.kwargs))[:, -1].argmax(-1).tolist())
    assert new.tolist() == torch.tensor(steps).T.tolist()


def test_default_generate_call_stops_and_caps(adapter):  # noqa: ANN001
    prepared = adapter.prepare(varied_images(2))
    args, kwargs = adapter.generate_call(prepared)
    assert kwargs["max_new_tokens"] == 8 and kwargs["eos_token_id"] == adapter.stop_token_ids
    with torch.no_grad():
        new = adapter.new_tokens(prepared, adapter.model.generate(*args, **kwargs))
    assert new.shape[0] == 2 and new.shape[1] <= 8
    eos = adapter.tokenizer.eos_token_id
    row = [7, 9, eos, 4]
    assert adapter.caption_ids(row) == [7, 9]
    assert adapter.caption_text(row) == adapter.tokenizer.decode([7, 9]).strip()


def test_unembedding_and_final_norm_reproduce_logits(adapter):  # noqa: ANN001
    lm = adapter.language_model
    assert lm.lm_head.weight is adapter.unembedding()
    assert lm.model.norm is adapter.final_norm()
    captured = {}
    handle = adapter.final_norm().register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    try:
        with torch.no_grad():
            logits = adapter.logits(adapter.model(**adapter.prepare(varied_images(1)).kwargs))
    finally:
        handle.remove()
    with torch.no_grad():
        rebuilt = adapter.final_norm()(captured["x"]) @ adapter.unembedding().T
    torch.testing.assert_close(rebuilt, logits)
    assert adapter.dtype == torch.float32


def test_image_preprocessing_processor_and_fallback():
    images = varied_images(2)
    for family in FAMILIES:
        with_proc = tiny_hf_adapter(family, image_processor=True)
        expected = tiny_image_processor(family)(images=images, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(with_proc.pixel_values(images), expected)
        fallback = tiny_hf_adapter(family)
        ours = fallback.pixel_values(images)
        assert ours.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(ours, ImagePreprocessor(IMAGE_SIZE, CLIP_MEAN, CLIP_STD)(images))
        tensor = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert fallback.pixel_values(tensor) is tensor


def test_llava_full_strategy_counts_cls_token():
    adapter = tiny_hf_adapter("llava")
    adapter.model.config.vision_feature_select_strategy = "full"
    adapter._prompts.clear()
    assert adapter.n_image_tokens == 17 and adapter.patch_grid is None
    prepared = adapter.prepare(varied_images(1))
    assert len(prepared.image_positions) == 17
    with torch.no_grad():
        adapter.model(**prepared.kwargs)  # HF checks that features and placeholders agree


def test_encode_prompt_without_known_image_token():
    """A tokenizer that does not know the placeholder: text before (with BOS) + image ids + text after."""
    adapter = tiny_hf_adapter("llava")
    ids = encode_prompt(adapter.tokenizer, "USER: <image>\n{instruction} ASSISTANT:", "a star", 999, 2)
    assert ids == [2] + words(adapter, "USER:") + [999, 999] + words(adapter, "a star ASSISTANT:")
    with pytest.raises(ValueError, match="no <image>"):
        encode_prompt(adapter.tokenizer, "{instruction}", "x", 5, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_round_trip(family, tmp_path):  # noqa: ANN001
    original = tiny_hf_adapter(family)
    folder = save_hf_folder(original, tmp_path / family)
    loaded = load_model(str(folder))
    assert type(loaded) is type(original)
    assert loaded.name == str(folder)
    assert (loaded.n_layers, loaded.d_ff, loaded.n_image_tokens) == (N_LAYERS, D_FF, original.n_image_tokens)
    assert loaded.prompt_ids() == original.prompt_ids()
    assert loaded.image_processor is not None
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    images = varied_images(2)
    with torch.no_grad():
        a = original.logits(original.model(**original.prepare(images).kwargs))
        b = loaded.logits(loaded.model(**loaded.prepare(images).kwargs))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # processor (bicubic) vs fallback resize: same size
    half = load_hf_vlm(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.prepare(images).kwargs["pixel_values"].dtype == torch.bfloat16


def one_line_error(folder) -> str:  # noqa: ANN001
    with pytest.raises(KneuronError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert "\n" not in message
    return message


def write_config(folder, config: dict) -> None:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


def test_unsupported_model_type_is_one_line_error(tmp_path):  # noqa: ANN001
    write_config(tmp_path / "gpt", {"model_type": "gpt2"})
    message = one_line_error(tmp_path / "gpt")
    assert "'gpt2'" in message and "config.json" in message and "llava" in message


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "blip-2", "image_token_index": 5},  # BLIP-2's default text model
     "text model opt (OPTModel): decoder layer 0 (OPTDecoderLayer) has no gate_proj/up_proj/down_proj "
     "(its MLP modules: fc1 (Linear), fc2 (Linear))"),
    ({"model_type": "instructblip", "text_config": {"model_type": "t5"}, "image_token_index": 5},
     "text model t5 (T5ForConditionalGeneration) has no decoder stack at language_model.model"),
    ({"model_type": "llava", "text_config": {"model_type": "gpt2"}},
     "text model gpt2 (GPT2Model): decoder layer 0 (GPT2Block) has no gate_proj/up_proj/down_proj (its MLP "
     "modules: mlp (GPT2MLP), mlp.c_fc (Conv1D), mlp.c_proj (Conv1D))"),
    ({"model_type": "llava", "text_config": {"model_type": "phi3", "num_hidden_layers": 2}},
     "text model phi3 (Phi3Model): decoder layer 0 (Phi3DecoderLayer) has a fused gate_up_proj"),
])
def test_non_gated_text_model_is_one_line_error(tmp_path, config, expected):  # noqa: ANN001
    """Checked on a meta-device skeleton before the tokenizer or any weight is read (the folders have neither)."""
    write_config(tmp_path / "m", config)
    message = one_line_error(tmp_path / "m")
    assert message.startswith(expected)
    assert message.endswith("kneuron reads the input of down_proj in a gated MLP "
                            "down_proj(act(gate_proj(x)) * up_proj(x))")


def test_gated_text_model_passes_the_structure_check(tmp_path):  # noqa: ANN001
    """A Mistral text model is accepted: loading gets past the check to the (missing) tokenizer."""
    write_config(tmp_path / "m", {"model_type": "llava", "text_config": {"model_type": "mistral",
                                                                          "num_hidden_layers": 2}})
    assert "cannot load the tokenizer" in one_line_error(tmp_path / "m")


def test_broken_folders_are_one_line_errors(tmp_path):  # noqa: ANN001
    write_config(tmp_path / "noimg", {"model_type": "blip-2", "text_config": {"model_type": "llama"}})
    assert "image_token_index" in one_line_error(tmp_path / "noimg")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert "unreadable" in one_line_error(tmp_path / "bad")
    folder = save_hf_folder(tiny_hf_adapter("instructblip"), tmp_path / "ib")
    shutil.rmtree(folder / "qformer_tokenizer")
    assert "qformer_tokenizer" in one_line_error(folder)
    folder = save_hf_folder(tiny_hf_adapter("llava"), tmp_path / "llava")
    (folder / "model.safetensors").unlink()
    assert "weights" in one_line_error(folder)
    assert read_hf_config(folder)["model_type"] == "llava"


@pytest.mark.parametrize("family", ["blip-2", "instructblip"])
def test_qformer_image_connector(family: str) -> None:
    """`image_connector`: the vision tower and the LLM input embeddings of the image tokens, as the model makes
    them (InstructBLIP's Q-Former also reads the instruction)."""
    adapter = tiny_hf_adapter(family)
    connector = adapter.image_connector()
    assert connector.vision is adapter.model.vision_model
    prepared = adapter.prepare(varied_images(2))
    pixels = prepared.kwargs["pixel_values"]
    with torch.no_grad():
        tokens = connector.tokens(pixels, 2)
        extra = {k: v for k, v in prepared.kwargs.items() if k.startswith("qformer_")}
        assert bool(extra) == (family == "instructblip")
        expected = adapter.model.get_image_features(pixels, **extra).pooler_output
    assert tokens.shape == (2, N_QUERY, 64)
    torch.testing.assert_close(tokens, expected)


def test_llava_has_no_image_connector() -> None:
    adapter = tiny_hf_adapter("llava")
    with pytest.raises(KneuronError, match=r"^model 'tiny-random-llava' \(LLaVA, vision_feature_select_strategy="
                                           r"'default'\) has no Q-Former"):
        adapter.image_connector()

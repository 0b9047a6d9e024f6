"""LLM references (`kneuron.engine.models.llm`): shortcut, Hugging Face folder, GGUF file, hub id; frozen loading;
errors
are one line. A tiny LLaMA written here as a GGUF file (F32, llama.cpp's layout) loads through transformers' GGUF
path and computes what the original computes."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from kneuron.engine.errors import KneuronError
from kneuron.engine.models import llm as llm_module
from kneuron.engine.models.llm import (
    SHORTCUTS,
    load_llm,
    load_llm_tokenizer,
    plain_llama,
    resolve_llm,
    shortcut_installed,
)
from tests.helpers.tiny_llm import MISSING_SMOLLM2, chatml_tokenizer, hide_smollm2_package, save_tiny_llama

TEXTS = ["a red circle above a blue star on a striped background", "Describe this image in detail."]


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny", chatml_tokenizer(TEXTS))


def test_reference_forms(llm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_llm(str(llm_folder)).kind == "folder"
    assert resolve_llm("tiny", base=llm_folder.parent).location == str(llm_folder)  # relative to the model folder
    gguf = tmp_path / "m.GGUF"
    gguf.write_bytes(b"GGUF")
    assert resolve_llm(str(gguf)).kind == "gguf"
    from tests.helpers.hub_cache import add_to_hub_cache

    commit = add_to_hub_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", llm_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = resolve_llm("HuggingFaceTB/SmolLM2-135M-Instruct")  # the snapshot folder in the Hub cache
    assert (hub.kind, hub.ref) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub.location == str(tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / commit)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), r"^language model folder not found \(no config.json\): "),
    (lambda p: p.write_text("x"), r"^LLM file is not a GGUF file \(\*.gguf\): "),
    (lambda p: None, r"^language model not found: "),
])
def test_bad_references_are_one_line(make, message: str, tmp_path: Path) -> None:  # noqa: ANN001
    target = tmp_path / "thing"
    make(target)
    with pytest.raises(KneuronError, match=message):
        resolve_llm(str(target))
    with pytest.raises(KneuronError, match=r"^GGUF file not found: "):
        resolve_llm(str(tmp_path / "missing.gguf"))


def test_shortcut_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_smollm2_package(monkeypatch)
    with pytest.raises(KneuronError, match=MISSING_SMOLLM2):
        resolve_llm("smollm2")
    assert not shortcut_installed("smollm2")


def test_shortcut_finds_the_packaged_file_without_importing_it(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    (tmp_path / SHORTCUTS["smollm2"].file).write_bytes(b"GGUF")
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(llm_module.importlib.util, "find_spec", lambda name, *a: fake)
    source = resolve_llm("smollm2")
    assert (source.kind, source.template, source.ref) == ("gguf", "chatml", "smollm2")
    assert source.location == str(tmp_path / SHORTCUTS["smollm2"].file)


def test_folder_loads_frozen(llm_folder: Path) -> None:
    model = load_llm(resolve_llm(str(llm_folder)), torch.float32)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    tok = load_llm_tokenizer(resolve_llm(str(llm_folder)))
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_unloadable_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(KneuronError, match=r"^cannot load the language model .*bad"):
        load_llm(resolve_llm(str(tmp_path / "bad")))


def test_plain_copy_drops_quantisation_and_saves(llm_folder: Path, tmp_path: Path) -> None:
    model = LlamaForCausalLM.from_pretrained(llm_folder)
    model.config.quantization_config = {"quant_method": "gguf"}
    plain = plain_llama(model)
    assert "quantization_config" not in plain.config.to_dict()
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()  # still tied
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(plain(ids).logits, model(ids).logits)
    plain.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()


def test_gguf_file_loads_as_the_model_it_was_written_from(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the GGUF path needs the gguf package (the dev extra installs it)")
    from tests.helpers.tiny_llm import write_tiny_gguf

    original = write_tiny_gguf(tmp_path / "tiny.gguf")
    source = resolve_llm(str(tmp_path / "tiny.gguf"))
    model = load_llm(source, torch.float32)
    assert type(model) is LlamaForCausalLM and "quantization_config" not in model.config.to_dict()
    ids = torch.tensor([[1, 70, 80, 259, 2]])
    torch.testing.assert_close(model(ids).logits, original(ids).logits)
    tok = load_llm_tokenizer(source)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.convert_ids_to_tokens(tok("<|im_start|>user", add_special_tokens=False)["input_ids"])[0] == \
        "<|im_start|>"

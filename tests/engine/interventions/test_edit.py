"""`kneuron.engine.interventions.edit`: a neuron set erased or scaled in a model folder's ``down_proj`` weights, for
good.

The edited folder must caption exactly as the source with the suppression hook (erase) or with the units'
activations doubled (amplify), change only the edited tensors' bytes, load with kneuron and (HF folders) with
plain transformers, and refuse bad input with one `KneuronError` before writing anything.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.edit import EDIT_FILE, LLM_COPY, apply_edit, check_scale, edit_model, read_header
from kneuron.engine.models import load_model
from kneuron.engine.models.fingerprint import model_fingerprint
from kneuron.engine.models.minigpt4_adapter import SPEC_FILE, save_minigpt4
from tests.helpers.hf_tiny import save_hf_folder, tiny_adapter, varied_images

KINDS = ("minigpt4-qformer", "llava")
#: 5 units per layer of the 3-layer, 96-unit tiny models; zeroing them changes most greedy captions
NEURONS = {0: [3, 17, 40, 62, 90], 1: [5, 11, 48, 70, 95], 2: [0, 23, 31, 57, 81]}
TOKENS = 8  # new tokens per caption


def _save(kind: str, folder: Path) -> Path:
    adapter = tiny_adapter(kind)
    if kind.startswith("minigpt4"):
        return save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, folder)
    return save_hf_folder(adapter, folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny model folder per kind (MiniGPT-4 Q-Former, HF LLaVA)."""
    root = tmp_path_factory.mktemp("sources")
    return {kind: _save(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def images() -> list:
    return varied_images(4)


def _captions(adapter, images, neurons=None) -> list[list[int]]:  # noqa: ANN001
    return caption_images(adapter, images, neurons, max_new_tokens=TOKENS).token_ids


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _tensors(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    return {key: data[e.start:e.end] for key, e in read_header(path).items()}


def _header_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:8 + struct.unpack("<Q", data[:8])[0]]


# ---------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("kind", KINDS)
def test_erased_model_captions_as_the_suppression_hook(kind, sources, images, tmp_path) -> None:  # noqa: ANN001
    original = load_model(str(sources[kind]))
    plain = _captions(original, images)
    hooked = _captions(original, images, NEURONS)
    assert hooked != plain  # the set matters, so equality below is not vacuous

    result = edit_model(sources[kind], tmp_path / "erased", NEURONS)
    erased = load_model(str(result.out))
    assert _captions(erased, images) == hooked  # token for token
    for layer, units in NEURONS.items():
        weight = erased.down_proj_weight(layer)
        assert torch.equal(weight[:, units], torch.zeros(weight.shape[0], len(units)))
        others = [u for u in range(weight.shape[1]) if u not in units]
        assert torch.equal(weight[:, others], original.down_proj_weight(layer)[:, others])


@pytest.mark.parametrize("kind", KINDS)
def test_amplified_model_captions_as_a_doubling_hook(kind, sources, images, tmp_path) -> None:  # noqa: ANN001
    original = load_model(str(sources[kind]))
    plain = _captions(original, images)

    def doubling(units: list[int]):  # noqa: ANN202
        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            activation = args[0].clone()
            activation[..., units] = activation[..., units] * 2.0
            return (activation, *args[1:])
        return hook

    handles = [original.neuron_module(original.model, layer).register_forward_pre_hook(doubling(units))
               for layer, units in NEURONS.items()]
    try:
        doubled = _captions(original, images)
    finally:
        for handle in handles:
            handle.remove()
    assert doubled != plain

    result = edit_model(sources[kind], tmp_path / "amplified", NEURONS, scale=2.0)
    amplified = load_model(str(result.out))
    assert _captions(amplified, images) == doubled
    weight, before = amplified.down_proj_weight(1), original.down_proj_weight(1)
    assert torch.equal(weight[:, NEURONS[1]], before[:, NEURONS[1]] * 2)
    assert result.record["operation"] == "scale" and result.record["scale"] == 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_edited_tensors_change(kind, sources, tmp_path) -> None:  # noqa: ANN001
    source = sources[kind]
    result = edit_model(source, tmp_path / "erased", NEURONS)
    before, after = _files(source), _files(result.out)
    assert set(after) == set(before) | {EDIT_FILE}
    edited_keys = {t.entry.key for t in result.tensors}
    assert len(edited_keys) == len(NEURONS)
    for name, path in before.items():
        if not name.endswith(".safetensors"):
            assert after[name].read_bytes() == path.read_bytes(), name
            continue
        assert after[name].stat().st_size == path.stat().st_size
        assert _header_bytes(after[name]) == _header_bytes(path)  # same keys, dtypes, offsets, metadata
        old, new = _tensors(path), _tensors(after[name])
        for key in old:
            assert (new[key] == old[key]) == (key not in edited_keys), key  # bit-identical unless edited
    for tensor in result.tensors:  # the edited tensors: the units' columns zero, every other column unchanged
        old = torch.frombuffer(bytearray(_tensors(source / tensor.file)[tensor.entry.key]), dtype=torch.float32)
        new = torch.frombuffer(bytearray(_tensors(result.out / tensor.file)[tensor.entry.key]), dtype=torch.float32)
        old, new = old.view(tensor.entry.shape), new.view(tensor.entry.shape)
        others = [u for u in range(old.shape[1]) if u not in tensor.units]
        assert torch.equal(new[:, others], old[:, others]) and not new[:, tensor.units].any()
        assert tensor.units == NEURONS[tensor.layer]


@pytest.mark.parametrize("kind", KINDS)
def test_the_record_says_what_was_edited(kind, sources, tmp_path) -> None:  # noqa: ANN001
    import hashlib

    origin = {"set_id": "circle-two_stage", "run_id": "tiny-run", "concept": "circle", "method": "two_stage"}
    result = edit_model(sources[kind], tmp_path / "erased", NEURONS, origin=origin)
    record = json.loads((result.out / EDIT_FILE).read_text())
    assert record == result.record
    assert record["operation"] == "erase" and record["scale"] == 0.0 and record["format"] == 1
    assert record["neurons"] == [f"{layer}:{unit}" for layer, units in NEURONS.items() for unit in units]
    assert record["n_neurons"] == 15 and record["set"] == origin and record["previous"] == []
    assert record["source"]["model"] == str(sources[kind]) and record["source"]["path"] == str(sources[kind])
    assert record["source"]["fingerprint"] == model_fingerprint(load_model(str(sources[kind])))
    assert record["source"]["family"] == ("minigpt4" if kind.startswith("minigpt4") else "llava")
    assert record["fingerprint"] == model_fingerprint(load_model(str(result.out)))
    assert record["fingerprint"] != record["source"]["fingerprint"]  # the tiny models' fingerprint reads every value
    for tensor in record["tensors"]:
        entry = read_header(result.out / tensor["file"])[tensor["key"]]
        data = (result.out / tensor["file"]).read_bytes()
        assert hashlib.sha256(data[entry.start:entry.end]).hexdigest() == tensor["sha256_after"]
        assert tensor["units"] == NEURONS[tensor["layer"]] and tensor["dtype"] == "F32"
        assert tensor["key"].endswith(f"layers.{tensor['layer']}.mlp.down_proj.weight")

    again = edit_model(result.out, tmp_path / "twice", {0: [1]}, scale=0.5)  # an edit of an edit keeps the first
    assert again.record["previous"] == [{k: v for k, v in record.items() if k != "previous"}]
    assert again.record["source"]["fingerprint"] == record["fingerprint"]


def test_in_memory_edit_matches_the_folder(sources, tmp_path) -> None:  # noqa: ANN001
    adapter = load_model(str(sources["minigpt4-qformer"]))
    result = edit_model(sources["minigpt4-qformer"], tmp_path / "scaled", NEURONS, scale=-0.75, adapter=adapter)
    assert model_fingerprint(adapter) == result.record["source"]["fingerprint"]  # the given adapter is restored
    apply_edit(adapter, NEURONS, -0.75)
    assert model_fingerprint(adapter) == model_fingerprint(load_model(str(result.out))) == result.record["fingerprint"]


def test_hf_folder_loads_with_plain_transformers(sources, tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    result = edit_model(sources["llava"], tmp_path / "erased", NEURONS)
    plain = AutoModelForImageTextToText.from_pretrained(result.out)
    assert isinstance(plain, LlavaForConditionalGeneration)
    original = LlavaForConditionalGeneration.from_pretrained(sources["llava"])
    edited, before = plain.state_dict(), original.state_dict()
    assert edited.keys() == before.keys()
    names = {f"model.language_model.layers.{layer}.mlp.down_proj.weight": layer for layer in NEURONS}
    for name, value in edited.items():
        layer = names.get(name)
        if layer is None:
            assert torch.equal(value, before[name]), name
        else:
            assert not value[:, NEURONS[layer]].any()
            assert not torch.equal(value, before[name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["F16", "BF16"])
def test_half_precision_weights_are_scaled_in_their_dtype(dtype, tmp_path) -> None:  # noqa: ANN001
    adapter = tiny_adapter("minigpt4-qformer")
    source = save_minigpt4(adapter.model.to(dtype), adapter.tokenizer, adapter.spec, tmp_path / "half")
    result = edit_model(source, tmp_path / "scaled", NEURONS, scale=2.0)  # loaded in float32, edited in the file
    for tensor in result.tensors:
        old = _tensors(source / tensor.file)[tensor.entry.key]
        new = _tensors(result.out / tensor.file)[tensor.entry.key]
        old_t = torch.frombuffer(bytearray(old), dtype=dtype).view(tensor.entry.shape)
        new_t = torch.frombuffer(bytearray(new), dtype=dtype).view(tensor.entry.shape)
        assert torch.equal(new_t[:, tensor.units], old_t[:, tensor.units] * 2)
        assert tensor.entry.dtype == {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    assert result.record["fingerprint"] == model_fingerprint(load_model(str(result.out)))


def test_sharded_hf_checkpoint(images, tmp_path) -> None:  # noqa: ANN001
    from transformers import LlavaForConditionalGeneration

    adapter = tiny_adapter("llava")
    source = save_hf_folder(adapter, tmp_path / "sharded")
    for path in source.glob("*.safetensors"):
        path.unlink()
    adapter.model.save_pretrained(source, max_shard_size="100KB")
    assert len(list(source.glob("*.safetensors"))) > 3 and (source / "model.safetensors.index.json").is_file()
    hooked = _captions(load_model(str(source)), images, NEURONS)
    result = edit_model(source, tmp_path / "erased", NEURONS)
    assert _captions(load_model(str(result.out)), images) == hooked
    changed = {name for name, path in _files(source).items()
               if (result.out / name).read_bytes() != path.read_bytes()}
    assert changed == {t.file for t in result.tensors} and len(changed) >= 1
    plain = LlavaForConditionalGeneration.from_pretrained(result.out)
    assert not plain.model.language_model.layers[2].mlp.down_proj.weight[:, NEURONS[2]].any()


# ---------------------------------------------------------------------------------------------- MiniGPT-4 LLM folders
def _split_llm(tmp_path: Path, inside: bool) -> tuple[Path, Path]:
    """A tiny MiniGPT-4 folder whose LLM is a Hugging Face folder: ``language_model/`` inside it, or outside it
    (absolute ``llm_path``, as `kneuron convert` without ``--copy-llm`` writes)."""
    import dataclasses

    adapter = tiny_adapter("minigpt4-qformer")
    folder = tmp_path / "mg4"
    llm = folder / "language_model" if inside else tmp_path / "vicuna"
    adapter.model.language_model.save_pretrained(llm)
    spec = dataclasses.replace(adapter.spec, llm_path="language_model" if inside else str(llm))
    save_minigpt4(adapter.model, adapter.tokenizer, spec, folder, include_llm=False)
    return folder, llm


@pytest.mark.parametrize("inside", [True, False], ids=["llm-inside", "llm-outside"])
def test_minigpt4_with_an_llm_folder(inside, images, tmp_path) -> None:  # noqa: ANN001
    folder, llm = _split_llm(tmp_path, inside)
    original = load_model(str(folder))
    hooked = _captions(original, images, NEURONS)
    result = edit_model(folder, tmp_path / "erased", NEURONS)
    assert _captions(load_model(str(result.out)), images) == hooked
    spec_before = json.loads((folder / SPEC_FILE).read_text())
    spec_after = json.loads((result.out / SPEC_FILE).read_text())
    assert {t.file for t in result.tensors} == {"language_model/model.safetensors"}
    if inside:
        assert (result.out / SPEC_FILE).read_bytes() == (folder / SPEC_FILE).read_bytes()
        assert result.record["llm_copied_from"] is None
    else:  # the LLM is copied into OUT and the spec points at the copy; the source LLM is untouched
        assert spec_after == {**spec_before, "llm_path": LLM_COPY}
        assert result.record["llm_copied_from"] == str(llm.resolve())
        for name in ("config.json", "generation_config.json"):
            assert (result.out / LLM_COPY / name).read_bytes() == (llm / name).read_bytes()
    assert (result.out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert model_fingerprint(load_model(str(folder))) == result.record["source"]["fingerprint"]


# ---------------------------------------------------------------------------------------------- bad input
def _nothing_written(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before  # no OUT, no temporary folder left


@pytest.mark.parametrize("case, message", [
    ("nan", "--scale must be a finite number, got 'nan'"),
    ("inf", "--scale must be a finite number, got 'inf'"),
    ("outside", "neuron 3:0 is outside the model (3 layers x 96 units)"),
    ("unit", "neuron 0:96 is outside the model (3 layers x 96 units)"),
    ("empty", "no neurons to edit"),
    ("overflow", "--scale 1e+300 overflows float32 in layer 0's down_proj"),
    ("not-empty", "exists and is not empty (--force replaces it)"),
    ("file", "output path exists and is not a folder"),
    ("inside-source", "overlaps the model folder it edits"),
])
def test_bad_input_writes_nothing(case, message, sources, tmp_path) -> None:  # noqa: ANN001
    source = sources["minigpt4-qformer"]
    out = tmp_path / "out"
    neurons: dict[int, list[int]] = {0: [1]}
    scale: float | str = 0.0
    if case in ("nan", "inf"):
        scale = case
    elif case == "outside":
        neurons = {3: [0]}
    elif case == "unit":
        neurons = {0: [96]}
    elif case == "empty":
        neurons = {}
    elif case == "overflow":
        scale = 1e300
    elif case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "file":
        out.write_text("a file")
    elif case == "inside-source":
        out = source / "sub"
    parent_before = {p.name for p in out.parent.iterdir()}
    with pytest.raises(KneuronError) as info:
        edit_model(source, out, neurons, scale)  # type: ignore[arg-type]
    assert message in str(info.value) and "\n" not in str(info.value)
    _nothing_written(out.parent, parent_before)
    if case == "not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_force_replaces_a_folder_and_never_the_source(sources, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / EDIT_FILE).write_text('{"format": 1}')  # an earlier edit's output
    result = edit_model(sources["minigpt4-qformer"], out, {0: [1]}, force=True)
    assert not (out / "old.txt").exists() and (out / EDIT_FILE).is_file() and result.out == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    for target in (sources["minigpt4-qformer"], sources["minigpt4-qformer"].parent):
        with pytest.raises(KneuronError, match="overlaps the model folder it edits"):
            edit_model(sources["minigpt4-qformer"], target, {0: [1]}, force=True)


def test_weights_not_in_safetensors_are_refused(sources, tmp_path) -> None:  # noqa: ANN001
    adapter = load_model(str(sources["minigpt4-qformer"]))
    apply_edit(adapter, {0: [1]}, 0.5)  # the loaded weights no longer match the folder's
    with pytest.raises(KneuronError, match="no tensor in .*model.safetensors holds layer 0's down_proj weight"):
        edit_model(sources["minigpt4-qformer"], tmp_path / "out", {0: [1]}, adapter=adapter)
    assert not (tmp_path / "out").exists()


def test_check_scale() -> None:
    assert check_scale("2") == 2.0 and check_scale(0) == 0.0 and check_scale("-1.5") == -1.5
    for bad in ("abc", "nan", "-inf", float("inf"), None):
        with pytest.raises(KneuronError, match="--scale must be a finite number"):
            check_scale(bad)  # type: ignore[arg-type]

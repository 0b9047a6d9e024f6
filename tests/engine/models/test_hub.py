"""Hugging Face Hub ids (`kneuron.engine.models.hub`) for models, ``--llm`` and the API, offline: a Hub cache folder is
filled from a tiny saved LLaVA (`tests.helpers.hub_cache`) and every id resolves through huggingface_hub."""
from __future__ import annotations

from pathlib import Path

import pytest

import kneuron
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.hub import HubId, parse_hub_id
from tests.helpers.cli_runner import run_cli
from tests.helpers.hf_tiny import save_hf_folder, tiny_hf_adapter, varied_images
from tests.helpers.hub_cache import add_to_hub_cache

REPO = "tiny-org/tiny-llava"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(the model folder, the Hub cache holding it as REPO on main and on the branch v1, the commit)."""
    root = tmp_path_factory.mktemp("hub")
    folder = save_hf_folder(tiny_hf_adapter("llava", image_processor=True), root / "folder")
    cache = root / "cache"
    commit = add_to_hub_cache(cache, REPO, folder)
    add_to_hub_cache(cache, REPO, folder, commit=commit, branch="v1")
    return folder, cache, commit


@pytest.fixture()
def offline(saved: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(saved[1]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return saved[1]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    varied_images(1, seed=3)[0].save(path)
    return path


@pytest.mark.parametrize("text,parsed", [
    ("org/name", HubId("org/name")), ("llava-hf/llava-1.5-7b-hf@main", HubId("llava-hf/llava-1.5-7b-hf", "main")),
    ("org/name@0123abcd", HubId("org/name", "0123abcd")), ("./org/name", None), ("/abs/name", None),
    ("~/x", None), ("a/b/c", None), ("plain", None), ("org/name@", None)])
def test_hub_id_forms(text: str, parsed: HubId | None) -> None:
    assert parse_hub_id(text) == parsed


def test_a_cached_id_loads_the_same_model_as_its_folder(saved, offline: Path, image_file: Path) -> None:
    folder, _, commit = saved
    for ref in (REPO, f"{REPO}@main", f"{REPO}@v1", f"{REPO}@{commit}"):
        resolved = kneuron.resolve_model(ref)
        assert resolved == offline / "models--tiny-org--tiny-llava" / "snapshots" / commit
        assert sorted(p.name for p in resolved.iterdir()) == sorted(p.name for p in folder.iterdir())
    by_id = kneuron.load_model(REPO, device="cpu")
    by_folder = kneuron.load_model(str(folder), device="cpu")
    assert by_id.name == REPO
    assert kneuron.caption(by_id, [image_file]) == kneuron.caption(by_folder, [image_file])
    assert kneuron.caption(by_id, [image_file], suppress=[(0, 1), (2, 5)]) == \
        kneuron.caption(by_folder, [image_file], suppress={0: [1], 2: [5]})


def test_an_uncached_id_offline_is_one_line_naming_it_and_how_to_fetch_it(offline: Path) -> None:
    with pytest.raises(KneuronError) as caught:
        kneuron.load_model("tiny-org/absent@v2", device="cpu")
    assert str(caught.value) == (f"model tiny-org/absent@v2: not in the Hugging Face cache {offline} and "
                                 f"HF_HUB_OFFLINE is set; fetch it first: `hf download tiny-org/absent --revision v2` "
                                 f"(or `huggingface-cli download ...`) with network access")
    with pytest.raises(KneuronError, match=r"^model tiny-org/tiny-llava@nope: not in the Hugging Face cache"):
        kneuron.resolve_model(f"{REPO}@nope")  # a revision the cache does not hold


def test_the_cli_takes_hub_ids(offline: Path, image_file: Path, saved, capsys, tmp_path: Path,
                               report_world: Path) -> None:
    expected = kneuron.caption(kneuron.load_model(str(saved[0]), device="cpu"), [image_file])[0]
    capsys.readouterr()  # transformers' weight-loading bar
    code, out, err = run_cli(["caption", "--model", REPO, "--device", "cpu", str(image_file)], capsys)
    assert (code, out) == (0, f"{image_file}: {expected}\n")
    code, out, err = run_cli(["caption", "--model", "tiny-org/absent", str(image_file)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("kneuron: error: model tiny-org/absent: not in the Hugging Face cache")
    # ingest: a model that is not there fails before any warehouse folder is made
    code, _, err = run_cli(["ingest", "--model", "tiny-org/absent", "--warehouse", str(tmp_path / "wh"),
                            "--coco-root", str(report_world), "--concept", "circle", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "wh").exists()
    assert err.startswith("kneuron: error: model tiny-org/absent: not in the Hugging Face cache")


def test_llm_hub_ids_resolve_to_the_cached_snapshot(offline: Path, saved) -> None:
    from kneuron.engine.models.llm import resolve_llm

    source = resolve_llm(f"{REPO}@v1")
    assert (source.kind, source.ref) == ("hub", f"{REPO}@v1")
    assert source.location == str(offline / "models--tiny-org--tiny-llava" / "snapshots" / saved[2])
    with pytest.raises(KneuronError, match=r"^language model tiny-org/absent: not in the Hugging Face cache"):
        resolve_llm("tiny-org/absent")


def test_sd_model_hub_ids_pass_revision_and_cache_and_fail_in_one_line(offline: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    from kneuron.engine.inpaint.diffusion import DiffusionInpainter

    with pytest.raises(KneuronError) as caught:
        DiffusionInpainter(model="tiny-org/absent-sd@v1")._load()
    assert str(caught.value) == (f"inpainting pipeline tiny-org/absent-sd@v1: not in the Hugging Face cache {offline} "
                                 f"and HF_HUB_OFFLINE is set; fetch it first: `hf download tiny-org/absent-sd "
                                 f"--revision v1` (or `huggingface-cli download ...`) with network access")
    seen: dict[str, object] = {}

    class FakePipeline:
        def to(self, device: str) -> FakePipeline:
            return self

        def set_progress_bar_config(self, **kwargs: object) -> None:
            pass

    def fake(location: str, **kwargs: object) -> FakePipeline:
        seen.update(kwargs, location=location)
        return FakePipeline()

    monkeypatch.setattr(diffusers.AutoPipelineForInpainting, "from_pretrained", fake)
    DiffusionInpainter(model="tiny-org/sd@v1")._load()
    assert (seen["location"], seen["revision"], seen["cache_dir"], seen["local_files_only"]) == \
        ("tiny-org/sd", "v1", str(offline), True)

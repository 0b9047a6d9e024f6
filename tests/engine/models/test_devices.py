"""`kneuron.engine.models.resolve_device` (the ``--device`` check) and what `load_model` says while loading."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model, resolve_device
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from tests.helpers.tiny_models import tiny_minigpt4


def no_cuda(monkeypatch: pytest.MonkeyPatch, build: str | None = None) -> None:
    """Pretend this torch has no usable CUDA (``build`` None: a CPU-only build)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", build)


def gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def set_mps(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)


def test_auto_picks_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    no_cuda(monkeypatch)
    assert resolve_device("auto") == "cpu"
    gpus(monkeypatch, 1)
    assert resolve_device("auto") == "cuda"


def test_cpu_is_always_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    no_cuda(monkeypatch)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    with pytest.raises(KneuronError, match=r"^--device cpu:1: there is one CPU device; use --device cpu$"):
        resolve_device("cpu:1")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_cpu_only_torch_names_the_option(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    no_cuda(monkeypatch)
    with pytest.raises(KneuronError) as caught:
        resolve_device(device)
    assert str(caught.value) == (f"--device {device}: CUDA is not available (torch {torch.__version__}, a CPU-only "
                                 "build); use --device cpu or --device auto")


def test_cuda_build_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    no_cuda(monkeypatch, build="12.4")
    with pytest.raises(KneuronError, match=re.escape("--device cuda: CUDA is not available (torch "
                                                     f"{torch.__version__}, CUDA 12.4, no GPU visible)")):
        resolve_device("cuda")


def test_cuda_index_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(KneuronError) as caught:
        resolve_device("cuda:2")
    assert str(caught.value) == ("--device cuda:2: only 2 CUDA device(s) (cuda:0..cuda:1); "
                                 "use --device cuda or --device cuda:0")


def test_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    set_mps(monkeypatch, False)
    with pytest.raises(KneuronError) as caught:
        resolve_device("mps")
    assert str(caught.value) == (f"--device mps: the MPS backend is not available (torch {torch.__version__}); "
                                 "use --device cpu or --device auto")
    set_mps(monkeypatch, True)
    assert resolve_device("mps") == "mps"
    assert resolve_device("mps:0") == "mps"
    with pytest.raises(KneuronError, match="^--device mps:1: there is one MPS device; use --device mps$"):
        resolve_device("mps:1")


@pytest.mark.parametrize("device", ["tpu", "gpu", "CUDA", "cuda:x", "cuda:-1", ""])
def test_unknown_devices_list_the_accepted_values(device: str) -> None:
    with pytest.raises(KneuronError) as caught:
        resolve_device(device)
    assert str(caught.value) == f"unknown --device {device!r}; use one of auto, cpu, cuda, cuda:N, mps"


# ---------------------------------------------------------------------------------------------- load_model
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adapter = tiny_minigpt4("qformer")
    return save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path_factory.mktemp("m") / "tiny")


def test_load_model_checks_the_device_before_reading_weights(monkeypatch: pytest.MonkeyPatch,
                                                             model_dir: Path) -> None:
    from kneuron.engine.models import minigpt4_adapter

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights read before the device check")

    no_cuda(monkeypatch)
    monkeypatch.setattr(minigpt4_adapter, "load_minigpt4", never)
    lines: list[str] = []
    with pytest.raises(KneuronError, match=r"^--device cuda: CUDA is not available .* use --device cpu"):
        load_model(str(model_dir), device="cuda", log=lines.append)
    with pytest.raises(KneuronError, match=r"^unknown --device 'tpu'; use one of auto, cpu, cuda, cuda:N, mps$"):
        load_model(str(model_dir), device="tpu")
    assert lines == []  # nothing announced for a load that cannot start


def test_load_model_logs_before_and_after(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    no_cuda(monkeypatch)
    lines: list[str] = []
    adapter = load_model(str(model_dir), device="auto", dtype="float16", log=lines.append)
    assert adapter.dtype == torch.float16 and adapter.device.type == "cpu"
    assert len(lines) == 2
    assert lines[0] == f"loading model {model_dir} from {model_dir} (float16, cpu)"
    assert re.fullmatch(rf"loaded model {re.escape(str(model_dir))} in \d+\.\d s", lines[1])
    lines.clear()
    load_model(str(model_dir), log=lines.append)
    assert lines[0] == f"loading model {model_dir} from {model_dir} (checkpoint dtype, cpu)"
    load_model(str(model_dir), device="cpu", dtype=torch.bfloat16, log=lines.append)
    assert lines[2] == f"loading model {model_dir} from {model_dir} (bfloat16, cpu)"


def test_load_model_logs_bundled_names_and_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundled name is logged with the folder it resolves to (the loader itself is stubbed: no weights read)."""
    from kneuron.engine.models import BUNDLED_DIR, minigpt4_adapter

    calls: list[tuple[Path, str, object, str]] = []
    monkeypatch.setattr(minigpt4_adapter, "load_minigpt4",
                        lambda folder, device, dtype, name: calls.append((folder, device, dtype, name)) or "adapter")
    lines: list[str] = []
    assert load_model("tiny-shapes-patch", log=lines.append) == "adapter"
    folder = BUNDLED_DIR / "tiny-shapes-patch"
    assert calls == [(folder, "cpu", None, "tiny-shapes-patch")]
    assert lines[0] == f"loading model tiny-shapes-patch from {folder} (checkpoint dtype, cpu)"
    assert load_model("tiny-shapes-patch") == "adapter" and len(lines) == 2  # no log: nothing said

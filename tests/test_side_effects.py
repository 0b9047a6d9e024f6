"""Library code leaves the process as it found it: no print, no environment variable, global torch RNG or other
library's logger level changed except inside a restored context (`kneuron.engine.runtime.scoped`); no unused
dependency."""
from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest
import tomllib
import torch

from kneuron.engine.runtime import scoped

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("engine", "queries", "warehouse", "kneuron")
#: the modules allowed to touch process state: the restored contexts, and the thread policy's own restored context
ALLOWED = {"engine/runtime/scoped.py", "engine/runtime/threads.py"}


def library_files() -> list[Path]:
    return sorted(p for package in LIBRARY for p in (ROOT / package).rglob("*.py"))


def offences(path: Path) -> list[str]:
    """What ``path`` does that library code must not: print, write os.environ, seed torch's global RNG, set a
    logger's level."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name) and node.id == "print":
            found.append(f"print at line {node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target in ("os.environ.setdefault", "os.environ.update", "os.environ.pop", "os.putenv",
                          "torch.manual_seed", "torch.cuda.manual_seed_all", "np.random.seed", "random.seed") \
                    or node.func.attr == "setLevel":
                found.append(f"{target} at line {node.lineno}")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                    found.append(f"os.environ[...] = at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_change_no_process_state(path: Path) -> None:
    if str(path.relative_to(ROOT)) in ALLOWED:
        return
    assert offences(path) == []


def test_the_checker_sees_each_kind(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("import os, torch, logging\ndef f(log=print):\n    os.environ['A'] = '1'\n"
                      "    os.environ.setdefault('B', '1')\n    torch.manual_seed(0)\n"
                      "    logging.getLogger('x').setLevel(10)\n")
    assert sorted(o.split(" at ")[0] for o in offences(source)) == sorted([
        "print", "os.environ[...] =", "os.environ.setdefault", "torch.manual_seed", "logging.getLogger('x').setLevel"])


def test_restored_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNEURON_TEST_A", raising=False)
    monkeypatch.setenv("KNEURON_TEST_B", "mine")
    with scoped.environ(KNEURON_TEST_A="1", KNEURON_TEST_B="theirs"):
        assert (os.environ["KNEURON_TEST_A"], os.environ["KNEURON_TEST_B"]) == ("1", "mine")  # the user's wins
    assert "KNEURON_TEST_A" not in os.environ and os.environ["KNEURON_TEST_B"] == "mine"

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with scoped.seeded_torch(7):
        inside = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), inside)  # the same stream as a plain manual_seed

    logger = logging.getLogger("some.library")
    logger.setLevel(logging.INFO)
    with scoped.logger_level("some.library", logging.ERROR):
        assert logger.level == logging.ERROR
    assert logger.level == logging.INFO


def test_bertscore_loading_leaves_the_environment_and_progress_bars(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    import bert_score
    from transformers.utils import logging as hf_logging

    from kneuron.engine.eval.metrics import CaptionScorer, MetricConfig

    seen = {}

    class FakeScorer:
        def __init__(self, **kwargs: object) -> None:
            seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
            seen["bars"] = hf_logging.is_progress_bar_enabled()

    monkeypatch.setattr(bert_score, "BERTScorer", FakeScorer)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hf_logging.enable_progress_bar()
    scorer = CaptionScorer(MetricConfig(bertscore_model=str(tmp_path), bertscore_layers=2))
    scorer._bertscorer()
    assert seen == {"offline": "1", "bars": False}  # while loading: offline for a local folder, no bar
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert hf_logging.is_progress_bar_enabled()


def test_a_suppression_evaluation_leaves_torch_rng_as_it_was(tmp_path: Path) -> None:
    from kneuron.engine.eval.config import EvalConfig
    from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
    from tests.helpers.eval_fixtures import FAST, build_eval_world
    from tests.helpers.tiny_models import tiny_minigpt4

    world = build_eval_world(tmp_path)
    adapter = tiny_minigpt4()
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    run_evaluation(EvalConfig(methods=("two_stage",), concepts=("star",), metrics=FAST, max_images=2),
                   world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_no_unused_declared_dependency() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in declared if d.lower().startswith("tqdm")]

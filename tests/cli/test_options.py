"""One set of option names across the commands: old spellings as hidden aliases with a one-line deprecation note,
``--device auto`` everywhere, ``kneuron sql --list``, the model families of every ``--model`` help (and README)
from one table, and the CLI's stderr log handler with ``-q``/``-v``."""
from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any

import click
import pytest

from kneuron import warehouse
from kneuron.cli.main import COMMANDS
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.families import FAMILIES, model_types
from tests.helpers.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]


def note(old: str, new: str) -> str:
    return f"kneuron: note: {old} is deprecated; use {new} (the old spelling goes in the next release)\n"


@pytest.fixture()
def empty_warehouse(tmp_path: Path) -> Path:
    root = tmp_path / "wh"
    warehouse.Warehouse.open(root, create=True).close()
    return root


def capture(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, Any]:
    """Replace the API function ``kneuron.api_steps.<name>`` by one that records its arguments and stops."""
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, args=args)
        raise KneuronError("stopped")

    monkeypatch.setattr(f"kneuron.api_steps.{name}", fake)
    return seen


def test_sql_output_is_an_alias_of_out(empty_warehouse: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "r.csv"
    code, out, err = run_cli(["sql", "SELECT 1 AS x", "--format", "csv", "--output", str(target),
                              "--warehouse", str(empty_warehouse)], capsys)
    assert (code, out) == (0, "") and err == note("--output", "--out") + f"wrote 1 rows to {target}\n"
    assert target.read_text() == "x\n1\n"
    code, _, err = run_cli(["sql", "SELECT 1 AS x", "-o", str(target), "--output", str(tmp_path / "other.csv"),
                            "--warehouse", str(empty_warehouse)], capsys)
    assert code == 2 and err.endswith("kneuron: error: give one of --out and --output (its old spelling), not both\n")


def test_old_spellings_reach_the_same_parameters(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    seen = capture(monkeypatch, "ingest")
    code, _, err = run_cli(["ingest", "--run-id", "r1", "--data-root", str(tmp_path), "--no-progress"], capsys)
    assert code == 2 and err == (note("--run-id", "--run") + note("--data-root", "--coco-root")
                                 + "kneuron: error: stopped\n")
    assert (seen["run"], seen["coco_root"]) == ("r1", str(tmp_path))
    run_cli(["ingest", "--run", "r2", "--coco-root", str(tmp_path), "--no-progress"], capsys)
    assert (seen["run"], seen["coco_root"]) == ("r2", str(tmp_path))

    seen = capture(monkeypatch, "suppress")
    code, _, err = run_cli(["suppress", "--max-images", "3"], capsys)
    assert code == 2 and err == note("--max-images", "--images-per-concept") + "kneuron: error: stopped\n"
    assert seen["config"].max_images == 3
    run_cli(["suppress", "--images-per-concept", "5"], capsys)
    assert seen["config"].max_images == 5

    seen = capture(monkeypatch, "report")
    code, _, err = run_cli(["report", "--data-root", str(tmp_path), "-o", str(tmp_path / "rep")], capsys)
    assert code == 2 and err == note("--data-root", "--coco-root") + "kneuron: error: stopped\n"
    assert (seen["data_root"], seen["out"], seen["device"]) == (str(tmp_path), str(tmp_path / "rep"), "auto")


def test_old_toml_keys_warn_once_and_still_work(caplog: pytest.LogCaptureFixture) -> None:
    from kneuron.engine.eval.config import config_from_dict

    with caplog.at_level(logging.WARNING, logger="kneuron.engine.eval.config"):
        old = config_from_dict({"dataset_root": "/data/coco", "max_images": 4}, source="s.toml")
    assert [r.getMessage() for r in caplog.records] == [
        "s.toml: the key dataset_root is deprecated; use coco_root (the old key goes in the next release)",
        "s.toml: the key max_images is deprecated; use images_per_concept (the old key goes in the next release)"]
    assert config_from_dict({"coco_root": "/data/coco", "images_per_concept": 4}) == old
    with pytest.raises(KneuronError, match="^s.toml: give one of coco_root and its old spelling, not both$"):
        config_from_dict({"coco_root": "/a", "dataset_root": "/b"}, source="s.toml")


def _options(name: str) -> dict[str, click.Option]:
    command = importlib.import_module(COMMANDS[name][0]).command
    return {opt: param for param in command.params if isinstance(param, click.Option) for opt in param.opts}


def test_device_is_auto_everywhere_and_model_help_lists_every_family() -> None:
    with_device = [name for name in COMMANDS if "--device" in _options(name)]
    assert len(with_device) >= 9
    for name in with_device:
        option = _options(name)["--device"]
        default = option.default if isinstance(option.default, str) else None  # unset: the config's, else auto
        assert default in ("auto", None) and "auto" in (option.help or ""), name
    for name in COMMANDS:
        model = _options(name).get("--model")
        if model is not None and name not in ("edit",):
            assert all(family in (model.help or "") for family in FAMILIES), name
            assert "org/name[@revision]" in (model.help or ""), name


def test_models_readme_family_table_is_the_code_table() -> None:
    from kneuron.engine.models.hf_loader import SUPPORTED

    text = (ROOT / "engine" / "models" / "README.md").read_text(encoding="utf-8")  # the family table lives there
    table = text.split("| family (`model_type`)", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    in_readme = [kind for row in rows for kind in re.findall(r"`([a-z0-9_.-]+)`", row.split("|")[1])]
    assert sorted(in_readme) == sorted(model_types()) == sorted(SUPPORTED)
    assert len(rows) == len(FAMILIES)


def test_sql_list_shows_the_analyses_only(capsys) -> None:
    code, out, _ = run_cli(["sql", "--list"], capsys)
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names == ["concept_overlap", "evidence_gaps", "evidence_intervals", "evidence_paired",
                                   "generic_neurons", "layer_distribution", "massive_units", "mention_rates",
                                   "set_sizes"]
    assert "set_sizes           size of each stage of the current neuron sets, per run, concept and method.\n" in out


def test_one_stderr_line_per_record_and_quiet_verbose(empty_warehouse: Path, capsys) -> None:
    from kneuron.cli.logs import installed

    root = logging.getLogger()
    elsewhere = logging.StreamHandler()  # a root handler such as logging.basicConfig installs: not used meanwhile
    root.addHandler(elsewhere)
    try:
        with installed(logging.INFO):
            logging.getLogger("kneuron.engine.some.module").info("two\nlines")
            logging.getLogger("kneuron.warehouse.x").warning("careful")
            logging.getLogger("kneuron.queries.y").debug("hidden")
    finally:
        root.removeHandler(elsewhere)
    assert logging.getLogger("kneuron").propagate
    logging.getLogger("kneuron.engine.some.module").info("after: not shown")
    assert capsys.readouterr().err == "kneuron: two; lines\nkneuron: warning: careful\n"
    assert not [h for h in logging.getLogger("kneuron").handlers if type(h).__name__ == "EchoHandler"]

    sql = ["sql", "SELECT 1 AS x", "--warehouse", str(empty_warehouse), "--format", "csv"]
    code, out, err = run_cli(["-v", *sql], capsys)
    assert (code, out) == (0, "x\n1\n")
    assert re.fullmatch(r"kneuron: debug: kneuron\.api_warehouse: opened a DuckDB connection over .* \(0 batches\)\n",
                        err)
    assert run_cli(sql, capsys) == (0, "x\n1\n", "")
    assert run_cli(["-q", *sql], capsys) == (0, "x\n1\n", "")
    code, _, err = run_cli(["-q", "-v", *sql], capsys)
    assert code == 2 and "at most one of -q/--quiet and -v/--verbose" in err

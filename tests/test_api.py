"""The Python API (`kneuron`): README's "From Python" block runs as written on the embedded default, the commands
give the same tables as the functions for the same inputs, the warehouse handle keeps `kneuron sql`'s rules, and
``import kneuron`` stays light."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kneuron
from kneuron.engine.errors import KneuronError
from tests.helpers.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]


def readme_python_blocks() -> list[str]:
    """The ```python blocks of README's "## From Python" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """README's Python run in a fresh folder (the default warehouse and world are relative to it)."""
    folder = tmp_path_factory.mktemp("readme")
    before = Path.cwd()
    saved = {k: os.environ.pop(k) for k in ("KNEURON_WAREHOUSE", "KNEURON_WORLD") if k in os.environ}
    os.chdir(folder)
    namespace: dict[str, Any] = {}
    try:
        blocks = readme_python_blocks()
        assert blocks, "README has no python block under ## From Python"
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    finally:
        os.chdir(before)
        os.environ.update(saved)
    return folder, namespace


def test_import_kneuron_is_light_and_lists_its_names() -> None:
    code = ("import sys, kneuron; heavy = [m for m in ('torch', 'duckdb', 'transformers', 'pyarrow') if m in "
            "sys.modules]; assert not heavy, heavy; print(' '.join(kneuron.__all__))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    assert names == sorted(names) and {"open_warehouse", "ingest", "select", "suppress", "report", "load_model",
                                       "caption"} <= set(names)
    assert all(getattr(kneuron, name) is not None for name in names)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kneuron.nope  # noqa: B018
    assert (ROOT / "kneuron" / "py.typed").is_file()


def test_readme_block_runs_and_returns_ids_and_tables(readme_run) -> None:
    folder, ns = readme_run
    wh, run, sel, ev, rep = ns["wh"], ns["run"], ns["sel"], ns["ev"], ns["rep"]
    assert wh.runs().column("run_id").to_pylist() == [run.run_id]
    assert run.samples().to_pylist() == [{"concept": "circle", "status": "ok", "pairs": 4},
                                        {"concept": "square", "status": "ok", "pairs": 4}]
    assert sel.table.column("concept").to_pylist() == ["circle", "square"]
    current = wh.sql("SELECT set_id FROM current_sets WHERE method IN ('two_stage', 'stage1_only', 'stage2_only') "
                     "ORDER BY set_id").fetchall()
    assert sorted(sel.current) == [row[0] for row in current] and len(sel.current) == 6
    assert wh.evals().column("eval_id").to_pylist() == [ev.eval_id]
    assert ev.tables() and all(t.num_rows > 0 for t in ev.tables().values())
    assert rep.html == Path("kneuron-report", "report.html") and (folder / rep.html).is_file()
    assert ns["per_concept"].to_dict("list") == {"concept": ["circle", "square"], "pairs": [4, 4]}
    assert len(ns["plain"]) == len(ns["without_circle"]) == 2
    circle = wh.neuron_set(concept="circle", run=run.run_id)
    stored = wh.sql("SELECT layer, unit FROM current_sets c JOIN neuron_sets n USING (set_id) "
                    "WHERE c.concept = 'circle' AND c.method = 'two_stage'").fetchall()
    assert sorted(circle) == sorted(stored)


def _tables(root: Path) -> dict[str, list[tuple]]:
    """Every signal and result row of a warehouse, without the columns that record when or where it was made."""
    import duckdb

    from kneuron import queries

    con = queries.connect(root)
    try:
        out = {}
        for table, drop in (("samples", ()), ("neuron_stats", ()), ("token_stats", ()),
                            ("neuron_sets", ("created_at",)), ("splits", ()), ("captions", ()), ("scores", ())):
            columns = [f'"{c}"' for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in drop]
            out[table] = con.sql(f"SELECT {', '.join(columns)} FROM {table} ORDER BY ALL").fetchall()
        return out
    except duckdb.Error as exc:  # pragma: no cover - a failure message, not a branch
        raise AssertionError(str(exc)) from exc
    finally:
        con.close()


def test_the_commands_give_the_same_tables_as_the_functions(readme_run, capsys, tmp_path: Path) -> None:
    folder, ns = readme_run
    wh2 = tmp_path / "wh"
    world = folder / "kneuron-world"
    common = ["--warehouse", str(wh2)]
    code, out, err = run_cli(["ingest", "--coco-root", str(world), "--concept", "circle", "--concept", "square",
                              "--images-per-concept", "4", "--no-progress", *common], capsys)
    assert code == 0, err
    assert out.startswith(f"run {ns['run'].run_id}: 2 concept(s), 8 pair(s) recorded")
    assert run_cli(["select", *common], capsys)[0] == 0
    code, _, err = run_cli(["suppress", "--method", "two_stage", "--method", "random", "--images-per-concept", "2",
                            "--no-progress", *common, "--config", str(_fast_metrics(tmp_path))], capsys)
    assert code == 0, err
    mine, theirs = _tables(folder / "kneuron-warehouse"), _tables(wh2)
    for table in mine:
        assert mine[table] == theirs[table], table
    assert all(mine[t] for t in ("samples", "neuron_stats", "neuron_sets", "captions", "scores"))


def _fast_metrics(folder: Path) -> Path:
    path = folder / "fast.toml"
    path.write_text('[metrics]\nnames = ["bleu4", "rougeL"]\n')
    return path


def test_sql_and_query_follow_the_sql_command_rules(readme_run, capsys) -> None:
    folder, ns = readme_run
    wh = ns["wh"]
    with pytest.raises(KneuronError, match="^read-only SQL: refused"):
        wh.sql("CREATE TABLE t AS SELECT 1")
    with pytest.raises(KneuronError, match=r"^the SQL has no parameter \$other \(it has \$x\)$"):
        wh.sql("SELECT $x AS x", other=1)
    assert wh.sql("SELECT $x AS x").fetchall() == [(None,)]  # a parameter not given is NULL
    assert wh.sql("SELECT $x AS x", {"x": 3}).fetchall() == wh.sql("SELECT $x AS x", x=3).fetchall() == [(3,)]
    with pytest.raises(KneuronError, match="^SQL error: "):
        wh.sql("SELECT * FROM no_such_table")
    with pytest.raises(KneuronError, match=r"^query 'set_sizes' has no parameter \$nope"):
        wh.query("set_sizes", nope=1)
    api = wh.query("layer_distribution", method="two_stage").to_arrow_table()
    code, out, _ = run_cli(["sql", "-q", "layer_distribution", "-p", "method=two_stage", "--format", "csv",
                            "--warehouse", str(folder / "kneuron-warehouse")], capsys)
    from kneuron.cli.render import render_csv

    assert code == 0 and out == render_csv(api) and api.num_rows > 0


def test_open_warehouse_creates_nothing(tmp_path: Path) -> None:
    wh = kneuron.open_warehouse(tmp_path / "later")
    assert not wh.exists and not (tmp_path / "later").exists()
    with pytest.raises(KneuronError, match=f"^no kneuron warehouse at {re.escape(str(tmp_path / 'later'))}"):
        wh.sql("SELECT 1")
    assert not (tmp_path / "later").exists()
    with pytest.raises(KneuronError, match="^ingest: unknown option"):
        kneuron.ingest(wh, no_such_option=1)
    with pytest.raises(KneuronError, match="^say which set"):
        wh.neuron_set()

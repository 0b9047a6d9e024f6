"""A warehouse read from a URI through pyarrow's file systems (`kneuron.warehouse.remote`), tested with ``file://``:
every
view, the reader's methods, ``kneuron sql``/``ls``/``select`` give what the same directory gives as a path;
writing is refused on object storage (one line) and goes to the directory for ``file://``."""
from __future__ import annotations

from pathlib import Path

import pytest

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.queries.selection import SelectionConfig, run_selection
from kneuron.warehouse import TABLES, Warehouse, connect, open_warehouse
from kneuron.warehouse.compact import compact
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import build_warehouse, make_world
from tests.warehouse.test_compact import build

VIEWS = [*TABLES, "neuron_rollup_summed", "neuron_rollup_parts", "neuron_stats_unrolled", "neuron_means",
         "current_sets"]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    path = tmp_path / "my wh"
    build(path)
    return path


def uri(path: Path) -> str:
    return path.resolve().as_uri()  # file:///.../my%20wh


def every_view(location: str) -> dict[str, list]:
    con = queries.connect(location)
    return {view: con.sql(f'SELECT * FROM "{view}" ORDER BY ALL').fetchall() for view in VIEWS}


def test_every_view_reads_the_same_through_the_uri(root: Path) -> None:
    assert every_view(uri(root)) == every_view(str(root))
    compact(root, target_rows=25)  # also compacted files, and a samples view that needs the rows' order
    assert every_view(uri(root)) == every_view(str(root))
    con = connect(uri(root))
    with pytest.raises(Exception, match="disabled|Permission"):  # the read-only lock-down holds
        con.sql(f"SELECT * FROM read_parquet('{root}/runs/**/*.parquet')").fetchall()


def test_reader_methods_through_the_uri(root: Path) -> None:
    local, remote = Warehouse.open(root), open_warehouse(uri(root))
    assert repr(remote).startswith("Warehouse('file://") and not remote.writable
    assert remote.finished_pairs("run-1") == local.finished_pairs("run-1")
    for table in TABLES:
        assert remote.read(table).equals(local.read(table)), table
    assert [b.batch_id for b in remote.batches] == [b.batch_id for b in local.batches]
    remote.check_files()
    lost = root / local.batches[1].files[0].path
    lost.rename(lost.with_suffix(".aside"))
    with pytest.raises(KneuronError, match="is missing; run `kneuron verify --repair`"):
        open_warehouse(uri(root)).check_files()
    with pytest.raises(KneuronError, match="no kneuron warehouse at file://"):
        open_warehouse(uri(root.parent / "nowhere"))


def test_writers_on_object_storage_are_refused_and_file_uris_write_locally(tmp_path: Path, capsys) -> None:
    with pytest.raises(KneuronError, match="on object storage, which kneuron reads but does not write"):
        open_warehouse("s3://some-bucket/wh", create=True)
    stats, samples = make_world(seed=2, n_images=4, n_layers=2, n_units=12)
    path = tmp_path / "wh"
    build_warehouse(path, stats, samples)
    expected = run_selection(queries.connect(path), SelectionConfig(run_id="r1"))
    code, out, err = run_cli(["select", "--warehouse", uri(path), "--run", "r1"], capsys)
    assert code == 0, err
    stored = queries.connect(path).sql("SELECT DISTINCT set_id FROM neuron_sets ORDER BY 1").fetchall()
    assert [row[0] for row in stored] == sorted(set(expected.neuron_sets.column("set_id").to_pylist()))
    code, out, _ = run_cli(["sql", "--warehouse", uri(path), "--format", "csv",
                            "SELECT run_id, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1"], capsys)
    assert code == 0 and out.splitlines()[0] == "run_id,n" and len(out.splitlines()) == 3
    code, out, _ = run_cli(["ls", "runs", "--warehouse", uri(path)], capsys)
    assert code == 0 and "r1" in out and "r2" in out
    code, _, err = run_cli(["sql", "--warehouse", "s3x://bucket/wh", "SELECT 1"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_warehouse_open_takes_directories_only(tmp_path: Path) -> None:
    """URIs go through `open_warehouse` (the one dispatch), so `Warehouse.open` never needs the remote reader."""
    expected = r"^warehouse file:///x is a URI: open it with kneuron.warehouse.open_warehouse$"
    with pytest.raises(KneuronError, match=expected):
        Warehouse.open("file:///x")

"""The persisted neuron warehouse: schema, atomic batches, single writer, resume, DuckDB views."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kneuron.engine.errors import KneuronError
from kneuron.warehouse import TABLES, Warehouse, conform, connect, default_warehouse_path, table_paths
from kneuron.warehouse.layout import MANIFEST_DIR
from kneuron.warehouse.schema import VIEW_EXTRA_COLUMNS
from tests.helpers.warehouse_rows import (
    D_FF,
    N_LAYERS,
    RUN,
    all_table_rows,
    neuron_rows,
    run_row,
    sample_rows,
)

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- row builders (tiny, deterministic)








def view_rows(con: duckdb.DuckDBPyConnection, table: str, columns: list[str] | None = None) -> list[dict]:
    """Rows of a view (stored columns unless given), cast back to the table schema, in a total order."""
    spec = TABLES[table]
    columns = columns or spec.columns
    quoted = ", ".join(f'"{c}"' for c in columns)
    result = con.sql(f'SELECT {quoted} FROM "{table}" ORDER BY {quoted}').to_arrow_table()
    if columns == spec.columns:
        result = result.cast(spec.schema)
    return result.to_pylist()


def sorted_rows(table: pa.Table | list[dict]) -> list[dict]:
    """Rows in a total order that does not depend on the order they were stored in."""
    return sorted(table.to_pylist() if isinstance(table, pa.Table) else table, key=repr)


def writer(path: Path) -> Warehouse:
    return Warehouse.open(path, create=True)


def data_files(root: Path) -> list[str]:
    """Every Parquet or temp file the writer can have made under the table directories."""
    return sorted(p.relative_to(root).as_posix() for table in TABLES for p in (root / table).rglob("*")
                  if p.is_file())


# ---------------------------------------------------------------------- round trip
def test_every_table_round_trips_through_reader_and_views(tmp_path: Path) -> None:
    rows = all_table_rows()
    with writer(tmp_path / "wh") as wh, wh.batch() as batch:
        for table, data in rows.items():
            batch.add(table, data)
    assert set(rows) == set(TABLES)

    reader = Warehouse.open(tmp_path / "wh")
    con = connect(tmp_path / "wh")
    for table, data in rows.items():
        expected = sorted_rows(conform(table, data))
        assert sorted_rows(reader.read(table)) == expected, table
        assert sorted_rows(view_rows(con, table)) == expected, table
    # values really are narrowed: float16 rounding is what comes back
    stored = reader.read("neuron_stats")
    assert stored.schema.field("o_mean").type == pa.float16()
    np.testing.assert_array_equal(stored.column("o_mean").to_numpy(),
                                  rows["neuron_stats"]["o_mean"].astype(np.float16))
    assert reader.runs() == conform("runs", rows["runs"]).to_pylist()


def test_neuron_stats_view_adds_d_mean_and_files_are_sorted(tmp_path: Path) -> None:
    data = neuron_rows("dog", 5, seed=3)
    shuffle = np.random.default_rng(0).permutation(N_LAYERS * D_FF)
    with writer(tmp_path / "wh") as wh, wh.batch() as batch:
        batch.add("runs", run_row())
        batch.add("neuron_stats", {name: np.asarray(values)[shuffle] for name, values in data.items()})
    (path,) = table_paths(tmp_path / "wh", "neuron_stats")
    stored = pq.ParquetFile(path).read()
    keys = list(zip(*(stored.column(c).to_pylist() for c in ("image_id", "layer", "unit")), strict=True))
    assert keys == sorted(keys)

    con = connect(tmp_path / "wh")
    got = con.execute("SELECT o_mean, i_mean, d_mean, typeof(d_mean) FROM neuron_stats "
                      "ORDER BY layer, unit").fetchall()
    o16, i16 = (np.asarray(data[c]).astype(np.float16) for c in ("o_mean", "i_mean"))
    expected = o16.astype(np.float32) - i16.astype(np.float32)
    np.testing.assert_array_equal(np.array([row[2] for row in got], dtype=np.float32), expected)
    assert {row[3] for row in got} == {"FLOAT"}


# ---------------------------------------------------------------------- atomicity and crashes
def test_exception_inside_batch_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
        with pytest.raises(RuntimeError, match="boom"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [1, 2]))
                batch.add("neuron_stats", neuron_rows("dog", 1, seed=0))
                raise RuntimeError("boom")
        assert data_files(root) == [p for p in data_files(root) if p.startswith("runs/")]
        assert wh.finished_pairs(RUN) == set()
        assert len(os.listdir(root / MANIFEST_DIR)) == 1
        # the writer goes on normally, and the same pairs can still be written
        with wh.batch() as batch:
            batch.add("samples", sample_rows("dog", [1, 2]))
        assert wh.finished_pairs(RUN) == {("dog", 1), ("dog", 2)}
    con = connect(root)
    assert con.execute("SELECT count(*) FROM neuron_stats").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM samples").fetchall() == [(2,)]


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import kneuron.warehouse.batch
    from kneuron.warehouse import Warehouse
    sys.path.insert(0, os.path.dirname({test_file!r}))
    from test_store import neuron_rows, sample_rows
    wh = Warehouse.open({root!r}, create=True)
    kneuron.warehouse.batch.write_record = lambda *args: os._exit(9)   # die where the commit record would be written
    with wh.batch() as batch:
        batch.add("samples", sample_rows("dog", [7]))
        batch.add("neuron_stats", neuron_rows("dog", 7, seed=0))
""")


def test_crash_before_commit_record_is_invisible_and_collected(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh, wh.batch() as batch:
        batch.add("runs", run_row())
    # a writer process that dies (like kill -9) after renaming its files, before its commit record
    script = CRASH_SCRIPT.format(test_file=__file__, root=str(root))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    orphans = [p for p in data_files(root) if not p.startswith("runs/")]
    assert len(orphans) == 2 and all(p.endswith(".parquet") for p in orphans)
    # plus a half-written temp file of another batch
    stray = (root / "neuron_stats" / "run_id=run-1" / "concept=cat"
             / ".part-20250101T000000000000Z-0a0b0c0d-0000.parquet.tmp")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"PAR1 half")

    reader = Warehouse.open(root)
    assert reader.finished_pairs(RUN) == set()
    con = connect(root)
    assert con.execute("SELECT count(*) FROM samples").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM neuron_stats").fetchall() == [(0,)]

    with writer(root) as wh:  # the lock died with the crashed process; opening collects its files
        assert sorted(p.relative_to(root).as_posix() for p in wh.garbage_collected) == sorted(
            orphans + [stray.relative_to(root).as_posix()])
    assert [p for p in data_files(root) if not p.startswith("runs/")] == []
    assert not (root / "neuron_stats").exists() or not any((root / "neuron_stats").iterdir())


# ---------------------------------------------------------------------- single writer
def test_second_writer_in_same_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    first = writer(root)
    with pytest.raises(KneuronError) as refused:
        writer(root)
    message = str(refused.value)
    assert message == f"warehouse {root.absolute()} is being written by another process (pid {os.getpid()})"
    assert "\n" not in message
    Warehouse.open(root)  # readers need no lock
    first.close()
    writer(root).close()  # free again once the first writer is closed


def test_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    script = textwrap.dedent(f"""
        from kneuron.engine.errors import KneuronError
        from kneuron.warehouse import Warehouse
        try:
            Warehouse.open({str(root)!r}, create=True)
        except KneuronError as exc:
            print(exc)
            raise SystemExit(2)
    """)
    with writer(root) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == f"warehouse {root} is being written by another process (pid {os.getpid()})\n"
    assert Warehouse.open(root).run_ids() == {RUN}  # the refused writer changed nothing


def test_reader_cannot_open_a_batch(tmp_path: Path) -> None:
    writer(tmp_path / "wh").close()
    with pytest.raises(KneuronError, match="read-only"):
        Warehouse.open(tmp_path / "wh").batch()


# ---------------------------------------------------------------------- opening errors
def test_version_mismatch_and_foreign_directories(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    writer(root).close()
    (root / "warehouse.json").write_text(json.dumps({"format": "kneuron-warehouse", "schema_version": 2}))
    for create in (False, True):
        with pytest.raises(KneuronError, match=r"has schema_version 2; this kneuron reads schema_version 1"):
            Warehouse.open(root, create=create)
    with pytest.raises(KneuronError, match="schema_version 2"):
        connect(root)

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    for create in (False, True):
        with pytest.raises(KneuronError, match=r"photos is not .*a kneuron warehouse"):
            Warehouse.open(foreign, create=create)
    assert sorted(os.listdir(foreign)) == ["cat.jpg"]  # nothing written into it

    with pytest.raises(KneuronError, match="no kneuron warehouse at .*missing"):
        Warehouse.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KneuronError, match="empty directory"):
        Warehouse.open(tmp_path / "empty")
    writer(tmp_path / "empty").close()  # an empty directory can become a warehouse
    assert json.loads((tmp_path / "empty" / "warehouse.json").read_text()) == {
        "format": "kneuron-warehouse", "schema_version": 1}


def test_default_path_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KNEURON_WAREHOUSE", raising=False)
    assert default_warehouse_path() == Path("kneuron-warehouse")
    monkeypatch.setenv("KNEURON_WAREHOUSE", str(tmp_path / "elsewhere"))
    assert default_warehouse_path() == tmp_path / "elsewhere"
    with Warehouse.open(create=True) as wh:
        assert wh.root == tmp_path / "elsewhere"


# ---------------------------------------------------------------------- partition paths
ODD_CONCEPTS = ["traffic light", "a/b=c%d", "crème brûlée", "it's"]


def test_concept_names_with_spaces_and_symbols(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh, wh.batch() as batch:
        batch.add("runs", run_row())
        for n, concept in enumerate(ODD_CONCEPTS):
            batch.add("samples", sample_rows(concept, [n]))
            batch.add("neuron_stats", neuron_rows(concept, n, seed=n))
    dirs = sorted(p.name for p in (root / "neuron_stats" / f"run_id={RUN}").iterdir())
    assert dirs == sorted(["concept=traffic%20light", "concept=a%2Fb%3Dc%25d", "concept=cr%C3%A8me%20br%C3%BBl%C3%A9e",
                           "concept=it%27s"])
    con = connect(root)
    assert con.sql("SELECT concept, count(*) FROM neuron_stats GROUP BY ALL ORDER BY ALL").fetchall() == sorted(
        (c, N_LAYERS * D_FF) for c in ODD_CONCEPTS)
    assert con.execute("SELECT image_id FROM samples WHERE concept = ?", ["traffic light"]).fetchall() == [(0,)]
    assert Warehouse.open(root).finished_pairs(RUN) == {(c, n) for n, c in enumerate(ODD_CONCEPTS)}


@pytest.mark.parametrize("hive", [True, False])
def test_hive_glob_is_readable_by_plain_duckdb(tmp_path: Path, hive: bool) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh, wh.batch() as batch:
        batch.add("runs", run_row())
        for n, concept in enumerate(ODD_CONCEPTS):
            batch.add("neuron_stats", neuron_rows(concept, n, seed=n))
    plain = duckdb.connect()
    glob = str(root / "neuron_stats" / "**" / "*.parquet")
    got = plain.execute(
        "SELECT run_id, concept, image_id, layer, unit, o_mean, typeof(run_id), typeof(concept) "
        f"FROM read_parquet(?, hive_partitioning = {str(hive).lower()}) ORDER BY ALL", [glob]).fetchall()
    expected = connect(root).sql("SELECT run_id, concept, image_id, layer, unit, o_mean, 'VARCHAR', 'VARCHAR' "
                                 "FROM neuron_stats ORDER BY ALL").fetchall()
    assert got == expected and len(got) == len(ODD_CONCEPTS) * N_LAYERS * D_FF


# ---------------------------------------------------------------------- resume support and integrity
def test_finished_pairs_and_duplicate_refusal(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh:
        reader = Warehouse.open(root)
        with wh.batch() as batch:
            batch.add("runs", run_row())
            batch.add("runs", run_row("run-2"))
            batch.add("samples", sample_rows("dog", [1, 2, 3], skipped=3))
            batch.add("samples", sample_rows("dog", [1], run_id="run-2"))
        with wh.batch() as batch:
            batch.add("samples", sample_rows("traffic light", [2]))
        assert wh.finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("dog", 3), ("traffic light", 2)}
        assert reader.finished_pairs(RUN) == wh.finished_pairs(RUN)  # a reader picks up later commits
        assert wh.finished_pairs("run-2") == {("dog", 1)}
        assert wh.finished_pairs("run-3") == set()
        assert [row["run_id"] for row in wh.runs()] == [RUN, "run-2"]

        with pytest.raises(KneuronError, match=r"samples: run_id 'run-1', concept 'dog', image_id 2 is already "
                                               r"in the warehouse"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [4, 2]))
        with pytest.raises(KneuronError, match="is already in this batch"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("cat", [4]))
                batch.add("samples", sample_rows("cat", [4]))
        with pytest.raises(KneuronError, match="duplicate rows for run_id 'run-1', concept 'cat', image_id 5"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("cat", [5, 5]))
        with pytest.raises(KneuronError, match="runs: run_id 'run-2' is already in the warehouse"):
            with wh.batch() as batch:
                batch.add("runs", run_row("run-2"))
        with pytest.raises(KneuronError, match="neuron_stats: run 'run-9' is not in the warehouse"):
            with wh.batch() as batch:
                batch.add("neuron_stats", neuron_rows("dog", 1, seed=0, run_id="run-9"))
        with pytest.raises(KneuronError, match="run_id 'bad run' must be"):
            with wh.batch() as batch:
                batch.add("runs", run_row("bad run"))
        sets = all_table_rows()["neuron_sets"]
        with wh.batch() as batch:  # one set may be added in several pieces of one batch ...
            batch.add("neuron_sets", sets)
            batch.add("neuron_sets", {**sets, "concept": ["cat"] * 2})
        with pytest.raises(KneuronError, match="neuron_sets: set_id 'set-a' is already in the warehouse"):
            with wh.batch() as batch:  # ... but not in a later batch
                batch.add("neuron_sets", sets)
        assert wh.finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("dog", 3), ("traffic light", 2)}
    assert connect(root).execute("SELECT count(*) FROM neuron_sets").fetchall() == [(4,)]


# ---------------------------------------------------------------------- schema validation
@pytest.mark.parametrize(("table", "change", "message"), [
    ("samples", {"image": [1]}, r"unknown columns \['image'\]"),
    ("samples", {"drop": "file_name"}, r"missing columns \['file_name'\]"),
    ("neuron_stats", {"unit": np.full(N_LAYERS * D_FF, 40000)}, r"column 'unit' does not fit type int16"),
    ("samples", {"status": ["done"]}, r"column 'status' has value 'done'; allowed: \['ok', 'skipped'\]"),
    ("samples", {"skip_reason": ["why"]}, r"skip_reason must be null when status is 'ok'"),
    ("samples", {"file_name": [None]}, r"nulls in non-nullable columns \['file_name'\]"),
    ("samples", {"mask_area": [1, 2]}, r"columns have different lengths"),
    ("nope", {}, r"unknown warehouse table 'nope'"),
])
def test_conform_names_the_bad_columns(table: str, change: dict, message: str) -> None:
    data = dict(neuron_rows("dog", 1, seed=0) if table == "neuron_stats" else sample_rows("dog", [1]))
    if "drop" in change:
        del data[change.pop("drop")]
    data.update(change)
    with pytest.raises(KneuronError, match=message):
        conform(table, data)


def test_conform_fills_left_out_nullable_columns() -> None:
    data = sample_rows("dog", [1, 2])
    for name in ("caption_inpainted", "target_token_id", "skip_reason"):
        del data[name]
    table = conform("samples", data)
    assert table.schema == TABLES["samples"].schema
    assert table.column("target_token_id").null_count == 2


# ---------------------------------------------------------------------- DuckDB connection
def test_views_on_an_empty_warehouse_have_the_columns_and_types_of_filled_ones(tmp_path: Path) -> None:
    writer(tmp_path / "empty").close()
    with writer(tmp_path / "full") as wh, wh.batch() as batch:
        for table, data in all_table_rows().items():
            batch.add(table, data)
    empty, full = connect(tmp_path / "empty"), connect(tmp_path / "full")
    for table in TABLES:
        assert empty.execute(f'SELECT count(*) FROM "{table}"').fetchall() == [(0,)]
        described = empty.sql(f'DESCRIBE "{table}"').fetchall()
        assert described == full.sql(f'DESCRIBE "{table}"').fetchall(), table
        extra = list(VIEW_EXTRA_COLUMNS.get(table, {}))
        assert [row[0] for row in described] == TABLES[table].columns + extra


def test_set_choices_view_of_a_warehouse_written_before_the_table_existed(tmp_path: Path) -> None:
    root = tmp_path / "old"
    with writer(root) as wh, wh.batch() as batch:
        for table, data in all_table_rows().items():
            if table != "set_choices":
                batch.add(table, data)
    assert not (root / "set_choices").exists()
    con = connect(root)
    assert con.execute("SELECT count(*) FROM set_choices").fetchall() == [(0,)]
    assert [row[:2] for row in con.sql("DESCRIBE set_choices").fetchall()] == [
        ("run_id", "VARCHAR"), ("concept", "VARCHAR"), ("method", "VARCHAR"), ("set_id", "VARCHAR"),
        ("chosen_at", "TIMESTAMP WITH TIME ZONE")]
    with writer(root) as wh, wh.batch() as batch:  # the old warehouse takes the new table's rows
        batch.add("set_choices", all_table_rows()["set_choices"])
    assert sorted(p.relative_to(root).as_posix().rsplit("/", 1)[0] for p in (root / "set_choices").rglob("*.parquet")) \
        == ["set_choices/run_id=run-1/concept=dog", "set_choices/run_id=run-1/concept=traffic%20light"]
    assert connect(root).execute("SELECT set_id FROM set_choices ORDER BY chosen_at").fetchall() == [
        ("set-a",), ("set-b",)]


def test_read_only_connection_cannot_touch_files(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with writer(root) as wh, wh.batch() as batch:
        batch.add("runs", run_row())
        batch.add("neuron_stats", neuron_rows("dog", 1, seed=0))
    (committed,) = table_paths(root, "neuron_stats")
    assert os.stat(committed).st_mode & 0o777 == 0o444  # committed files are read-only on disk

    con = connect(root)
    assert con.execute("SELECT count(*) FROM neuron_stats").fetchall() == [(N_LAYERS * D_FF,)]
    refused = [
        f"COPY (SELECT 1 AS a) TO '{root}/neuron_stats/evil.parquet'",
        f"COPY (SELECT 1 AS a) TO '{committed}'",
        f"SELECT * FROM read_csv('{outside}')",
        f"ATTACH '{root}/evil.duckdb'",
        "SET enable_external_access = true",
        f"SET allowed_directories = ['{tmp_path}/']",
    ]
    for statement in refused:
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    assert not (root / "neuron_stats" / "evil.parquet").exists() and not (root / "evil.duckdb").exists()
    assert con.execute("SELECT count(*) FROM neuron_stats").fetchall() == [(N_LAYERS * D_FF,)]

    writable = connect(root, read_only=False)
    writable.execute(f"COPY (SELECT concept, count(*) AS n FROM neuron_stats GROUP BY concept) TO "
                     f"'{tmp_path / 'out.csv'}' (HEADER)")
    assert (tmp_path / "out.csv").read_text() == f"concept,n\ndog,{N_LAYERS * D_FF}\n"


def test_connection_sees_only_what_was_committed_when_it_was_made(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with writer(root) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
            batch.add("samples", sample_rows("dog", [1]))
        before = connect(wh)  # an open writer can be handed in too
        with wh.batch() as batch:
            batch.add("samples", sample_rows("dog", [2]))
    assert before.sql("SELECT image_id FROM samples").fetchall() == [(1,)]
    assert connect(root).sql("SELECT image_id FROM samples ORDER BY 1").fetchall() == [(1,), (2,)]
    assert [Path(p).name.startswith("part-") for p in table_paths(root, "samples")] == [True, True]


def test_a_skipped_sample_may_be_superseded_and_the_view_shows_the_latest(tmp_path: Path) -> None:
    """A skipped samples row may be followed by a later row of the same pair (the pair recorded again); an ok
    row may not. The view shows one row per pair: the ok one, else the latest skipped one."""
    root = tmp_path / "wh"
    with writer(root) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
            batch.add("samples", sample_rows("dog", [1, 2], skipped=2))
        with wh.batch() as batch:  # skipped again, for another reason: allowed, and this one is shown
            rows = sample_rows("dog", [2], skipped=2)
            rows["skip_reason"] = ["image file not found"]
            batch.add("samples", rows)
        with pytest.raises(KneuronError, match=r"samples: .*dog.*1.* is already in the warehouse"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [1]))  # an ok row is never superseded
        con = connect(root)
        assert view_rows(con, "samples", ["image_id", "status", "skip_reason"]) == [
            {"image_id": 1, "status": "ok", "skip_reason": None},
            {"image_id": 2, "status": "skipped", "skip_reason": "image file not found"}]
        with wh.batch() as batch:
            batch.add("samples", sample_rows("dog", [2]))  # now recorded
        with pytest.raises(KneuronError, match="is already in the warehouse"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [2], skipped=2))  # the ok row stays
    assert view_rows(connect(root), "samples", ["image_id", "status"]) == [
        {"image_id": 1, "status": "ok"}, {"image_id": 2, "status": "ok"}]
    assert Warehouse.open(root).read("samples").num_rows == 4  # the raw files keep every row


def test_label_views_give_the_budget_and_the_base_method(tmp_path: Path) -> None:
    rows = all_table_rows()
    rows["captions"]["method"] = ["unmodified", "two_stage@16"]
    with writer(tmp_path / "wh") as wh, wh.batch() as batch:
        batch.add("runs", rows["runs"])
        batch.add("captions", rows["captions"])
    con = connect(tmp_path / "wh")
    assert con.sql("SELECT method, budget, base_method FROM captions ORDER BY method").fetchall() == [
        ("two_stage@16", 16, "two_stage"), ("unmodified", None, "unmodified")]

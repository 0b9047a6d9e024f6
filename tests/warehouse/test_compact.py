"""`kneuron compact` (`kneuron.warehouse.compact`): the same rows and query results before and after, one commit record
instead of many, `kneuron verify` clean after; a crash (a process killed with os._exit) at every step leaves a
valid warehouse that the next writer tidies; a failed write (full disk) or a damaged source file changes
nothing; readers never see a half-compacted table, also while records vanish under them."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kneuron.warehouse.manifest
from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.warehouse import TABLES, Warehouse, rollup_rows, verify_warehouse
from kneuron.warehouse.compact import compact
from kneuron.warehouse.layout import MANIFEST_DIR
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import RUN, neuron_rows, run_row, sample_rows

REPO = Path(__file__).resolve().parents[2]


def build(root: Path, *, old_concept: bool = True) -> None:
    """Ten small batches: a run, dog images 1-6 one per batch (with their rollup), a skipped cat image recorded
    again (skipped again, then ok), a neuron set and its choice; optionally a "horse" partition written without
    rollup (an old warehouse's)."""
    with Warehouse.open(root, create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
            batch.add("splits", {"run_id": [RUN] * 3, "concept": ["dog", "dog", "cat"], "image_id": [1, 9, 7],
                                 "split": ["ident", "eval", "ident"]})
        for image in range(1, 7):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [image]))
                stats = pa.table(neuron_rows("dog", image, seed=image))
                batch.add("neuron_stats", stats)
                batch.add("neuron_rollup", rollup_rows(stats))
        for reason in ("empty mask", "image file not found"):
            with wh.batch() as batch:
                rows = sample_rows("cat", [7], skipped=7)
                rows["skip_reason"] = [reason]
                batch.add("samples", rows)
        with wh.batch() as batch:
            batch.add("samples", sample_rows("cat", [7]))
            stats = pa.table(neuron_rows("cat", 7, seed=70))
            batch.add("neuron_stats", stats)
            batch.add("neuron_rollup", rollup_rows(stats))
        if old_concept:
            for image in (11, 12):
                with wh.batch() as batch:
                    batch.add("samples", sample_rows("horse", [image]))
                    batch.add("neuron_stats", neuron_rows("horse", image, seed=image))


def state(root: Path) -> dict[str, object]:
    """Every view's rows in a total order (the rollup summed per neuron), neuron_means, and what a writer
    resuming a run would see."""
    con = queries.connect(root)
    rows: dict[str, object] = {}
    for table in TABLES:
        if table == "neuron_rollup":
            continue
        rows[table] = con.sql(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()
    rows["samples_order"] = con.sql("SELECT concept, image_id, status, skip_reason FROM samples ORDER BY ALL"
                                    ).fetchall()
    rows["neuron_means"] = con.sql("SELECT * FROM neuron_means ORDER BY ALL").fetchall()
    reader = Warehouse.open(root)
    rows["finished"] = sorted(reader.finished_pairs(RUN))
    rows["read"] = {t: sorted(map(repr, reader.read(t).to_pylist())) for t in TABLES if t != "neuron_rollup"}
    return rows


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for table in TABLES for p in (root / table).rglob("*") if p.is_file()}


def committed(root: Path) -> set[str]:
    return {entry.path for record in Warehouse.open(root).batches for entry in record.files}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    path = tmp_path / "wh"
    build(path)
    return path


# ---------------------------------------------------------------------- the happy path
def test_compaction_keeps_rows_and_results_and_makes_one_batch(root: Path, capsys) -> None:
    before = state(root)
    files_before = files_on_disk(root)
    code, out, err = run_cli(["compact", "--warehouse", str(root), "--dry-run"], capsys)
    assert code == 0 and out.startswith(f"would compact warehouse {root}: ") and files_on_disk(root) == files_before

    result = compact(root)
    assert result.batches_replaced == 12 and result.batch_id is not None
    assert result.rollups_rebuilt == [(RUN, "horse")]
    store = Warehouse.open(root)
    (record,) = store.batches
    assert len(record.replaces) == 12 and sorted(os.listdir(root / MANIFEST_DIR)) == [f"{record.batch_id}.json"]
    assert files_on_disk(root) == committed(root) and len(committed(root)) < len(files_before)
    per_table = {t: sum(1 for e in record.files if e.table == t) for t in TABLES}
    assert per_table["neuron_stats"] == 3 and per_table["samples"] == 3 and per_table["neuron_rollup"] == 3
    assert state(root) == before
    assert verify_warehouse(root).ok
    con = queries.connect(root)  # the rollup now covers every partition: no image row is read for the means
    assert con.sql("SELECT count(*) FROM neuron_stats_unrolled").fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM neuron_rollup_parts").fetchall() == [(0,)]  # one file: totals as they are
    assert con.sql("SELECT count(*) FROM neuron_rollup_summed").fetchall() == [(3 * 10,)]
    assert con.sql("SELECT sum(n_images) FROM neuron_rollup WHERE layer = 0 AND unit = 0").fetchall() == [(9,)]

    again = compact(root)
    assert again.batch_id is None
    assert again.line().endswith(f"nothing to compact ({len(record.files)} files, 1 batch(es))")
    code, out, _ = run_cli(["verify", "--warehouse", str(root)], capsys)
    assert code == 0 and "is clean" in out


def test_a_reader_open_across_compaction_drops_every_replaced_batch(root: Path) -> None:
    """A long-lived reader that knew the small batches sees only the merged ones after compaction (not one
    replaced batch left behind, whose files would double its rows)."""
    reader = Warehouse.open(root)
    before = len(reader.batches)
    rows_before = {table: reader.read(table).num_rows for table in ("samples", "neuron_stats")}
    compact(root)
    fresh = Warehouse.open(root)
    assert before > 2 and [r.batch_id for r in reader.batches] == [r.batch_id for r in fresh.batches]
    assert {table: reader.read(table).num_rows for table in rows_before} == rows_before


def test_writes_after_compaction_follow_the_usual_rules(root: Path) -> None:
    compact(root)
    with Warehouse.open(root, create=True) as wh:
        with pytest.raises(KneuronError, match="already in the warehouse"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [3]))
        with wh.batch() as batch:  # a new image of an old partition; its rollup keeps the partition complete
            batch.add("samples", sample_rows("dog", [8]))
            stats = pa.table(neuron_rows("dog", 8, seed=8))
            batch.add("neuron_stats", stats)
            batch.add("neuron_rollup", rollup_rows(stats))
    con = queries.connect(root)
    assert con.sql("SELECT count(*) FROM neuron_stats_unrolled").fetchall() == [(0,)]
    means = con.sql("SELECT n_images, mean_d_max FROM neuron_means WHERE concept = 'dog' AND layer = 1 AND unit = 2"
                    ).fetchall()
    per_image = con.sql("SELECT count(*), avg(CAST(d_max AS DOUBLE)) FROM neuron_stats "
                        "WHERE concept = 'dog' AND layer = 1 AND unit = 2").fetchall()
    assert means == per_image and means[0][0] == 7
    assert Warehouse.open(root).finished_pairs(RUN) >= {("dog", 8), ("cat", 7)}


def test_rollup_rows_are_one_per_neuron(tmp_path: Path) -> None:
    stats = pa.table(neuron_rows("dog", 1, seed=1))
    rollup = rollup_rows(stats)
    with Warehouse.open(tmp_path / "wh", create=True) as wh, wh.batch() as batch:
        batch.add("runs", run_row())
        with pytest.raises(KneuronError, match="neuron_rollup: two rows for layer 0, unit 0 .* one per neuron"):
            batch.add("neuron_rollup", pa.concat_tables([rollup, rollup.slice(0, 1)]))
        batch.add("neuron_rollup", rollup)  # the same rows once are fine


def test_small_target_splits_and_large_files_are_kept(root: Path) -> None:
    before = state(root)
    result = compact(root, target_rows=25)  # neuron_stats files hold 10 rows: merged in twos
    stats = [e for e in Warehouse.open(root).batches[0].files if e.table == "neuron_stats"]
    assert sorted(e.rows for e in stats if e.partition["concept"] == "dog") == [20, 20, 20]
    assert result.files_merged > 0 and state(root) == before
    assert compact(root, target_rows=25).batch_id is None  # 20-row files cannot pair up under 25: kept


# ---------------------------------------------------------------------- failures that change nothing
def test_full_disk_while_merging_changes_nothing(root: Path, monkeypatch) -> None:
    before, disk = state(root), files_on_disk(root)
    calls = {"n": 0}
    real = pq.ParquetWriter.write_table

    def full(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(KneuronError, match="no space left on the device") as raised:
        compact(root)
    assert "\n" not in str(raised.value)
    monkeypatch.undo()
    assert files_on_disk(root) == disk and state(root) == before and verify_warehouse(root).ok


def test_a_damaged_source_file_is_refused(root: Path) -> None:
    before = state(root)
    victim = root / next(e.path for r in Warehouse.open(root).batches for e in r.files
                         if e.table in {"token_stats", "neuron_stats"})
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(KneuronError, match="do not match its commit record; compaction refuses"):
        compact(root)
    assert not list(root.rglob("*.tmp"))
    assert len(Warehouse.open(root).batches) == 12
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert state(root) == before


# ---------------------------------------------------------------------- kill points
KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    import pyarrow.parquet as pq
    import kneuron.warehouse.batch
    import kneuron.warehouse.compact
    point = {point!r}
    die = lambda *a, **k: os._exit(9)
    if point == "writing":
        real = pq.ParquetWriter.write_table
        count = [0]
        def write(self, *a, **k):
            count[0] += 1
            if count[0] == 4:
                os._exit(9)
            return real(self, *a, **k)
        pq.ParquetWriter.write_table = write
    elif point == "before_record":
        kneuron.warehouse.batch.write_record = die
    elif point == "after_record":
        kneuron.warehouse.compact.remove_records = die
    elif point == "records_removed":
        kneuron.warehouse.compact.delete_unreferenced = die
    kneuron.warehouse.compact.compact({root!r})
""")


@pytest.mark.parametrize("point", ["writing", "before_record", "after_record", "records_removed"])
def test_a_crash_at_each_step_leaves_a_valid_warehouse(root: Path, point: str) -> None:
    before = state(root)
    script = KILL_SCRIPT.format(repo=str(REPO), point=point, root=str(root))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 9, proc.stderr
    # a reader (no lock, no clean-up) sees the old batches or the new one, whole
    reader = Warehouse.open(root)
    assert len(reader.batches) == (1 if point in ("after_record", "records_removed") else 12)
    assert state(root) == before and verify_warehouse(root).ok
    with Warehouse.open(root, create=True) as wh:  # the next writer finishes or undoes the crashed step
        assert wh.garbage_collected or point == "writing" and not list(root.rglob("*.tmp"))
    assert files_on_disk(root) == committed(root)
    assert sorted(p.stem for p in (root / MANIFEST_DIR).glob("*.json")) == [b.batch_id for b in reader.batches]
    assert state(root) == before and verify_warehouse(root).ok
    compact(root)  # and compaction goes through afterwards
    assert len(Warehouse.open(root).batches) == 1 and state(root) == before


def test_a_reader_listing_records_while_they_are_replaced_sees_a_whole_warehouse(root: Path, monkeypatch) -> None:
    before = state(root)
    real = kneuron.warehouse.manifest.BatchRecord.from_json
    fired = []

    def compact_midway(text: str):
        record = real(text)
        if not fired:  # the reader has listed _manifest/ and read one record: now a writer compacts
            fired.append(True)
            monkeypatch.setattr(kneuron.warehouse.manifest.BatchRecord, "from_json", real)
            compact(root)
        return record

    monkeypatch.setattr(kneuron.warehouse.manifest.BatchRecord, "from_json", staticmethod(compact_midway))
    reader = Warehouse.open(root)
    assert fired and len(reader.batches) == 1
    assert state(root) == before


def test_rollup_sums_are_exact_after_compaction() -> None:
    """float16 values summed in float64 in any grouping give the same sums (the means are bit-equal)."""
    rng = np.random.default_rng(3)
    parts = []
    for image in range(40):
        rows = neuron_rows("dog", image, seed=image)
        for name in ("o_mean", "i_mean", "d_max", "g_max", "g_mean"):
            rows[name] = (rng.standard_normal(len(rows[name])) * rng.choice([1e-4, 1.0, 3e3], len(rows[name]))
                          ).astype(np.float32)
        parts.append(pa.table(rows))
    whole = rollup_rows(pa.concat_tables(parts))
    from kneuron.warehouse.rollup import merge_rollups

    pieces = merge_rollups([rollup_rows(pa.concat_tables(parts[i:i + 7])) for i in range(0, 40, 7)])
    assert whole.equals(pieces)

"""`kneuron ingest --engine ray` on a real Ray instance (``ray.init(num_cpus=2)``, one per module): the tables of
``--engine local`` while a recorder actor is killed mid-run, and after the driver is killed (kill -9) and the
command rerun; one-line errors (Ray missing, cluster unreachable, a model the workers cannot load); the resource
shape that keeps a 2-core machine from stalling. The two-node cluster is in `test_ingest_ray_cluster.py`.

Every Ray run here costs ~20 s of start-up on 2 busy cores (new worker processes import torch and load the
model), so the runs are few and tiny: 2 concepts x 3 images, one pair per chunk.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from kneuron import warehouse
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.ingest import ray as ingest_ray
from kneuron.engine.pipelines.ingest.pipeline import IngestConfig
from kneuron.engine.pipelines.ingest.ray import RayOptions, run_ingest_ray, worker_shape
from kneuron.warehouse.rollup import merge_rollups
from tests.helpers.cli_runner import kill_after_first_commit, run_cli
from tests.helpers.tables import sorted_rows
from tests.helpers.tiny_models import tiny_minigpt4

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

KEYS = {"runs": ["run_id"], "splits": ["concept", "image_id"], "samples": ["concept", "image_id"],
        "neuron_stats": ["concept", "image_id", "layer", "unit"],
        "token_stats": ["concept", "image_id", "layer", "position", "rank"],
        "neuron_rollup": ["concept", "layer", "unit"]}


def tables(root: Path) -> dict[str, pa.Table]:
    """Every table of the warehouse in a total order (rollups summed per neuron: batches may differ)."""
    store = warehouse.Warehouse.open(root)
    out = {}
    for table, keys in KEYS.items():
        rows = store.read(table)
        out[table] = sorted_rows(merge_rollups([rows]) if table == "neuron_rollup" else rows, keys)
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    left, right = tables(a), tables(b)
    for table in KEYS:
        assert left[table].num_rows > 0 and left[table].equals(right[table]), table


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w",
                          WorldConfig(seed=1, image_size=32, n_train=0, n_val=0, n_test=20))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny = tiny_minigpt4(seed=1)
    save_minigpt4(tiny.model, tiny.tokenizer, tiny.spec, path)
    return path


def args(world: Path, model_dir: Path, wh: Path, *extra: str) -> list[str]:
    return ["ingest", "--coco-root", str(world), "--model", str(model_dir), "--device", "cpu", "--concept", "circle",
            "--concept", "square", "--images-per-concept", "3", "--batch-size", "1", "--top-k", "5",
            "--warehouse", str(wh), "--no-progress", *extra]


@pytest.fixture(scope="module")
def local(world: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The same run with ``--engine local`` (the reference every Ray run must match) and its number of pairs."""
    from kneuron.cli.main import main

    wh = tmp_path_factory.mktemp("local") / "wh"
    main(args(world, model_dir, wh))
    return wh, tables(wh)["samples"].num_rows


# ---------------------------------------------------------------------------------------------- no instance
def test_worker_shape_leaves_the_cpu_tasks_room() -> None:
    two = worker_shape(2, 0, RayOptions(workers=2), "auto")
    assert (two.cpus, two.gpus, two.threads) == (0.667, 0.0, 1) and 2 - 2 * two.cpus >= two.task_cpus > 0
    one = worker_shape(2, 0, RayOptions(), "auto")
    assert (one.cpus, one.task_cpus) == (1.0, 0.5)
    big = worker_shape(64, 8, RayOptions(workers=8), "auto")
    assert (big.cpus, big.gpus, big.threads, big.task_cpus) == (1.0, 1.0, 1, 1.0)
    assert worker_shape(64, 8, RayOptions(workers=8), "cpu").gpus == 0.0
    with pytest.raises(KneuronError, match="leave the image tasks no CPU"):
        worker_shape(2, 0, RayOptions(workers=2, cpus_per_worker=1.0), "auto")
    with pytest.raises(KneuronError, match="asks for 1 GPU"):
        worker_shape(2, 0, RayOptions(gpus_per_worker=1), "auto")


def test_one_line_errors_without_a_cluster(world, model_dir, tmp_path, capsys, monkeypatch) -> None:
    assert not ray.is_initialized()
    code, _, err = run_cli(args(world, model_dir, tmp_path / "a", "--engine", "ray", "--ray-address",
                                "127.0.0.1:1"), capsys)
    assert code == 2 and err.count("\n") == 1 and "the Ray cluster at 127.0.0.1:1 is unreachable" in err
    code, _, err = run_cli(args(world, model_dir, tmp_path / "b", "--workers", "2"), capsys)
    assert code == 2 and "need --engine ray" in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = run_cli(args(world, model_dir, tmp_path / "c", "--engine", "ray"), capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'kneuron[ray]'" in err
    assert not (tmp_path / "a").exists()  # nothing written for a run that cannot start


# ---------------------------------------------------------------------------------------------- one instance
@pytest.fixture(scope="module")
def cluster() -> str:
    """A real local Ray instance of 2 CPUs for this module; its GCS address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def recorder_pids() -> list[int]:
    """Process ids of the Ray Data recorder actors (descendants of this process: the instance is ours)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            title = " ".join(child.cmdline())  # ray::MapWorker(MapBatches(Recorder)).submit
            if "MapWorker(" in title and "(Recorder)" in title:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def test_a_recorder_killed_mid_run_gives_the_local_tables(world, model_dir, local, cluster, tmp_path, capsys,
                                                          monkeypatch) -> None:
    reference, n_pairs = local
    killed: list[int] = []
    commit = ingest_ray.commit_chunk

    def commit_then_kill(*a, **kw):
        commit(*a, **kw)
        if not killed:  # after the first commit the recorder works on the next chunks: kill it (kill -9)
            killed.extend(recorder_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(ingest_ray, "commit_chunk", commit_then_kill)
    wh = tmp_path / "wh"
    code, out, err = run_cli(args(world, model_dir, wh, "--engine", "ray", "--progress"), capsys)
    assert code == 0, err
    assert killed, "no recorder actor was found to kill"
    assert "on Ray, 1 recorder(s)" in err and f" {n_pairs}/{n_pairs} (" in err  # the driver's progress line
    assert out.splitlines()[-1].startswith(f"run {tables(reference)['runs'].column('run_id')[0]}:")
    assert_same_tables(wh, reference)


def test_killed_driver_resumes_to_the_local_tables(world, model_dir, local, cluster, tmp_path, capsys) -> None:
    reference, n_pairs = local
    wh = tmp_path / "wh"
    kill_after_first_commit(args(world, model_dir, wh, "--engine", "ray", "--ray-address", cluster), wh, timeout_s=180)
    done = warehouse.Warehouse.open(wh)
    (run_id,) = done.run_ids()
    assert 1 <= len(done.finished_pairs(run_id)) < n_pairs, "the driver finished before it was killed"

    code, out, err = run_cli(args(world, model_dir, wh, "--engine", "ray"), capsys)  # joins this process's Ray
    assert code == 0, err
    assert "already done (resumed)" in out
    assert_same_tables(wh, reference)
    assert not list(wh.rglob(".*.tmp"))
    assert {p.relative_to(wh).as_posix() for p in wh.rglob("*.parquet")} == {
        f.path for b in warehouse.Warehouse.open(wh).batches for f in b.files}


def test_a_model_the_workers_cannot_load_is_one_line(world, tmp_path, cluster, capsys) -> None:
    code, _, err = run_cli(args(world, tmp_path / "no-such-model", tmp_path / "wh", "--engine", "ray"), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("kneuron: error: a Ray worker could not load the model: model not found")
    assert warehouse.Warehouse.open(tmp_path / "wh").batches == []


def test_python_api_reuses_the_instance_and_a_finished_run_is_a_no_op(world, model_dir, local, cluster) -> None:
    reference, n_pairs = local
    config = IngestConfig(coco_root=str(world), model=str(model_dir), device="cpu", concepts=("circle", "square"),
                          images_per_concept=3, batch_size=1, top_k=5, warehouse=str(reference), progress=False)
    summary = run_ingest_ray(config, RayOptions(workers=2))
    assert summary.resumed and (summary.recorded, summary.batches, summary.already_done) == (0, 0, n_pairs)
    assert ray.is_initialized()  # an instance the caller started is left running

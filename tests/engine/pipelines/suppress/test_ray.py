"""`kneuron suppress --engine ray` on a real Ray instance (``ray.init(num_cpus=2)``, one per module): the tables of
``--engine local`` (captions, scores, baseline sets, the evals row), also while a captioner actor is killed
mid-run, after the driver stops mid-run (in process) and after it is killed (kill -9) and the run is resumed,
and with resample ablation (reference activations on the captioners, donors by image index); one-line errors;
the captioner shape.

Each Ray run starts captioner processes that import torch and load the tiny model (~10-20 s on 2 busy cores),
so the runs are few and tiny: 3 concepts x 2 methods, batches of 3 images.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

import kneuron.engine.pipelines.suppress.evaluation as suppress_module
from kneuron import warehouse
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.ray_cluster import RayOptions
from kneuron.engine.pipelines.suppress import ray as suppress_ray
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.engine.pipelines.suppress.ray import RayCaptions, captioner_shape, run_evaluation_ray
from tests.helpers.cli_runner import kill_after_first_commit, run_cli
from tests.helpers.eval_fixtures import FAST, build_eval_world
from tests.helpers.tables import sorted_tables
from tests.helpers.tiny_models import tiny_minigpt4

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


KEYS = {"captions": ["concept", "method", "group", "image_id"],
        "scores": ["concept", "method", "group", "image_id", "metric", "reference"],
        "neuron_sets": ["set_id", "layer", "unit"], "evals": ["eval_id"]}


def tables(root: Path) -> dict[str, pa.Table]:
    """The evaluation's tables in a total order (without the creation times)."""
    return sorted_tables(root, KEYS)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """(world, a pristine copy of its warehouse, the model folder, the config, the local run's tables)."""
    tmp = tmp_path_factory.mktemp("suppress-ray")
    world = build_eval_world(tmp)
    model = tmp / "tiny"
    tiny = tiny_minigpt4()
    save_minigpt4(tiny.model, tiny.tokenizer, tiny.spec, model)
    pristine = tmp / "pristine"
    shutil.copytree(world.warehouse, pristine)
    config = EvalConfig(methods=("two_stage", "random_layer_matched"), metrics=FAST, batch_size=3, seed=1,
                        model=str(model), device="cpu")
    run_evaluation(config, world.warehouse, progress=False)
    return world, pristine, config, tables(world.warehouse)


def fresh(setup, tmp_path: Path) -> Path:  # noqa: ANN001
    root = tmp_path / "warehouse"
    shutil.copytree(setup[1], root)
    return root


def test_ray_gives_the_local_tables_with_a_captioner_killed_mid_run(cluster, setup, tmp_path, monkeypatch):
    world, _, config, local = setup
    root = fresh(setup, tmp_path)
    killed: list[int] = []
    texts = RayCaptions.texts

    def kill_once(self, image_ids, neurons):  # noqa: ANN001, ANN202
        if not killed:  # the first captioner dies with calls queued on it: Ray restarts it and retries them
            killed.append(1)
            ray.kill(self.actors[0], no_restart=False)
        return texts(self, image_ids, neurons)

    monkeypatch.setattr(RayCaptions, "texts", kill_once)
    lines: list[str] = []
    result = run_evaluation_ray(config, root, RayOptions(workers=2), progress=True, log=lines.append)
    assert killed and result.jobs_run == 9
    assert any("captioner(s)" in line and "ready in" in line for line in lines)
    got = tables(root)
    for table in KEYS:
        assert got[table].num_rows > 0 and got[table].equals(local[table]), table


def test_ray_resample_ablation_gives_the_local_tables(cluster, setup, tmp_path):
    """Resample: the driver's reference activations reach the captioners (object store) and each call's
    first image index draws the donors a local run draws; calls of about 4 (set, image) rows, on 2 captioners."""
    world, _, config, _ = setup
    resample = dataclasses.replace(config, ablation="resample", reference_images=3, rows_per_generate=4)
    local_root, ray_root = fresh(setup, tmp_path / "local"), fresh(setup, tmp_path / "ray")
    local = run_evaluation(resample, local_root, progress=False)
    result = run_evaluation_ray(resample, ray_root, RayOptions(workers=2), progress=False)
    assert result.eval_id == local.eval_id and result.jobs_run == 9
    got, want = tables(ray_root), tables(local_root)
    for table in KEYS:
        assert got[table].num_rows > 0 and got[table].equals(want[table]), table


def test_a_driver_stopped_mid_run_resumes_on_rerun(cluster, setup, tmp_path, monkeypatch):
    world, _, config, local = setup
    root = fresh(setup, tmp_path)
    write = suppress_module.Evaluation.write
    count: list[int] = []

    def stop_after_two(self, tables_):  # noqa: ANN001, ANN202
        if len(count) == 2:
            raise KeyboardInterrupt  # the driver goes away after committing two jobs
        count.append(1)
        return write(self, tables_)

    monkeypatch.setattr(suppress_module.Evaluation, "write", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation_ray(config, root, RayOptions(workers=1), progress=False)
    monkeypatch.undo()
    assert len(warehouse.Warehouse.open(root).read("captions").column("method").unique()) >= 1
    result = run_evaluation_ray(config, root, RayOptions(workers=1), progress=False)
    assert result.jobs_skipped == 2 and result.jobs_run == 7
    got = tables(root)
    for table in KEYS:
        assert got[table].equals(local[table]), table


def test_a_driver_killed_mid_run_resumes_to_the_local_tables(cluster, setup, tmp_path):
    world, _, config, local = setup
    root = fresh(setup, tmp_path)
    toml = tmp_path / "eval.toml"
    toml.write_text(f'methods = ["two_stage", "random_layer_matched"]\nbatch_size = 3\nseed = 1\n'
                    f'model = "{config.model}"\ndevice = "cpu"\n[metrics]\nnames = ["bleu4", "rougeL"]\n')
    kill_after_first_commit(["suppress", "--warehouse", str(root), "--config", str(toml), "--engine", "ray",
                             "--ray-address", cluster, "--no-progress"], root, timeout_s=240)
    committed = warehouse.Warehouse.open(root).read("captions")
    assert 0 < committed.num_rows < local["captions"].num_rows, "the driver finished before it was killed"
    result = run_evaluation_ray(config, root, RayOptions(workers=1), progress=False)  # joins this process's Ray
    assert result.jobs_skipped >= 1
    got = tables(root)
    for table in KEYS:
        assert got[table].equals(local[table]), table


def test_one_line_errors(cluster, setup, tmp_path, monkeypatch, capsys):
    world, _, config, _ = setup
    root = fresh(setup, tmp_path)

    def no_ray():  # noqa: ANN202
        raise KneuronError("--engine ray needs Ray (with Ray Data), which is not installed: pip install 'kneuron[ray]'")

    with monkeypatch.context() as patch:
        patch.setattr(suppress_ray, "import_ray", no_ray)
        code, _, err = run_cli(["suppress", "--warehouse", str(root), "--engine", "ray", "--no-progress"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("kneuron: error: --engine ray needs Ray")
    code, _, err = run_cli(["suppress", "--warehouse", str(root), "--workers", "2"], capsys)
    assert code == 2 and err.strip().endswith(
        "--ray-address, --workers, --gpus-per-worker and --cpus-per-worker need --engine ray")
    with pytest.raises(KneuronError, match="^--edited-model is evaluated with --engine local only$"):
        run_evaluation_ray(EvalConfig(edited_model=str(tmp_path)), root)
    broken = EvalConfig(methods=("two_stage",), metrics=FAST, model=str(tmp_path / "no-model"), device="cpu")
    with pytest.raises(KneuronError) as info:
        run_evaluation_ray(broken, root, RayOptions(workers=1), progress=False)
    assert "\n" not in str(info.value)
    assert warehouse.Warehouse.open(root).read("captions").num_rows == 0  # nothing written


def test_captioner_shape() -> None:
    assert captioner_shape(2, 0, RayOptions(workers=2), "cpu") == (1.0, 0.0, 1)
    assert captioner_shape(2, 0, RayOptions(workers=3), None) == (0.666, 0.0, 1)
    assert captioner_shape(64, 8, RayOptions(workers=8), "cuda") == (1.0, 1.0, 1)
    assert captioner_shape(64, 8, RayOptions(workers=8), "cpu") == (1.0, 0.0, 1)
    with pytest.raises(KneuronError, match="asks for 2 GPU"):
        captioner_shape(8, 1, RayOptions(workers=1, gpus_per_worker=2), "cuda")
    with pytest.raises(KneuronError, match="do not fit"):
        captioner_shape(2, 0, RayOptions(workers=2, cpus_per_worker=1.5), "cpu")

"""Ingest faults through the `kneuron` entry point: what a resume trusts, and what bad input does.

- one malformed COCO polygon skips its pair with the reason (it used to abort the whole ingest, on every retry);
- a pair skipped for a missing image is recorded on resume once the image is back (it used to stay skipped);
- a different dataset regenerated at the same path makes a new run (it used to be mixed into the old run), and
  a pinned ``--run-id`` refuses it in one line;
- an identification image whose content changed since is refused on resume, naming the file;
- a committed file deleted: resume says one line (run ``kneuron verify --repair``), and after the repair the
  resume ends with the tables of an uninterrupted run;
- ``--device`` that this machine cannot use is one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from kneuron import queries
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.ingest.pipeline import IngestConfig, run_ingest
from kneuron.warehouse import Warehouse, table_paths
from tests.helpers.cli_runner import run_cli
from tests.helpers.tiny_models import tiny_minigpt4

CONCEPTS = ("circle", "square", "star")
KEYS = {"samples": ["concept", "image_id"], "neuron_stats": ["concept", "image_id", "layer", "unit"],
        "token_stats": ["concept", "image_id", "layer", "position", "rank"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = tiny_minigpt4(seed=1)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_minigpt4(tiny.model, tiny.tokenizer, tiny.spec, folder)
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w",
                          WorldConfig(seed=1, image_size=32, n_train=0, n_val=0, n_test=20))


@pytest.fixture()
def world(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the world (tests damage it)."""
    return Path(shutil.copytree(pristine, tmp_path / "world"))


def ingest_args(world: Path, model_dir: Path, wh: Path, *extra: str) -> list[str]:
    return ["ingest", "--coco-root", str(world), "--model", str(model_dir), "--device", "cpu",
            *[a for c in CONCEPTS for a in ("--concept", c)], "--images-per-concept", "3", "--batch-size", "2",
            "--top-k", "3", "--warehouse", str(wh), "--no-progress", *extra]


def ident_images(wh: Path) -> list[tuple[str, int]]:
    rows = Warehouse.open(wh).read("splits").to_pylist()
    return sorted((r["concept"], r["image_id"]) for r in rows if r["split"] == "ident")


def view(wh: Path, table: str) -> pa.Table:
    """The view's rows (one per key, as every query sees them) in key order, without timestamps."""
    with queries.connect(wh) as con:
        rows = con.sql(f"SELECT * FROM {table}").to_arrow_table()
    return rows.sort_by([(k, "ascending") for k in KEYS[table]])


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("kneuron: error: "), err
    return err.removeprefix("kneuron: error: ").strip()


def test_a_malformed_polygon_skips_its_pair(world: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    instances = world / "annotations" / "instances_test.json"
    data = json.loads(instances.read_text())
    circle = next(c["id"] for c in data["categories"] if c["name"] == "circle")
    bad = min((a for a in data["annotations"] if a["category_id"] == circle), key=lambda a: a["image_id"])
    bad["segmentation"] = [[1, 2, 3]]
    instances.write_text(json.dumps(data))
    wh = tmp_path / "wh"
    code, out, err = run_cli(ingest_args(world, model_dir, wh, "--ident-fraction", "1"), capsys)
    assert code == 0, err
    samples = {(r["concept"], r["image_id"]): r for r in view(wh, "samples").to_pylist()}
    row = samples[("circle", bad["image_id"])]
    assert row["status"] == "skipped"
    assert row["skip_reason"].startswith(f"malformed segmentation in annotation {bad['id']} (image {bad['image_id']})")
    assert sum(r["status"] == "ok" for r in samples.values()) == len(samples) - 1 >= 5
    assert "1 skipped" in out


def test_a_skipped_pair_is_recorded_once_its_image_is_back(world: Path, model_dir: Path, tmp_path: Path,
                                                           capsys) -> None:
    clean = tmp_path / "clean"
    assert run_cli(ingest_args(world, model_dir, clean), capsys)[0] == 0
    concept, image_id = ident_images(clean)[1]
    image = world / "test" / f"{image_id:012d}.png"
    kept = image.read_bytes()
    image.unlink()

    wh = tmp_path / "wh"
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 0 and "1 skipped" in out, err
    (run_id,) = Warehouse.open(wh).run_ids()
    assert run_id == Warehouse.open(clean).run_ids().pop()  # the instances file did not change
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)  # still missing: nothing new written
    assert code == 0 and "0 pair(s) recorded, 1 skipped" in out and "0 batch(es)" in out, (out, err)
    assert run_cli(ingest_args(world, model_dir, wh, "--no-retry-skipped"), capsys)[0] == 0

    image.write_bytes(kept)
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 0 and "1 pair(s) recorded, 0 skipped" in out and "retrying 1 pair(s)" in err, (out, err)
    samples = view(wh, "samples")
    assert samples.drop_columns(["run_id"]).to_pylist() == view(clean, "samples").drop_columns(["run_id"]).to_pylist()
    for table in ("neuron_stats", "token_stats"):
        got, want = view(wh, table), view(clean, table)
        assert got.num_rows == want.num_rows and got.select(KEYS[table]).equals(want.select(KEYS[table]))
        for column in ("o_mean", "d_max", "g_max") if table == "neuron_stats" else ("o_act", "g"):
            # the retried pair went through the model alone, not in a batch of two: float rounding may differ
            np.testing.assert_allclose(got.column(column).to_numpy(), want.column(column).to_numpy(),
                                       rtol=1e-2, atol=1e-3)


def test_a_changed_dataset_makes_a_new_run_and_a_pinned_run_id_refuses_it(world: Path, model_dir: Path,
                                                                            tmp_path: Path, capsys) -> None:
    wh = tmp_path / "wh"
    assert run_cli(ingest_args(world, model_dir, wh), capsys)[0] == 0
    (first,) = Warehouse.open(wh).run_ids()
    shutil.rmtree(world)
    generate_world(world, WorldConfig(seed=2, image_size=32, n_train=0, n_val=0, n_test=20))
    code, out, err = run_cli(ingest_args(world, model_dir, wh, "--run", first), capsys)
    assert code == 2 and out == ""
    message = one_error_line(err)
    assert message.startswith(f"run {first} already exists in") and "instances_sha256" in message
    assert Warehouse.open(wh).run_ids() == {first}
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 0 and "already done" not in out, err
    assert len(Warehouse.open(wh).run_ids()) == 2


def test_an_image_changed_since_the_run_is_refused_on_resume(world: Path, model_dir: Path, tmp_path: Path,
                                                             capsys) -> None:
    wh = tmp_path / "wh"
    assert run_cli(ingest_args(world, model_dir, wh), capsys)[0] == 0
    before = view(wh, "neuron_stats")
    _, image_id = ident_images(wh)[0]
    image = world / "test" / f"{image_id:012d}.png"
    Image.fromarray(255 - np.asarray(Image.open(image).convert("RGB"))).save(image)
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"image {image} changed since this run recorded it; ingest into a new run "
                                   "(drop --run-id, or choose another one)")
    assert view(wh, "neuron_stats").equals(before)


def test_a_deleted_file_is_one_line_on_resume_and_repair_then_resume_restores_the_tables(
        world: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    wh = tmp_path / "wh"
    assert run_cli(ingest_args(world, model_dir, wh), capsys)[0] == 0
    before = {table: view(wh, table) for table in KEYS}
    gone = Path(table_paths(wh, "neuron_stats")[1])
    gone.unlink()
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 2 and out == ""
    message = one_error_line(err)
    assert str(gone) in message and "kneuron verify --repair" in message
    code, out, err = run_cli(["verify", "--warehouse", str(wh), "--repair"], capsys)
    assert code == 0, err
    code, out, err = run_cli(ingest_args(world, model_dir, wh), capsys)
    assert code == 0 and "already done (resumed)" in out, err
    for table, rows in before.items():
        assert view(wh, table).drop_columns(["run_id"]).equals(rows.drop_columns(["run_id"])), table


@pytest.mark.parametrize("device,message", [
    ("tpu", "unknown --device 'tpu'; use one of auto, cpu, cuda, cuda:N, mps"),
    ("cuda:7", "--device cuda:7: "),
])
def test_a_device_this_machine_cannot_use_is_one_line(world: Path, model_dir: Path, tmp_path: Path, capsys,
                                                      device: str, message: str) -> None:
    args = ingest_args(world, model_dir, tmp_path / "wh")
    args[args.index("--device") + 1] = device
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "" and one_error_line(err).startswith(message)
    assert not (tmp_path / "wh").exists()


def test_progress_lines_reach_the_log(world: Path, model_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    config = IngestConfig(coco_root=str(world), concepts=("circle",), images_per_concept=2, model=str(model_dir),
                          device="cpu", warehouse=str(tmp_path / "wh"))
    summary = run_ingest(config, log=lines.append)
    assert lines[0].startswith(f"loading model {model_dir} from {model_dir}")
    final = [line for line in lines if line.startswith(f"ingest {summary.run_id}: 2/2 ")]
    assert len(final) == 1 and "took" in final[0]

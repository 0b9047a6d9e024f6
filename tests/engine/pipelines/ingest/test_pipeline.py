"""`kneuron ingest`: tables and row counts, values against a direct `record_pairs` call, stored splits, resume
after kill -9 (subprocess) against an uninterrupted run, bad inputs (skips and one-line errors)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from kneuron import warehouse
from kneuron.engine.data.coco import split_ident_eval
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint import dilate, get_inpainter
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.ingest import plan as ingest_plan
from kneuron.engine.pipelines.ingest.pipeline import IngestConfig, run_ingest
from kneuron.engine.signals.record import RecordConfig, Target, choose_target, record_pairs
from tests.helpers.cli_runner import kill_after_first_commit, run_cli
from tests.helpers.tables import sorted_rows
from tests.helpers.tiny_models import tiny_minigpt4

CONCEPTS = ("circle", "square", "star")  # in the tiny tokenizer's vocabulary; the other shapes are not
TOP_K = 5
KEYS = {"runs": ["run_id"], "splits": ["concept", "image_id"], "samples": ["concept", "image_id"],
        "neuron_stats": ["concept", "image_id", "layer", "unit"],
        "token_stats": ["concept", "image_id", "layer", "position", "rank"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w",
                          WorldConfig(seed=1, image_size=32, n_train=0, n_val=0, n_test=20))


@pytest.fixture(scope="module")
def adapter():
    """The tiny random MiniGPT-4, biased to say "circle" at every step (so circle targets come from the caption,
    the other concepts fall back to the answer prefix)."""
    adapter = tiny_minigpt4()
    head = adapter.language_model.lm_head
    bias = torch.zeros(head.out_features)
    bias[adapter.concept_tokens("circle")[0]] = 100.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return adapter


def config(world: Path, wh: Path, **overrides) -> IngestConfig:
    values = dict(coco_root=str(world), concepts=CONCEPTS, images_per_concept=None, batch_size=8, top_k=TOP_K,
                  warehouse=str(wh), progress=False)
    values.update(overrides)
    return IngestConfig(**values)


def expected_splits(world: Path, concept: str, fraction: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Identification / evaluation images straight from the annotation file."""
    coco = COCO(str(world / "annotations" / "instances_test.json"))
    cat = coco.getCatIds(catNms=[concept])
    ids = sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=cat)) if not a["iscrowd"]})
    return split_ident_eval(ids, fraction, seed, key=concept)


def sorted_table(wh_path: Path, table: str) -> pa.Table:
    return sorted_rows(warehouse.Warehouse.open(wh_path).read(table), KEYS[table])


@pytest.fixture(scope="module")
def ingested(world: Path, adapter, tmp_path_factory: pytest.TempPathFactory):
    wh = tmp_path_factory.mktemp("wh") / "wh"
    summary = run_ingest(config(world, wh), adapter=adapter)
    return wh, summary


# ---------------------------------------------------------------------------------------------- tables
def test_tables_have_the_right_rows(world: Path, adapter, ingested) -> None:
    wh, summary = ingested
    ident = {c: expected_splits(world, c)[0] for c in CONCEPTS}
    n_pairs = sum(len(ids) for ids in ident.values())
    assert n_pairs >= 6 and summary.recorded == n_pairs and summary.skipped == 0
    assert summary.concepts == list(CONCEPTS) and summary.bytes_written > 0
    L, d, P = adapter.n_layers, adapter.d_ff, adapter.n_image_tokens
    store = warehouse.Warehouse.open(wh)
    assert store.read("neuron_stats").num_rows == n_pairs * L * d
    assert store.read("token_stats").num_rows == n_pairs * L * P * TOP_K
    samples = sorted_table(wh, "samples").to_pylist()
    assert [(s["concept"], s["image_id"]) for s in samples] == sorted((c, i) for c in CONCEPTS for i in ident[c])
    assert store.finished_pairs(summary.run_id) == {(c, i) for c in CONCEPTS for i in ident[c]}

    runs = store.read("runs").to_pylist()
    assert len(runs) == 1 and runs[0]["run_id"] == summary.run_id
    run = runs[0]
    assert (run["n_layers"], run["d_ff"], run["n_positions"], run["positions"]) == (L, d, P, "image")
    assert run["model_name"] == adapter.name and len(run["model_hash"]) == 64
    assert json.loads(run["inpainter"])["name"] == "telea" and json.loads(run["inpainter"])["margin_px"] == 2.0
    assert "{instruction}" not in run["prompt"] and "Describe this image" in run["prompt"]
    stored_config = json.loads(run["config_json"])
    assert stored_config["config"]["concepts"] == list(CONCEPTS) and "warehouse" not in stored_config["config"]

    prompt_length = adapter.prepare([Image.new("RGB", (32, 32))]).prompt_length
    circle = adapter.concept_tokens("circle")[0]
    for s in samples:
        assert s["status"] == "ok" and s["skip_reason"] is None
        assert s["caption_original"] is not None and s["caption_inpainted"] is not None
        assert 0 < s["mask_area"] < 32 * 32 and s["mask_fraction"] == pytest.approx(s["mask_area"] / 1024)
        assert s["target_token_id"] == adapter.concept_tokens(s["concept"])[0]
        if s["concept"] == "circle":  # the biased model says "circle" first: y^c at the last prompt position
            assert s["caption_original"].startswith("circle") and s["target_token_id"] == circle
            assert (s["target_source"], s["target_position"]) == ("caption", prompt_length - 1)
        else:  # not in the caption: after the answer prefix "a"
            assert s["concept"] not in s["caption_original"]
            assert (s["target_source"], s["target_position"]) == ("prefix", prompt_length)

    con = warehouse.connect(wh)
    counts = dict(con.sql("SELECT concept, count(*) FROM neuron_stats GROUP BY 1").fetchall())
    assert counts == {c: len(ident[c]) * L * d for c in CONCEPTS}


def test_splits_are_stored(world: Path, ingested) -> None:
    wh, _ = ingested
    rows = sorted_table(wh, "splits").to_pylist()
    for concept in CONCEPTS:
        ident, evaluation = expected_splits(world, concept)
        assert [r["image_id"] for r in rows if r["concept"] == concept and r["split"] == "ident"] == ident
        assert [r["image_id"] for r in rows if r["concept"] == concept and r["split"] == "eval"] == evaluation


def test_values_equal_a_direct_record_pairs_call(world: Path, adapter, ingested) -> None:
    """Rebuild every pair of one concept by hand (PIL, pycocotools, telea) and record them in one call."""
    wh, _ = ingested
    coco = COCO(str(world / "annotations" / "instances_test.json"))
    inpainter = get_inpainter("telea", radius=5.0)
    store = warehouse.Warehouse.open(wh)
    for concept in ("circle", "square"):
        ident = expected_splits(world, concept)[0]
        originals, inpainted = [], []
        for image_id in ident:
            image = np.asarray(Image.open(world / "test" / f"{image_id:012d}.png").convert("RGB"))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=coco.getCatIds(catNms=[concept])))
            mask = dilate(np.any([coco.annToMask(a) for a in anns], axis=0), 2.0)
            originals.append(Image.fromarray(image))
            inpainted.append(Image.fromarray(inpainter.inpaint(image, mask)))
        token = adapter.concept_tokens(concept)[0]
        target = (Target((token,), 0, token, "caption") if concept == "circle"
                  else Target(tuple(adapter.encode("a")), 1, token, "prefix"))
        record = record_pairs(adapter, originals, inpainted, [target] * len(ident), RecordConfig(top_k=TOP_K))
        stats = store.read("neuron_stats", concept=concept).sort_by(
            [("image_id", "ascending"), ("layer", "ascending"), ("unit", "ascending")])
        for name in ("o_mean", "i_mean", "d_max", "g_max", "g_mean"):
            stored = stats.column(name).to_numpy()
            expected = getattr(record, name).numpy().reshape(-1).astype(np.float16)
            assert np.array_equal(stored, expected), name
        tokens = store.read("token_stats", concept=concept).sort_by(
            [(k, "ascending") for k in KEYS["token_stats"][1:]])
        assert np.array_equal(tokens.column("unit").to_numpy(), record.top_units.numpy().reshape(-1))
        assert np.array_equal(tokens.column("g").to_numpy(), record.top_g.numpy().reshape(-1).astype(np.float16))
        assert np.array_equal(tokens.column("seq_position").to_numpy(),
                              np.tile(np.repeat(record.positions.numpy(), TOP_K), len(ident) * adapter.n_layers))


def test_rerun_resumes_with_the_stored_splits(world: Path, adapter, ingested, monkeypatch) -> None:
    wh, first = ingested
    before = {table: sorted_table(wh, table) for table in KEYS}

    def no_new_split(*args, **kwargs):
        raise AssertionError("a resumed run must read its splits from the warehouse")

    monkeypatch.setattr(ingest_plan, "split_ident_eval", no_new_split)
    again = run_ingest(config(world, wh), adapter=adapter)
    assert again.run_id == first.run_id and again.resumed
    assert (again.recorded, again.skipped, again.already_done, again.batches) == (0, 0, first.recorded, 0)
    for table in KEYS:
        assert sorted_table(wh, table).equals(before[table]), table
    monkeypatch.undo()

    other = run_ingest(config(world, wh, concepts=("star",), seed=5, margin_px=0.0), adapter=adapter)
    assert other.run_id != first.run_id and not other.resumed
    assert warehouse.Warehouse.open(wh).run_ids() == {first.run_id, other.run_id}
    with pytest.raises(KneuronError, match=f"run {first.run_id} already exists .* different config .*seed"):
        run_ingest(config(world, wh, seed=7, run_id=first.run_id), adapter=adapter)


def test_choose_target() -> None:
    assert choose_target([5, 7, 8, 7, 8], [7, 8], [9]) == Target((5, 7), 1, 7, "caption")
    assert choose_target([5, 7, 6, 7], [7], [9, 10]) == Target((5, 7), 1, 7, "caption")
    assert choose_target([5, 7, 6], [7, 8], [9, 10]) == Target((9, 10), 2, 7, "prefix")  # first sub-token alone
    assert choose_target([], [7], []) == Target((), 0, 7, "prefix")


def test_automatic_concepts_skip_words_the_tokenizer_does_not_know(world: Path, adapter, tmp_path: Path) -> None:
    notes: list[str] = []
    summary = run_ingest(config(world, tmp_path / "wh", concepts=(), min_images=4, images_per_concept=1),
                         adapter=adapter, log=notes.append)
    coco = COCO(str(world / "annotations" / "instances_test.json"))
    enough = [c["name"] for c in coco.loadCats(coco.getCatIds())
              if len({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=[c["id"]]))}) >= 4]
    known = [c for c in enough if c in CONCEPTS]
    assert summary.concepts == known and summary.recorded == len(known)
    assert set(enough) - set(known) and all(any(repr(c) in n and "left out" in n for n in notes)
                                            for c in set(enough) - set(known))
    with pytest.raises(KneuronError, match="concept 'triangle' is not in the vocabulary"):
        run_ingest(config(world, tmp_path / "wh2", concepts=("triangle",)), adapter=adapter)


def test_defaults_come_from_the_environment(world: Path, adapter, tmp_path: Path, monkeypatch) -> None:
    """No --coco-root: the world at $KNEURON_WORLD (complete, so reused); no --warehouse: $KNEURON_WAREHOUSE."""
    monkeypatch.setenv("KNEURON_WORLD", str(world))
    monkeypatch.setenv("KNEURON_WAREHOUSE", str(tmp_path / "env-wh"))
    saved = tmp_path / "inpainted"
    summary = run_ingest(IngestConfig(concepts=("star",), images_per_concept=2, save_inpainted=str(saved),
                                      progress=False), adapter=adapter)
    assert summary.warehouse == str(tmp_path / "env-wh") and summary.recorded == 2
    run = warehouse.Warehouse.open(tmp_path / "env-wh").read("runs").to_pylist()[0]
    assert json.loads(run["config_json"])["identity"]["dataset"] == str(world.resolve())
    ident = expected_splits(world, "star")[0][:2]
    assert sorted(p.name for p in (saved / "star").iterdir()) == [f"{i:012d}.png" for i in ident]
    original = np.asarray(Image.open(world / "test" / f"{ident[0]:012d}.png").convert("RGB"))
    assert (np.asarray(Image.open(saved / "star" / f"{ident[0]:012d}.png")) != original).any()
    with pytest.raises(KneuronError, match="bad --run-id"):
        run_ingest(IngestConfig(concepts=("star",), run_id="no spaces", progress=False), adapter=adapter)


def test_a_concept_word_of_several_sub_tokens_uses_the_first(world: Path, adapter, tmp_path: Path,
                                                              monkeypatch) -> None:
    """Pretend "circle" is two sub-tokens (circle, star): the caption "circle circle ..." does not hold the pair,
    so y^c falls back to the prefix, on the first sub-token; the split is noted once and stored in the run."""
    pieces = [adapter.concept_tokens("circle")[0], adapter.concept_tokens("star")[0]]
    real = adapter.concept_tokens
    monkeypatch.setattr(adapter, "concept_tokens", lambda word: pieces if word == "circle" else real(word))
    notes: list[str] = []
    summary = run_ingest(config(world, tmp_path / "wh", concepts=("circle",)), adapter=adapter, log=notes.append)
    assert notes == [f"concept 'circle' is 2 sub-tokens {pieces}; y^c uses the first ({pieces[0]})"]
    store = warehouse.Warehouse.open(tmp_path / "wh")
    samples = store.read("samples").to_pylist()
    assert summary.recorded == len(samples) > 0
    assert {(s["target_source"], s["target_token_id"]) for s in samples} == {("prefix", pieces[0])}
    assert json.loads(store.read("runs").column("config_json")[0].as_py())["concept_tokens"] == {"circle": pieces}


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_images_and_empty_masks_are_recorded_skips(world: Path, adapter, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(world, tmp_path / "bad"))
    ident = {c: expected_splits(world, c)[0] for c in CONCEPTS}
    corrupt, missing = ident["circle"][:2]
    gray, empty = [i for i in ident["square"] if i not in (corrupt, missing)][:2]
    cmyk = next(i for i in ident["star"] if i not in (corrupt, missing, gray, empty))
    (bad / "test" / f"{corrupt:012d}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (bad / "test" / f"{missing:012d}.png").unlink()
    Image.open(world / "test" / f"{gray:012d}.png").convert("L").save(bad / "test" / f"{gray:012d}.png")
    Image.open(world / "test" / f"{cmyk:012d}.png").convert("CMYK").save(bad / "test" / f"{cmyk:012d}.png",
                                                                          format="JPEG")
    instances_path = bad / "annotations" / "instances_test.json"
    instances = json.loads(instances_path.read_text())
    square_id = next(c["id"] for c in instances["categories"] if c["name"] == "square")
    for ann in instances["annotations"]:
        if ann["image_id"] == empty and ann["category_id"] == square_id:
            rle = mask_utils.encode(np.asfortranarray(np.zeros((32, 32), dtype=np.uint8)))
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    instances_path.write_text(json.dumps(instances))

    summary = run_ingest(config(bad, tmp_path / "wh"), adapter=adapter)
    samples = {(s["concept"], s["image_id"]): s for s in warehouse.Warehouse.open(tmp_path / "wh").read(
        "samples").to_pylist()}
    reasons = {key: s["skip_reason"] for key, s in samples.items() if s["status"] == "skipped"}
    expected = {(c, i): why for c in CONCEPTS for i, why in ((corrupt, "corrupt or unreadable image"),
                                                            (missing, "image file not found")) if i in ident[c]}
    expected[("square", empty)] = "empty mask: concept 'square' has no pixels"
    assert set(reasons) == set(expected)
    assert all(why in reasons[key] for key, why in expected.items())
    assert all("\n" not in reason for reason in reasons.values())
    assert samples[("square", gray)]["status"] == "ok" and samples[("star", cmyk)]["status"] == "ok"
    corrupt_row = samples[("circle", corrupt)]
    assert corrupt_row["mask_area"] is None and corrupt_row["caption_original"] is None
    n_ok = len(samples) - len(expected)
    assert (summary.skipped, summary.recorded) == (len(expected), n_ok) and n_ok >= 2
    stats = warehouse.connect(tmp_path / "wh").sql(
        "SELECT count(DISTINCT (concept, image_id)), count(*) FROM neuron_stats").fetchall()
    assert stats[0] == (n_ok, n_ok * adapter.n_layers * adapter.d_ff)




def test_unknown_concept_is_a_one_line_error(world: Path, adapter, tmp_path: Path, capsys) -> None:
    with pytest.raises(KneuronError, match="unknown concept 'zebra'"):
        run_ingest(config(world, tmp_path / "wh", concepts=("circle", "zebra")), adapter=adapter)
    code, out, err = run_cli(["ingest", "--coco-root", str(world), "--concept", "zebra", "--warehouse",
                              str(tmp_path / "wh"), "--no-progress"], capsys)
    assert code == 2 and err.startswith("kneuron: error: unknown concept 'zebra'") and err.count("\n") == 1
    assert not (tmp_path / "wh").exists()  # nothing written for a run that cannot start


def test_second_writer_is_refused(world: Path, adapter, tmp_path: Path, capsys) -> None:
    with warehouse.Warehouse.open(tmp_path / "wh", create=True):
        with pytest.raises(KneuronError, match="is being written by another process"):
            run_ingest(config(world, tmp_path / "wh"), adapter=adapter)
        code, _, err = run_cli(["ingest", "--coco-root", str(world), "--concept", "circle", "--warehouse",
                                str(tmp_path / "wh"), "--model", "tiny-shapes-qformer", "--no-progress"], capsys)
        assert code == 2 and "is being written by another process (pid" in err and err.count("\n") == 1
    assert warehouse.Warehouse.open(tmp_path / "wh").batches == []


def test_missing_model_is_a_one_line_error(world: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["ingest", "--coco-root", str(world), "--concept", "circle", "--warehouse",
                            str(tmp_path / "wh"), "--model", str(tmp_path / "no-such-model"), "--no-progress"], capsys)
    assert code == 2 and err.startswith("kneuron: error: model not found") and err.count("\n") == 1
    assert not (tmp_path / "wh").exists()  # no warehouse folder before the inputs are known to be good


def test_bad_options_are_one_line_errors(world: Path, adapter, tmp_path: Path) -> None:
    with pytest.raises(KneuronError, match="the sd inpainter needs --sd-model"):
        run_ingest(config(world, tmp_path / "wh", inpainter="sd"), adapter=adapter)
    with pytest.raises(KneuronError, match="top-k must be in 1..127"):
        run_ingest(config(world, tmp_path / "wh", top_k=500), adapter=adapter)
    with pytest.raises(KneuronError, match="COCO instances file not found"):
        run_ingest(config(tmp_path / "nowhere", tmp_path / "wh"), adapter=adapter)


# ---------------------------------------------------------------------------------------------- kill -9
def test_resume_after_kill_9_gives_the_uninterrupted_tables(world: Path, tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny = tiny_minigpt4(seed=1)
    save_minigpt4(tiny.model, tiny.tokenizer, tiny.spec, model_dir)
    args = ["ingest", "--coco-root", str(world), "--model", str(model_dir), "--device", "cpu",
            *[a for c in CONCEPTS for a in ("--concept", c)], "--images-per-concept", "all",
            "--ident-fraction", "1", "--batch-size", "1", "--top-k", str(TOP_K), "--no-progress"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    n_pairs = sum(len(expected_splits(world, c, fraction=1.0)[0]) for c in CONCEPTS)

    kill_after_first_commit([*args, "--warehouse", str(killed)], killed, timeout_s=120)
    done = warehouse.Warehouse.open(killed)
    (run_id,) = done.run_ids()
    assert 1 <= len(done.finished_pairs(run_id)) < n_pairs, "the subprocess finished before it was killed"

    code, out, _ = run_cli([*args, "--warehouse", str(killed)], capsys)
    assert code == 0 and f"run {run_id}:" in out and "already done (resumed)" in out
    code, out, _ = run_cli([*args, "--warehouse", str(clean)], capsys)
    assert code == 0 and f"run {run_id}:" in out and f"{n_pairs} pair(s) recorded" in out
    for table in KEYS:
        assert sorted_table(killed, table).equals(sorted_table(clean, table)), table
    assert not list(killed.rglob(".*.tmp"))  # files of the killed batch were collected
    files = {p.relative_to(killed).as_posix() for p in killed.rglob("*.parquet")}
    committed = {f.path for b in warehouse.Warehouse.open(killed).batches for f in b.files}
    assert files == committed


def test_a_fresh_default_world_gets_only_the_split_ingest_reads(adapter, tmp_path: Path, monkeypatch) -> None:
    """No --coco-root and no world at $KNEURON_WORLD: ingest generates the embedded world's split it reads (test),
    not train and val; a rerun generates nothing; a later run on another split adds that split."""
    from dataclasses import asdict
    from functools import partial

    import kneuron.engine.data.world as world_module
    from kneuron.engine.data.world import read_world_manifest, world_splits

    small = WorldConfig(seed=1, image_size=32, n_train=5, n_val=3, n_test=20)  # the default, smaller
    monkeypatch.setattr(world_module, "WorldConfig", partial(WorldConfig, **asdict(small)))
    root = tmp_path / "w"
    monkeypatch.setenv("KNEURON_WORLD", str(root))
    run = IngestConfig(concepts=("star",), images_per_concept=1, warehouse=str(tmp_path / "wh"), progress=False)
    notes: list[str] = []
    assert run_ingest(run, adapter=adapter, log=notes.append).recorded == 1
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "test", "world.json"]
    assert world_splits(read_world_manifest(root)) == ("test",)
    assert [n for n in notes if "generating" in n] == [f"generating the embedded world's test split into {root} (once)"]
    notes.clear()
    assert run_ingest(run, adapter=adapter, log=notes.append).already_done == 1
    assert not [n for n in notes if "generating" in n]
    assert ingest_plan.open_dataset(IngestConfig(split="val")).split == "val"
    assert world_splits(read_world_manifest(root)) == ("val", "test") and not (root / "train").exists()

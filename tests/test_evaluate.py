"""Suppression evaluation: the summary against a hand computation, an empty set giving zero drop in every
measure, what the runner stores (and reuses: unmodified captions, stored sets, finished jobs), image choice,
the TOML config and its one-line errors, and the `kneuron suppress` command."""
from __future__ import annotations

import csv
import dataclasses
import io
import math

import pytest
import torch

import engine.evaluate as evaluate_module
import warehouse
from engine.errors import KneuronError
from engine.eval.summary import ALL_CONCEPTS, ImageOutcome, markdown_table, paper_tables, summarize
from engine.evaluate import (EvalConfig, ScoreCache, choose_images, config_from_dict, load_config,
                             run_evaluation)
from engine.models.minigpt4_adapter import save_minigpt4
from engine.suppress import as_neuron_set, caption_images
from tests.eval_fixtures import RUN_ID, build_eval_world
from tests.tiny_models import tiny_minigpt4
from tests.cli_runner import run_cli

FAST = ("bleu4", "rougeL")  # BERTScore only where a test needs it (model load)




@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture()
def world(tmp_path):
    return build_eval_world(tmp_path)


def rows_of(summary, **where) -> list[dict]:
    return [r for r in summary.to_pylist() if all(r[k] == v for k, v in where.items())]


def one(summary, **where) -> dict:
    found = rows_of(summary, **where)
    assert len(found) == 1, (where, found)
    return found[0]


# ---------------------------------------------------------------------------------------------- summary
def outcome(concept, group, image_id, before, after, present, b_u, a_u, b_g, a_g, method="m"):  # noqa: ANN001
    return ImageOutcome(concept=concept, method=method, group=group, image_id=image_id, before=before, after=after,
                        present=present, scores_before={("bleu4", "unmodified"): b_u, ("bleu4", "ground_truth"): b_g},
                        scores_after={("bleu4", "unmodified"): a_u, ("bleu4", "ground_truth"): a_g}, n_neurons=4)


HAND = [
    outcome("dog", "target", 1, "a dog and a cat on a sofa", "a cat on a sofa", ("dog", "cat"), 1.0, 0.5, 0.4, 0.3),
    outcome("dog", "target", 2, "a dog on grass", "a dog on grass", ("dog",), 1.0, 1.0, 0.2, 0.2),
    outcome("dog", "other", 3, "a cat and a car", "a car", ("cat", "car"), 1.0, 0.6, 0.5, 0.1),
    outcome("dog", "other", 4, "a person", "a person riding", ("person",), 1.0, 0.8, 0.3, 0.3),
    outcome("cat", "target", 3, "a cat and a car", "a car", ("cat", "car"), 1.0, 0.2, 0.5, 0.1),
    outcome("cat", "other", 2, "a dog on grass", "grass", ("dog",), 1.0, 0.4, 0.2, 0.0),
]


def test_summary_equals_hand_computation():
    summary = summarize(HAND, metrics=("bleu4",))
    approx = pytest.approx

    def check(concept, group, measure, reference, before, after, drop, n):  # noqa: ANN001
        row = one(summary, concept=concept, method="m", group=group, measure=measure, reference=reference)
        assert (row["before"], row["after"], row["drop"], row["n"]) == (approx(before, nan_ok=True),
                                                                        approx(after, nan_ok=True), approx(drop), n)

    check("dog", "target", "bleu4", "unmodified", 1.0, 0.75, 0.25, 2)
    check("dog", "target", "bleu4", "ground_truth", 0.3, 0.25, 0.05, 2)
    check("dog", "other", "bleu4", "unmodified", 1.0, 0.7, 0.3, 2)
    check("dog", "other", "bleu4", "ground_truth", 0.4, 0.2, 0.2, 2)
    check("dog", "target", "mention", "", 1.0, 0.5, 0.5, 2)
    check("dog", "other", "mention", "", 0.0, 0.0, 0.0, 2)
    check("dog", "target", "retention", "", 1.0, 1.0, 0.0, 1)  # (image 1, cat): kept
    check("dog", "other", "retention", "", 1.0, 2 / 3, 1 / 3, 3)  # cat lost, car and person kept
    check("dog", "specificity", "bleu4", "unmodified", math.nan, math.nan, 0.25 - 0.3, 4)
    check("dog", "specificity", "mention", "", math.nan, math.nan, 0.5, 4)
    check("cat", "target", "bleu4", "unmodified", 1.0, 0.2, 0.8, 1)
    check("cat", "target", "retention", "", 1.0, 1.0, 0.0, 1)  # (image 3, car): kept
    check("cat", "other", "retention", "", 1.0, 0.0, 1.0, 1)  # (image 2, dog): lost
    check("cat", "other", "mention", "", 0.0, 0.0, 0.0, 1)
    # the "*" rows average the concepts
    check(ALL_CONCEPTS, "target", "bleu4", "unmodified", 1.0, (0.75 + 0.2) / 2, (0.25 + 0.8) / 2, 3)
    check(ALL_CONCEPTS, "other", "retention", "", 1.0, (2 / 3 + 0.0) / 2, (1 / 3 + 1.0) / 2, 4)
    check(ALL_CONCEPTS, "specificity", "bleu4", "unmodified", math.nan, math.nan,
          ((0.25 - 0.3) + (0.8 - 0.6)) / 2, 6)
    assert one(summary, concept=ALL_CONCEPTS, group="target", measure="mention")["n_neurons"] == 4.0


def test_retention_is_nan_without_mentioned_other_objects():
    summary = summarize([outcome("dog", "target", 1, "a dog", "a cat", ("dog", "cat"), 1, 0, 1, 0)], ("bleu4",))
    row = one(summary, concept="dog", group="target", measure="retention")
    assert math.isnan(row["after"]) and row["n"] == 0


def test_paper_tables_layout():
    summary = summarize(HAND + [dataclasses.replace(o, method="random", after=o.before,
                                                    scores_after=o.scores_before) for o in HAND], ("bleu4",))
    tables = paper_tables(summary, metrics=("bleu4",), methods=["random", "m"])
    scores = tables["scores vs unmodified captions"].to_pylist()
    assert [r["method"] for r in scores] == ["unmodified", "random", "m"]
    assert scores[0]["target BLEU-4"] == 1.0 and scores[0]["neurons"] is None
    assert scores[2]["target BLEU-4"] == pytest.approx(0.475) and scores[1]["target BLEU-4"] == 1.0
    assert scores[2]["target mention"] == pytest.approx((0.5 + 0.0) / 2)
    spec = {r["method"]: r for r in tables["drops and specificity (vs unmodified captions)"].to_pylist()}
    assert spec["random"]["BLEU-4 specificity"] == 0.0
    assert spec["m"]["BLEU-4 specificity"] == pytest.approx(((0.25 - 0.3) + (0.8 - 0.6)) / 2)
    text = markdown_table(tables["scores vs ground-truth captions"])
    assert text.splitlines()[0].startswith("| method | neurons | target BLEU-4 |")
    assert "| unmodified |  | 0.400 |" in text  # mean of the dog (0.3) and cat (0.5) before-scores


# ---------------------------------------------------------------------------------------------- scores
class CountingScorer:
    """Stands in for `CaptionScorer`: BLEU-4 from sacrebleu itself, counting the pairs it is asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def score(self, hyps, refs, metrics):  # noqa: ANN001
        import numpy as np
        import sacrebleu

        self.asked.extend(zip(hyps, (tuple(r) for r in refs)))
        return {"bleu4": np.array([sacrebleu.sentence_bleu(h, list(r)).score / 100 for h, r in zip(hyps, refs)])}


def test_score_cache_scores_each_pair_once():
    scorer = CountingScorer()
    cache = ScoreCache(scorer, ("bleu4",))
    pairs = [("a red circle on the plain background", ("a red circle on a plain background",)),
             ("a star", ("a star", "a blue star")), ("a red circle on the plain background",
                                                      ("a red circle on a plain background",))]
    first = cache.score(pairs)
    assert first[0] == first[2] and first[1]["bleu4"] == pytest.approx(1.0)
    assert cache.score(pairs[:2]) == first[:2]
    assert scorer.asked == pairs[:2]  # each distinct pair once, in order
    import sacrebleu
    assert first[0]["bleu4"] == sacrebleu.sentence_bleu(pairs[0][0], list(pairs[0][1])).score / 100


def test_stored_scores_equal_the_libraries_values(world, adapter):
    import sacrebleu
    from rouge_score import rouge_scorer

    result = run_evaluation(EvalConfig(methods=("two_stage",), concepts=("star",), metrics=FAST), world.warehouse,
                            adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        rows = con.execute("""SELECT s.image_id, s.text, u.text, v.metric, v.reference, v.value
                              FROM captions s
                              JOIN captions u USING (eval_id, concept, "group", image_id)
                              JOIN scores v ON v.eval_id = s.eval_id AND v.method = s.method
                                           AND v.concept = s.concept AND v.image_id = s.image_id
                              WHERE s.eval_id = ? AND s.method = 'two_stage' AND u.method = 'unmodified'""",
                           [result.eval_id]).fetchall()
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert len(rows) == 4 * 2 * len(world.evaluation["star"])
    for image_id, after, before, metric, reference, value in rows:
        refs = [before] if reference == "unmodified" else world.dataset.captions(image_id)
        expected = (sacrebleu.sentence_bleu(after, refs).score / 100 if metric == "bleu4"
                    else rouge.score_multi(refs, after)["rougeL"].fmeasure)
        assert value == pytest.approx(expected, abs=1e-6)  # stored as float32


# ---------------------------------------------------------------------------------------------- the runner
def test_empty_set_gives_zero_drop_in_every_measure(world, adapter):
    config = EvalConfig(methods=("random",), budget=0, batch_size=4)  # all three metrics, BERTScore included
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    measured = rows_of(result.summary, method="random")
    assert {r["measure"] for r in measured} == {"bleu4", "rougeL", "bertscore", "mention", "retention"}
    assert {r["reference"] for r in measured if r["measure"] == "bertscore"} == {"unmodified", "ground_truth"}
    for row in measured:
        assert row["drop"] == 0.0 or (row["measure"] == "retention" and math.isnan(row["drop"])), row
        if row["group"] != "specificity" and row["measure"] != "retention":
            assert row["after"] == row["before"], row
    with warehouse.connect(world.warehouse) as con:
        same = con.execute("""SELECT count(*) FILTER (WHERE s.text = u.text), count(*)
                          FROM captions s JOIN captions u USING (eval_id, concept, "group", image_id)
                          WHERE s.condition = 'suppressed' AND u.condition = 'unmodified'""").fetchone()
    assert same[0] == same[1] > 0


def test_runner_stores_captions_scores_sets_and_resumes(world, adapter, monkeypatch):
    config = EvalConfig(methods=("two_stage", "random_layer_matched"), metrics=FAST, batch_size=3, seed=1)
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert result.run_id == RUN_ID and result.concepts == ["circle", "square", "star"]
    assert (result.jobs_run, result.jobs_skipped) == (9, 0)
    with warehouse.connect(world.warehouse) as con:
        captions = con.sql("SELECT * FROM captions ORDER BY concept, method, \"group\", image_id").to_arrow_table()
        n_scores = con.execute("SELECT count(*) FROM scores").fetchone()[0]
        sets = con.execute("SELECT set_id, concept, count(*) AS n, any_value(params_json) AS p FROM neuron_sets "
                       "WHERE method = 'random_layer_matched' GROUP BY ALL ORDER BY concept").fetchall()
        evals = con.execute("SELECT eval_id, run_id FROM evals").fetchall()
    assert evals == [(result.eval_id, RUN_ID)]
    per_concept = {c: len(world.evaluation[c]) for c in world.two_stage}
    # unmodified + 2 methods, each over target and (matched) other images
    assert captions.num_rows == sum(3 * 2 * n for n in per_concept.values())
    truth_rows = sum(2 * n * 3 for n in per_concept.values())  # every world image has ground-truth captions
    assert n_scores == 2 * (truth_rows + truth_rows)  # 2 metrics x (vs unmodified + vs ground truth)
    assert [(concept, n) for _, concept, n, _ in sets] == [(c, len(world.two_stage[c][1])) for c in sorted(per_concept)]
    assert all('"budget_of":"ts-' in p for *_, p in sets)

    # the stored suppressed captions equal a direct caption_images call with the set
    rows = [r for r in captions.to_pylist() if r["concept"] == "square" and r["method"] == "two_stage"]
    ids = [r["image_id"] for r in rows]
    direct = caption_images(adapter, [world.dataset.load_image(i) for i in ids],
                            as_neuron_set(world.two_stage["square"][1]), batch_size=5)
    assert [r["text"] for r in rows] == direct.texts
    assert all(r["set_id"] == "ts-square" for r in rows)

    # rerun: everything is stored, nothing is generated
    calls = []
    monkeypatch.setattr(evaluate_module, "caption_images", lambda *a, **k: calls.append(a) or caption_images(*a, **k))
    again = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert (again.eval_id, again.jobs_run, again.jobs_skipped, calls) == (result.eval_id, 0, 9, [])
    assert again.summary.to_pandas().fillna(-1).equals(result.summary.to_pandas().fillna(-1))

    # another evaluation of the same run reuses the stored random set and the unmodified captions
    other = dataclasses.replace(config, methods=("random_layer_matched",), metrics=("bleu4",))
    third = run_evaluation(other, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert third.eval_id != result.eval_id and third.jobs_run == 6
    assert all(call[2] is not None for call in calls)  # no unmodified captioning (neurons None)
    with warehouse.connect(world.warehouse) as con:
        assert con.execute("SELECT count(DISTINCT set_id) FROM neuron_sets WHERE method = 'random_layer_matched'"
                       ).fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM evals").fetchone()[0] == 2
    before = one(third.summary, concept=ALL_CONCEPTS, method="random_layer_matched", group="target",
                 measure="bleu4", reference="unmodified")
    assert before == one(result.summary, concept=ALL_CONCEPTS, method="random_layer_matched", group="target",
                         measure="bleu4", reference="unmodified")


def test_choose_images_is_seeded_disjoint_and_matched(world):
    contains = lambda image_id, concept: concept in world.dataset.concepts_in(image_id)  # noqa: E731
    config = EvalConfig(seed=0)
    images = choose_images(config, ["circle", "star"], world.evaluation, contains)
    assert images == choose_images(config, ["circle", "star"], world.evaluation, contains)
    pool = {i for ids in world.evaluation.values() for i in ids}
    for concept in ("circle", "star"):
        assert images.target[concept] == world.evaluation[concept]
        assert len(images.other[concept]) == len(images.target[concept])
        assert set(images.other[concept]) <= pool
        assert not any(contains(i, concept) for i in images.other[concept])
    capped = choose_images(EvalConfig(seed=0, max_images=2, n_other=5), ["star"], world.evaluation, contains)
    assert len(capped.target["star"]) == 2 and set(capped.target["star"]) <= set(world.evaluation["star"])
    assert len(capped.other["star"]) == 5
    seeds = {tuple(choose_images(EvalConfig(seed=s), ["circle"], world.evaluation, contains).other["circle"])
             for s in range(6)}
    assert len(seeds) > 1


def test_runner_errors_are_one_line(world, adapter):
    with pytest.raises(KneuronError, match="no two_stage neuron set for concept.*'heart'"):
        run_evaluation(EvalConfig(concepts=("heart",), metrics=FAST), world.warehouse, adapter=adapter,
                       dataset=world.dataset, progress=False)
    with pytest.raises(KneuronError, match="run 'nope' is not in warehouse"):
        run_evaluation(EvalConfig(run_id="nope", metrics=FAST), world.warehouse, adapter=adapter,
                       dataset=world.dataset, progress=False)
    with pytest.raises(KneuronError, match="unknown method 'gradcam'"):
        run_evaluation(EvalConfig(methods=("gradcam",)), world.warehouse, adapter=adapter, progress=False)
    missing = world.warehouse.parent / "no-warehouse"
    with pytest.raises(KneuronError, match="no-warehouse"):
        run_evaluation(EvalConfig(metrics=FAST), missing, adapter=adapter, dataset=world.dataset, progress=False)
    assert not missing.exists()
    config = EvalConfig(methods=("random",), concepts=("star",), metrics=("bleu4",), eval_id="mine")
    run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with pytest.raises(KneuronError, match="evaluation 'mine' is stored with other settings"):
        run_evaluation(dataclasses.replace(config, seed=9), world.warehouse, adapter=adapter, dataset=world.dataset,
                       progress=False)


# ---------------------------------------------------------------------------------------------- config
FULL_TOML = """
run = "tiny-run"
concepts = ["circle", "star"]
methods = ["two_stage", "random", "dai"]
budget = 5
n_other = "match"
max_images = 3
seed = 7
batch_size = 2
max_new_tokens = 6

[budget_per_concept]
star = 2

[metrics]
names = ["bleu4", "rougeL"]
bertscore_model = "roberta-large"

[selection]
stage1 = "q:0.9"
stage2 = "top:4"
aggregate = "mean"

[baselines.dai]
steps = 4
threshold_ratio = 0.3
"""


def test_toml_config_is_parsed(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text(FULL_TOML)
    config = load_config(path)
    assert (config.run_id, config.concepts, config.methods) == ("tiny-run", ("circle", "star"),
                                                                ("two_stage", "random", "dai"))
    assert (config.budget, config.budget_per_concept, config.max_images, config.seed) == (5, {"star": 2}, 3, 7)
    assert (config.batch_size, config.max_new_tokens, config.metrics) == (2, 6, ("bleu4", "rougeL"))
    assert config.metric_config.bertscore_model == "roberta-large"
    assert config.selection == {"stage1": "q:0.9", "stage2": "top:4", "aggregate": "mean"}
    assert config.baseline_options == {"dai": {"steps": 4, "threshold_ratio": 0.3}}


@pytest.mark.parametrize("text, message", [
    ("methods = [\"two_stage\"\n", "bad TOML in .*eval.toml: "),
    ("colour = 1\n", "eval.toml: unknown key 'colour'"),
    ("budget = \"lots\"\n", "eval.toml: budget must be 'same_as:two_stage' or a whole number"),
    ("budget = 2.5\n", "eval.toml: budget must be a whole number, got 2.5"),
    ("methods = [\"two_stage\", \"gradcam\"]\n", "eval.toml: unknown method 'gradcam'"),
    ("concepts = \"circle\"\n", "eval.toml: concepts must be a list of strings"),
    ("[metrics]\nnames = [\"meteor\"]\n", "eval.toml: unknown metric 'meteor'"),
    ("[metrics]\nmodel = \"x\"\n", "eval.toml: unknown key 'model' in \\[metrics\\]"),
    ("[baselines.gradcam]\nsteps = 3\n", "eval.toml: options for unknown baseline 'gradcam'"),
    ("[selection]\nstage3 = \"auto\"\n", "eval.toml: unknown key 'stage3' in \\[selection\\]"),
])
def test_toml_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "eval.toml"
    path.write_text(text)
    with pytest.raises(KneuronError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_config_from_dict_defaults():
    config = config_from_dict({})
    assert config == EvalConfig()
    assert config.methods == ("two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched", "pan",
                              "dai")


def test_selection_thresholds_in_the_config_select_and_store_sets(world, adapter):
    config = EvalConfig(methods=("two_stage", "stage1_only"), concepts=("circle",), metrics=("bleu4",),
                        selection={"stage1": "top:20", "stage2": "top:5"})
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        used = con.execute("SELECT DISTINCT c.method, n.n FROM captions c JOIN (SELECT set_id, count(*) AS n "
                       "FROM neuron_sets GROUP BY set_id) n USING (set_id) ORDER BY 1").fetchall()
        new_sets = con.execute("SELECT count(DISTINCT set_id) FROM neuron_sets WHERE concept = 'circle'").fetchone()[0]
    assert used == [("stage1_only", 5), ("two_stage", 5)]
    assert new_sets == 4  # the hand-made two_stage set + the selection's two_stage, stage1_only, stage2_only
    assert one(result.summary, concept="circle", method="two_stage", group="target", measure="bleu4",
               reference="unmodified")["n_neurons"] == 5.0


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_prints_the_table_and_writes_csv_and_markdown(tmp_path, adapter, capsys):
    model_dir = save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "model")
    world = build_eval_world(tmp_path, model_name=str(model_dir))
    config = tmp_path / "eval.toml"
    config.write_text('methods = ["two_stage", "random"]\nbatch_size = 4\ndevice = "cpu"\n'
                      '[metrics]\nnames = ["bleu4", "rougeL"]\n')
    out_csv, out_md = tmp_path / "out" / "summary.csv", tmp_path / "out" / "summary.md"
    code, out, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(config),
                              "--concept", "circle", "--concept", "star", "--csv", str(out_csv),
                              "--markdown", str(out_md), "--no-progress"], capsys)
    assert code == 0, err
    assert "evaluation eval-" in out and "2 concept(s) x 2 method(s); 6 job(s) run" in out
    lines = out.splitlines()
    header = lines.index("## scores vs unmodified captions")
    assert lines[header + 2].startswith("| method | neurons | target BLEU-4 | target ROUGE-L | other BLEU-4 |")
    assert [line.split("|")[1].strip() for line in lines[header + 4:header + 7]] == ["unmodified", "two_stage",
                                                                                      "random"]
    assert "## drops and specificity (vs unmodified captions)" in out
    assert out_md.read_text() == out[out.index("# Suppression evaluation"):]
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert {r["concept"] for r in rows} == {"*", "circle", "star"}
    assert {r["method"] for r in rows} == {"two_stage", "random"}
    assert {"concept", "method", "group", "measure", "reference", "before", "after", "drop", "n", "n_neurons"} \
        == set(rows[0])

    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(tmp_path / "no.toml")],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot read config" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("budget = [\n")
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("kneuron: error: bad TOML in")
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--budget", "x"], capsys)
    assert code == 2 and "--budget must be a whole number" in err

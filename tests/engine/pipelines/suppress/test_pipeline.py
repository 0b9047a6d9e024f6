"""The suppress pipeline (`kneuron.engine.pipelines.suppress.pipeline`): what it stores (and reuses: unmodified
captions, stored
sets, finished jobs), an empty set giving zero drop in every measure, the stored scores against the metric
libraries, eval ids equal to those of earlier versions (so old warehouses resume), which two_stage set it uses
(current, given, selected now) and says so, progress lines, one-line errors, and the `kneuron suppress` command."""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from datetime import datetime, timezone

import numpy as np
import pytest

import kneuron.engine.pipelines.suppress.evaluation as suppress_module
from kneuron import queries, warehouse
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.eval.metrics import CaptionScorer, MetricConfig
from kneuron.engine.eval.summary import ALL_CONCEPTS
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.sets import current_set_ids, store_sets
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.engine.signals.neurons import as_neuron_set
from kneuron.queries.selection import set_rows
from tests.helpers.cli_runner import run_cli
from tests.helpers.eval_fixtures import FAST, RUN_ID, TWO_STAGE_PARAMS, build_eval_world, one, rows_of
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture()
def world(tmp_path):
    return build_eval_world(tmp_path)


class PinnedScorer(CaptionScorer):
    """`CaptionScorer` whose BERTScore id does not follow the installed package version (it enters the eval id)."""

    model_id = "pinned-bertscore"


# ---------------------------------------------------------------------------------------------- scores
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
                          WHERE s.condition = 'suppressed' AND u.condition = 'unmodified'""").fetchall()[0]
    assert same[0] == same[1] > 0


def test_runner_stores_captions_scores_sets_and_resumes(world, adapter, monkeypatch):
    config = EvalConfig(methods=("two_stage", "random_layer_matched"), metrics=FAST, batch_size=3, seed=1)
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert result.run_id == RUN_ID and result.concepts == ["circle", "square", "star"]
    assert (result.jobs_run, result.jobs_skipped) == (9, 0)
    with warehouse.connect(world.warehouse) as con:
        captions = con.sql("SELECT * FROM captions ORDER BY concept, method, \"group\", image_id").to_arrow_table()
        n_scores = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
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
    calls: list[tuple] = []

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args)
        return caption_images(*args, **kwargs)

    def counting_sets(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.extend((args[0], args[1], s) for s in args[2])  # one call per set: (adapter, images, set)
        return caption_under_sets(*args, **kwargs)

    monkeypatch.setattr(suppress_module, "caption_images", counting)
    monkeypatch.setattr(suppress_module, "caption_under_sets", counting_sets)
    again = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert (again.eval_id, again.jobs_run, again.jobs_skipped, calls) == (result.eval_id, 0, 9, [])
    assert again.summary.to_pandas().fillna(-1).equals(result.summary.to_pandas().fillna(-1))

    # another evaluation of the same run reuses the stored random set and the unmodified captions
    other = dataclasses.replace(config, methods=("random_layer_matched",), metrics=("bleu4",))
    third = run_evaluation(other, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert third.eval_id != result.eval_id and third.jobs_run == 6
    assert calls and all(call[2] is not None for call in calls)  # no unmodified captioning (neurons None)
    with warehouse.connect(world.warehouse) as con:
        assert con.execute("SELECT count(DISTINCT set_id) FROM neuron_sets WHERE method = 'random_layer_matched'"
                           ).fetchall()[0][0] == 3
        assert con.execute("SELECT count(*) FROM evals").fetchall()[0][0] == 2
    before = one(third.summary, concept=ALL_CONCEPTS, method="random_layer_matched", group="target",
                 measure="bleu4", reference="unmodified")
    assert before == one(result.summary, concept=ALL_CONCEPTS, method="random_layer_matched", group="target",
                         measure="bleu4", reference="unmodified")


def test_eval_ids_are_those_of_earlier_versions(world, adapter):
    """Ids computed by the single-module runner (engine/evaluate.py) on the same world: same settings, same id,
    so evaluations stored before the split resume."""
    configs = [
        (EvalConfig(methods=("two_stage", "random_layer_matched"), metrics=FAST, batch_size=3, seed=1),
         "eval-fbc72185e7a6"),
        (EvalConfig(methods=("two_stage",), sets=("ts-star",), metrics=FAST), "eval-85622ff48437"),
        (EvalConfig(methods=("random",), budget=0, metrics=FAST, max_images=2, n_other=3, concepts=("square",)),
         "eval-f65c93632c32"),
        (EvalConfig(methods=("two_stage", "stage1_only"), concepts=("circle",), metrics=("bleu4",),
                    selection={"stage1": "top:20", "stage2": "top:5"}), "eval-d1a6c5c859ce"),
    ]
    for config, eval_id in configs:
        result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset,
                                scorer=PinnedScorer(MetricConfig()), progress=False)
        assert result.eval_id == eval_id, config


def test_stage_baselines_rank_the_stored_signals(world, adapter):
    config = EvalConfig(methods=("stage2_only",), concepts=("square",), metrics=("bleu4",),
                        budget_per_concept={"square": 3})
    run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        stored = con.execute("SELECT layer, unit, params_json FROM neuron_sets WHERE method = 'stage2_only' "
                             "ORDER BY score DESC, layer, unit").fetchall()
        stats = con.sql("SELECT layer, unit, avg(g_max) AS g FROM neuron_stats WHERE concept = 'square' "
                        "GROUP BY layer, unit").fetchnumpy()
    order = np.lexsort((stats["unit"], stats["layer"], -stats["g"]))[:3]
    assert [(layer, unit) for layer, unit, _ in stored] == [(int(stats["layer"][i]), int(stats["unit"][i]))
                                                            for i in order]
    assert all('"budget":3' in p and '"budget_of":"ts-square"' in p and '"resolved":{"n_selected":3}' in p
               for *_, p in stored)


# ---------------------------------------------------------------------------------------------- reference sets
def add_star_set(world, set_id: str, neurons: list[tuple[int, int]], when: datetime,  # noqa: ANN001
                 make_current: bool) -> None:
    """Store a two_stage set of 'star' (made at ``when``), optionally chosen as current now."""
    scored = [(layer, unit, 1.0) for layer, unit in neurons]
    table = set_rows(RUN_ID, "star", "two_stage", set_id, TWO_STAGE_PARAMS, scored, when, {"n_selected": len(neurons)})
    with warehouse.Warehouse.open(world.warehouse, create=True) as wh:
        store_sets(wh, table, make_current=[set_id] if make_current else [])


def test_the_current_set_is_used_and_named_in_the_log(world, adapter):
    star = world.two_stage["star"][1]
    add_star_set(world, "ts-star-newer", star[:2], datetime(2025, 6, 1, tzinfo=timezone.utc), make_current=False)
    config = EvalConfig(methods=("two_stage",), concepts=("star",), metrics=("bleu4",))
    lines: list[str] = []
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, log=lines.append)
    assert "concept 'star': two_stage set ts-star-newer (2 neurons; current)" in lines  # latest stored
    assert one(result.summary, concept="star", method="two_stage", group="target", measure="mention")["n_neurons"] == 2
    # progress: one final line (the test takes less than 30 s), counting every caption made
    n_images = 2 * len(world.evaluation["star"])
    final = [line for line in lines if line.startswith("suppress: captions: ")]
    assert len(final) == 1 and re.fullmatch(rf"suppress: captions: {2 * n_images}/{2 * n_images} \(.*, took .*\)",
                                            final[0]), lines

    add_star_set(world, "ts-star", star, datetime(2025, 1, 1, tzinfo=timezone.utc), make_current=True)  # chosen
    with queries.connect(world.warehouse) as con:
        assert current_set_ids(con, RUN_ID, "two_stage")[("star", "two_stage")] == "ts-star"
    lines.clear()
    again = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, log=lines.append,
                           progress=False)
    assert "concept 'star': two_stage set ts-star (6 neurons; current)" in lines
    assert not [line for line in lines if line.startswith("suppress: captions")]  # progress off
    assert again.eval_id != result.eval_id

    lines.clear()
    given = run_evaluation(dataclasses.replace(config, sets=("ts-star-newer",), concepts=()), world.warehouse,
                           adapter=adapter, dataset=world.dataset, log=lines.append, progress=False)
    assert given.concepts == ["star"] and "concept 'star': two_stage set ts-star-newer (2 neurons; given)" in lines


def test_selection_thresholds_in_the_config_select_and_store_sets(world, adapter):
    config = EvalConfig(methods=("two_stage", "stage1_only"), concepts=("circle",), metrics=("bleu4",),
                        selection={"stage1": "top:20", "stage2": "top:5"})
    lines: list[str] = []
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False,
                            log=lines.append)
    with queries.connect(world.warehouse) as con:
        used = con.execute("SELECT DISTINCT c.method, n.n, c.set_id FROM captions c JOIN (SELECT set_id, count(*) AS n "
                           "FROM neuron_sets GROUP BY set_id) n USING (set_id) ORDER BY 1").fetchall()
        current = current_set_ids(con, RUN_ID)
        [(new_sets,)] = con.execute("SELECT count(DISTINCT set_id) FROM neuron_sets "
                                    "WHERE concept = 'circle'").fetchall()
    assert [(method, n) for method, n, _ in used] == [("stage1_only", 5), ("two_stage", 5)]
    assert new_sets == 4  # the hand-made two_stage set + the selection's two_stage, stage1_only, stage2_only
    # every selected set is now current, as after `kneuron select`
    assert current[("circle", "two_stage")] == used[1][2] and current[("circle", "stage1_only")] == used[0][2]
    assert f"concept 'circle': two_stage set {used[1][2]} (5 neurons; selected now)" in lines
    assert one(result.summary, concept="circle", method="two_stage", group="target", measure="bleu4",
               reference="unmodified")["n_neurons"] == 5.0


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
    with pytest.raises(KneuronError, match="neuron set 'nope' is not in run 'tiny-run'"):
        run_evaluation(EvalConfig(sets=("nope",), metrics=FAST), world.warehouse, adapter=adapter,
                       dataset=world.dataset, progress=False)
    with pytest.raises(KneuronError, match="two sets given for concept 'star'"):
        add_star_set(world, "ts-star-2", [(0, 1)], datetime(2025, 2, 1, tzinfo=timezone.utc), make_current=False)
        run_evaluation(EvalConfig(sets=("ts-star", "ts-star-2"), metrics=FAST), world.warehouse, adapter=adapter,
                       dataset=world.dataset, progress=False)
    config = EvalConfig(methods=("random",), concepts=("star",), metrics=("bleu4",), eval_id="mine")
    run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with pytest.raises(KneuronError, match="evaluation 'mine' is stored with other settings"):
        run_evaluation(dataclasses.replace(config, seed=9), world.warehouse, adapter=adapter, dataset=world.dataset,
                       progress=False)


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
    assert "two_stage set ts-circle (6 neurons; current)" in err and "suppress: captions" not in err
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

    # --set: that set's concept only; the progress line on stderr
    code, out, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(config),
                              "--set", "ts-square", "--method", "two_stage"], capsys)
    assert code == 0, err
    assert "1 concept(s) x 1 method(s); 2 job(s) run" in out
    assert "kneuron: concept 'square': two_stage set ts-square (6 neurons; given)" in err
    assert re.search(r"kneuron: suppress: captions: (\d+)/\1 ", err), err

    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--set", "nope"], capsys)
    assert code == 2 and err.count("\n") == 1 and "neuron set 'nope' is not in run" in err
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(tmp_path / "no.toml")],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot read config" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("budget = [\n")
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("kneuron: error: bad TOML in")
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--budget", "x"], capsys)
    assert code == 2 and "--budget must be a whole number" in err

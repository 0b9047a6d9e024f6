"""Budget evaluations of the suppress pipeline (`kneuron.engine.pipelines.suppress.pipeline` with
``EvalConfig.budgets``): one stored
set per (method, budget) under its label, nested sets, two_stage at n equal to ``select --stage2 top:n``, a set
smaller than its budget noted, resume, the printed budget tables, the report section and its figure."""
from __future__ import annotations

import dataclasses
import json

import pytest

from kneuron import queries, warehouse
from kneuron.engine.eval.budget import budget_curves
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.eval.evidence import SPECIFICITY_TITLE
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.report.budget import budget_section
from kneuron.engine.pipelines.report.pipeline import ReportConfig, build_report
from kneuron.engine.pipelines.run import RunReader
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.queries.selection import SelectionConfig, ThresholdSpec, run_selection
from tests.helpers.cli_runner import run_cli
from tests.helpers.eval_fixtures import FAST, RUN_ID, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4

METHODS = ("two_stage", "two_stage_specific", "stage2_only", "random_nonmassive")
BUDGETS = (1, 2, 4, 200)  # 200 > |C_k|: two_stage holds C_k and says so


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, adapter):
    world = build_eval_world(tmp_path_factory.mktemp("budget"))
    config = EvalConfig(methods=METHODS, budgets=BUDGETS, metrics=FAST, max_images=2, batch_size=4,
                        concepts=("circle", "star"), baseline_options={"two_stage_specific": {"specific": "ratio1:0"}})
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    return world, config, result


def stored(world) -> dict[tuple[str, str], set[tuple[int, int]]]:  # noqa: ANN001
    with warehouse.connect(world.warehouse) as con:
        rows = con.execute("SELECT concept, method, layer, unit FROM neuron_sets").fetchall()
    out: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for concept, method, layer, unit in rows:
        out.setdefault((concept, method), set()).add((layer, unit))
    return out


def test_every_method_and_budget_is_its_own_labelled_set(evaluated):
    world, _, result = evaluated
    assert result.methods == [f"{m}@{n}" for m in METHODS for n in BUDGETS]
    assert result.budgets == BUDGETS and result.jobs_run == 2 * (1 + len(METHODS) * len(BUDGETS))
    with warehouse.connect(world.warehouse) as con:
        labels = con.execute("SELECT DISTINCT concept, method FROM captions WHERE condition = 'suppressed'").fetchall()
        params = con.execute("SELECT DISTINCT method, params_json FROM neuron_sets WHERE concept = 'star' "
                             "AND method LIKE '%@%'").fetchall()
    assert sorted(labels) == sorted((c, label) for c in ("circle", "star") for label in result.methods)
    for method, text in params:
        assert json.loads(text)["budget"] == int(method.rsplit("@", 1)[1])
    sets = stored(world)
    for concept in ("circle", "star"):  # the reference sets stay the only two_stage sets
        assert sets[(concept, "two_stage")] == set(world.two_stage[concept][1])


def test_budget_sets_are_nested(evaluated):
    world, _, _ = evaluated
    sets = stored(world)
    for concept in ("circle", "star"):
        for method in METHODS:
            chain = [sets.get((concept, f"{method}@{n}"), set()) for n in BUDGETS]
            for small, large in zip(chain, chain[1:], strict=False):
                assert small <= large, (concept, method)
            assert [len(s) for s in chain[:3]] == [1, 2, 4] or method == "two_stage_specific"


def test_two_stage_at_n_is_select_with_a_stage_2_budget(evaluated):
    world, _, result = evaluated
    sets = stored(world)
    with warehouse.connect(world.warehouse) as con:
        for n in BUDGETS:
            selection = run_selection(con, SelectionConfig(run_id=RUN_ID, concepts=("star",),
                                                           stage2=ThresholdSpec("budget", n), baselines=False))
            rows = selection.neuron_sets.to_pylist()
            assert sets[("star", f"two_stage@{n}")] == {(r["layer"], r["unit"]) for r in rows}
        n_candidates = selection.summary.to_pylist()[0]["n_candidates"]
    assert len(sets[("star", "two_stage@200")]) == n_candidates < 200
    assert any(note.startswith(f"two_stage@200 for 'star': {n_candidates} neuron(s) instead of 200 (its pool "
                               f"holds {n_candidates})") for note in result.notes), result.notes


def test_rerun_resumes_and_tables_match_the_summary(evaluated, adapter):
    world, config, result = evaluated
    again = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert (again.eval_id, again.jobs_run) == (result.eval_id, 0)
    tables = again.tables()
    curves, scores, *evidence_tables = list(tables.values())
    assert [*tables][2:] == ([SPECIFICITY_TITLE] if again.evidence is not None else [])
    rows = {(r["method"], r["budget"]): r for r in curves.to_pylist()}
    summary = again.summary.to_pylist()
    for method in METHODS:
        for n in BUDGETS:
            target = next(r for r in summary if r["concept"] == "*" and r["method"] == f"{method}@{n}"
                          and r["group"] == "target" and r["measure"] == "mention")
            other = next(r for r in summary if r["concept"] == "*" and r["method"] == f"{method}@{n}"
                         and r["group"] == "other" and r["measure"] == "retention")
            assert rows[(method, n)]["target_mention_drop"] == target["drop"]
            assert rows[(method, n)]["other_mention_drop"] == pytest.approx(other["drop"], nan_ok=True)
    assert [r["method"] for r in scores.to_pylist()] == list(METHODS)
    assert budget_curves(again.summary).num_rows == len(METHODS) * len(BUDGETS) * 3  # "*", circle, star


def test_report_shows_the_budget_section(evaluated, tmp_path):
    world, _, result = evaluated
    report = build_report(world.warehouse, tmp_path / "report", ReportConfig(with_model=False))
    html = report.html.read_text()
    assert "Budget curves and specificity" in html and result.eval_id in html
    figure = tmp_path / "report" / "figures" / "budget-curves.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.summary["budget"]["eval_id"] == result.eval_id
    assert [r["method"] for r in report.summary["budget"]["scores"]] == list(METHODS)
    with RunReader(world.warehouse) as run:
        section, entry = budget_section(run, world.dataset, tmp_path / "named", eval_id=result.eval_id)
        assert entry["eval_id"] == result.eval_id and (tmp_path / "named" / "figures" / "budget-curves.png").exists()
        section, entry = budget_section(run, world.dataset, tmp_path / "none", eval_id="eval-nope")
    assert entry == {} and "Budget evaluation: not run" in section.blocks[0].text  # type: ignore[union-attr]


def test_report_without_a_budget_evaluation_says_so(tmp_path):
    world = build_eval_world(tmp_path, with_stats=False)
    report = build_report(world.warehouse, tmp_path / "report", ReportConfig(with_model=False))
    assert "Budget evaluation: not run" in report.html.read_text() and "budget" not in report.summary
    assert not (tmp_path / "report" / "figures" / "budget-curves.png").exists()


def test_cli_budgets(tmp_path, adapter, capsys):
    model_dir = save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "model")
    world = build_eval_world(tmp_path, model_name=str(model_dir))
    config = tmp_path / "eval.toml"
    config.write_text('methods = ["two_stage", "random"]\nbatch_size = 4\ndevice = "cpu"\nmax_images = 2\n'
                      '[metrics]\nnames = ["bleu4"]\n')
    code, out, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--config", str(config),
                              "--concept", "star", "--budgets", "2,1", "--no-progress"], capsys)
    assert code == 0, err
    assert "1 concept(s) x 2 method(s) x 2 budget(s); 5 job(s) run" in out
    assert "## budget curves (mean over concepts" in out and "## specificity per method" in out
    assert "| two_stage | 1 | 1.000 |" in out and "| random | 2 | 2.000 |" in out
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--budgets", "1,x"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--budgets needs whole numbers" in err
    code, _, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--budgets", "0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "budgets must be whole numbers >= 1" in err
    with queries.connect(world.warehouse) as con:
        assert con.execute("SELECT count(*) FROM neuron_sets WHERE method = 'two_stage@2'").fetchall()[0][0] == 2


def test_fragility_check_counts_fragile_units_per_method(evaluated, adapter):
    from kneuron.engine.pipelines.suppress.fragility import check_images
    from kneuron.engine.signals.fragility import caption_change_rate

    world, config, result = evaluated
    small = dataclasses.replace(config, methods=("two_stage", "random_nonmassive"), budgets=(1, 2),
                                fragility_images=3)
    again = run_evaluation(small, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert again.eval_id != result.eval_id and again.fragility is not None  # other methods: another evaluation
    rows = {(r["method"], r["budget"]): r for r in again.fragility.to_pylist()}
    assert list(rows) == [("two_stage", 1), ("two_stage", 2), ("random_nonmassive", 1), ("random_nonmassive", 2)]
    assert all(r["n_sets"] == 2 for r in rows.values())
    ids = check_images(world.ident, ["circle", "star"], 3, 0)
    assert len(ids) == 3 and set(ids) <= set(world.ident["circle"]) | set(world.ident["star"])
    sets = stored(world)
    units = set().union(*(sets[(c, f"{m}@{n}")] for c in ("circle", "star") for m, n in rows))
    rates = caption_change_rate(adapter, [world.dataset.load_image(i) for i in ids], units)
    fragile = {u for u, r in rates.items() if r >= 0.5}
    for (method, n), row in rows.items():
        hits = [len(fragile & sets[(c, f"{method}@{n}")]) for c in ("circle", "star")]
        assert row["fragile_per_set"] == sum(hits) / 2 and row["sets_with_fragile"] == sum(h > 0 for h in hits)
    assert any(note.startswith(f"fragility: {len(fragile)} of {len(units)} unit(s)") for note in again.notes)
    assert any(note.startswith("massive units (k=10): stored-signal rule") for note in again.notes)


def test_report_shows_every_budget_evaluation_latest_first(tmp_path, adapter):
    world = build_eval_world(tmp_path)
    ids = []
    for budgets in ((1, 2), (1, 4)):
        config = EvalConfig(methods=("two_stage", "random"), budgets=budgets, metrics=FAST, max_images=2,
                            batch_size=4, concepts=("star",))
        ids.append(run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset,
                                  progress=False).eval_id)
    report = build_report(world.warehouse, tmp_path / "report", ReportConfig(with_model=False))
    html = report.html.read_text()
    assert report.summary["budget"]["evaluations"] == ids[::-1] and report.summary["budget"]["eval_id"] == ids[1]
    assert html.index(f"Budget evaluation {ids[1]}") < html.index(f"Budget evaluation {ids[0]}")
    assert "the latest of this run" in html and "an earlier one" in html
    assert (tmp_path / "report" / "figures" / f"budget-curves-{ids[0]}.png").exists()
    assert "T 95% CI" in html and "95% CI (concepts)" in html

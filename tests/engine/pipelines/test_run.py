"""`kneuron.engine.pipelines.run.RunReader`: the run, its current sets (through `current_set_ids`), a named set, the
model note."""
from __future__ import annotations

from pathlib import Path

import pytest

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.run import RunReader, strongest_first
from tests.helpers.hf_tiny import tiny_adapter
from tests.helpers.report_fixtures import OLD_SET, OLD_SET_ID, RUN, SETS, build, choose


def rounded(members: list) -> list:
    """Members with their (float32-stored) scores rounded to 6 digits."""
    return [(layer, unit, None if score is None else round(score, 6)) for layer, unit, score in members]


@pytest.fixture()
def root(tmp_path, report_world, report_model_dir) -> Path:  # noqa: ANN001
    return build(tmp_path / "wh", report_world, report_model_dir, with_scores=False)


def test_the_latest_run_and_its_row(root) -> None:  # noqa: ANN001
    with RunReader(root) as run:
        assert run.run_id == RUN and run.row["n_layers"] == 3 and run.config["identity"]["split"] == "test"
        assert set(run.images()) == {"circle", "square"}


def test_unknown_run_and_empty_warehouse(root, tmp_path) -> None:  # noqa: ANN001
    from kneuron import warehouse

    with pytest.raises(KneuronError, match="unknown run 'nope'; runs in the warehouse: tiny-run"):
        RunReader(root, "nope")
    with warehouse.Warehouse.open(tmp_path / "empty", create=True):
        pass
    with pytest.raises(KneuronError, match="has no runs; run `kneuron ingest` first"):
        RunReader(tmp_path / "empty")


def test_chosen_set_is_the_current_set_strongest_first(root) -> None:  # noqa: ANN001
    with RunReader(root) as run:
        concept, members, what = run.chosen_set("circle", "two_stage", None)
        assert concept == "circle" and rounded(members) == SETS[("circle", "two_stage")]  # stored by score, not (l, u)
        assert what == "circle (two_stage, 3 neurons, set circle-two_stage)"
        assert run.current_set_ids("two_stage") == {("circle", "two_stage"): "circle-two_stage",
                                                    ("square", "two_stage"): "square-two_stage"}
        with pytest.raises(KneuronError, match="no two_stage neuron set for concept 'heart' in run tiny-run"):
            run.chosen_set("heart", "two_stage", None)


def test_a_chosen_older_set_becomes_current(root) -> None:  # noqa: ANN001
    """`kneuron select` rerunning an older selection (a set_choices row) makes its set current again, although
    another set of the same (concept, method) was stored later."""
    choose(root, OLD_SET_ID)
    with RunReader(root) as run:
        concept, members, what = run.chosen_set("circle", "two_stage", None)
        assert rounded(members) == OLD_SET and what.endswith(f"set {OLD_SET_ID})")
        assert run.current_sets()[("circle", "two_stage")].set_id == OLD_SET_ID
        assert run.current_sets()[("square", "two_stage")].set_id == "square-two_stage"
    choose(root, "circle-two_stage")
    with RunReader(root) as run:
        assert rounded(run.chosen_set("circle", "two_stage", None)[1]) == SETS[("circle", "two_stage")]


def test_chosen_set_by_id(root) -> None:  # noqa: ANN001
    with RunReader(root) as run:
        concept, members, what = run.chosen_set(None, "two_stage", "square-stage1_only")
        assert (concept, rounded(members)) == ("square", SETS[("square", "stage1_only")])
        assert what == "set square-stage1_only (square, stage1_only, 2 neurons)"
        assert run.chosen_set("circle", "two_stage", "square-stage1_only")[0] == "circle"  # another concept's mask
        with pytest.raises(KneuronError, match="no neuron set 'x' in run tiny-run"):
            run.chosen_set(None, "two_stage", "x")


def test_strongest_first() -> None:
    assert strongest_first([(0, 2, None), (1, 1, 0.2), (0, 9, 0.5), (0, 1, None), (0, 3, 0.2)]) == [
        (0, 9, 0.5), (0, 3, 0.2), (1, 1, 0.2), (0, 1, None), (0, 2, None)]


def test_a_different_model_is_noted(root, tmp_path) -> None:  # noqa: ANN001
    other = tiny_adapter("minigpt4-qformer", seed=1)
    folder = save_minigpt4(other.model, other.tokenizer, other.spec, tmp_path / "other")
    with RunReader(root) as run:
        run.load_model(str(folder))
        assert run.notes == [f"the loaded model {str(folder)!r} is not the one that recorded the run (fingerprint "
                             f"differs from {run.row['model_hash']})"]
        run.notes.clear()
        run.load_model()
        assert run.notes == []

"""An edited model scored like a suppression (`kneuron.engine.pipelines.suppress.edited`): ``kneuron suppress
--edited-model DIR`` captions with the folder ``kneuron edit`` wrote and scores them against the run's model."""
from __future__ import annotations

import dataclasses

import pytest

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.interventions.edit import edit_model
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from tests.helpers.cli_runner import run_cli
from tests.helpers.eval_fixtures import FAST, RUN_ID, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("edited")
    adapter = tiny_minigpt4()
    source = tmp / "model"
    save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, source)
    world = build_eval_world(tmp, model_name=str(source))  # the run's model: the CLI loads it
    set_id, neurons = world.two_stage["square"]
    erased = tmp / "erased"
    edit_model(source, erased, neurons, 0.0, adapter=adapter, origin={"set_id": set_id, "run_id": RUN_ID})
    return world, adapter, erased, set_id


def captions_of(warehouse_path, eval_id: str, method: str) -> list[tuple]:  # noqa: ANN001
    with queries.connect(warehouse_path) as con:
        return con.execute("SELECT \"group\", image_id, set_id, text FROM captions WHERE eval_id = ? AND method = ? "
                           "ORDER BY \"group\", image_id", [eval_id, method]).fetchall()


def test_the_erased_model_scores_like_the_suppressed_set(setup) -> None:  # noqa: ANN001
    world, adapter, erased, set_id = setup
    config = EvalConfig(methods=("two_stage", "edited"), edited_model=str(erased), concepts=("square",),
                        metrics=FAST, batch_size=4)
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    hooked, edited = captions_of(world.warehouse, result.eval_id, "two_stage"), \
        captions_of(world.warehouse, result.eval_id, "edited")
    assert hooked and [row[3] for row in edited] == [row[3] for row in hooked]  # same captions, token for token
    assert {row[2] for row in edited} == {set_id}  # the run's set the edit came from
    by_method = {(r["method"], r["group"], r["measure"]): r["drop"] for r in result.summary.to_pylist()
                 if r["concept"] == "square"}
    for (method, group, measure), drop in by_method.items():
        if method == "edited":
            assert drop == pytest.approx(by_method[("two_stage", group, measure)], nan_ok=True)
    again = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert again.eval_id == result.eval_id and again.jobs_run == 0
    plain = run_evaluation(dataclasses.replace(config, methods=("two_stage",), edited_model=None), world.warehouse,
                           adapter=adapter, dataset=world.dataset, progress=False)
    assert plain.eval_id != result.eval_id  # the edit record enters the identity


def test_edited_method_and_folder_go_together(setup, tmp_path) -> None:  # noqa: ANN001
    world, adapter, erased, _ = setup
    with pytest.raises(KneuronError, match="method 'edited' and edited_model"):
        EvalConfig(methods=("edited",)).validate()
    with pytest.raises(KneuronError, match="method 'edited' and edited_model"):
        EvalConfig(methods=("two_stage",), edited_model=str(erased)).validate()
    with pytest.raises(KneuronError, match="not a folder written by kneuron edit"):
        run_evaluation(EvalConfig(methods=("edited",), edited_model=str(tmp_path), concepts=("square",),
                                  metrics=FAST), world.warehouse, adapter=adapter, dataset=world.dataset,
                       progress=False)


def test_cli_edited_model_alone_evaluates_the_edited_method(setup, capsys) -> None:  # noqa: ANN001
    world, _, erased, _ = setup
    code, out, err = run_cli(["suppress", "--warehouse", str(world.warehouse), "--edited-model", str(erased),
                              "--concept", "square", "--images-per-concept", "3", "--no-progress"], capsys)
    assert code == 0, err
    assert "1 concept(s) x 1 method(s)" in out and "edited" in out

"""The evidence `kneuron suppress` stores: mention outcomes per (caption, object), the interval / paired / gap
tables (equal to a recomputation from the stored captions), the budget as a view column, written once."""
from __future__ import annotations

import pytest

from kneuron import queries, warehouse
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.eval.evidence import SPECIFICITY_TITLE, evidence_tables
from kneuron.engine.eval.mentions import mentions
from kneuron.engine.pipelines.run import load_evaluation, stored_evidence
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from tests.helpers.eval_fixtures import FAST, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


def test_evidence_is_stored_once_and_equals_a_recomputation(tmp_path, adapter) -> None:  # noqa: ANN001
    world = build_eval_world(tmp_path)
    config = EvalConfig(methods=("two_stage", "random"), concepts=("star", "circle"), metrics=FAST, budgets=(1, 2))
    result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        captions = con.execute("SELECT concept, image_id, text, method, budget, base_method FROM captions "
                               "WHERE eval_id = ? AND condition = 'suppressed'", [result.eval_id]).fetchall()
        assert {(m, b, base) for _, _, _, m, b, base in captions} >= {("two_stage@2", 2, "two_stage")}
        found = {(c, i, m, o): v for c, i, m, o, v in con.execute(
            "SELECT concept, image_id, method, object, mentioned FROM mentions WHERE eval_id = ?",
            [result.eval_id]).fetchall()}
        for concept, image_id, text, method, _, _ in captions:
            assert found[(concept, image_id, method, concept)] == mentions(text, concept)
            for other in world.dataset.concepts_in(image_id):
                assert found[(concept, image_id, method, other)] == mentions(text, other)
        rates = queries.run(con, "mention_rates").to_pylist()
        assert rates and all(r["n_captions"] > 0 for r in rates)
        evidence = stored_evidence(con, result.eval_id)
        assert evidence is not None
        again = evidence_tables(load_evaluation(con, result.eval_id, world.dataset, {}, FAST).outcomes, FAST)
    for name in ("intervals", "paired", "gaps"):
        mine, theirs = getattr(evidence, name).to_pylist(), getattr(again, name).to_pylist()
        assert len(mine) == len(theirs) > 0
        key = lambda r: tuple(str(v) for v in r.values())  # noqa: E731
        for a, b in zip(sorted(mine, key=key), sorted(theirs, key=key), strict=True):
            assert a == pytest.approx(b, nan_ok=True)
    # the printed tables carry T - O with its intervals, n and the paired difference against random
    spec = result.tables()[SPECIFICITY_TITLE].to_pylist()
    assert [r["method"] for r in spec] == ["random", "two_stage"]
    assert spec[1]["minus random"] is not None and spec[1]["n target"] == len(world.evaluation["star"]) + len(
        world.evaluation["circle"]) and spec[0]["minus random"] is None
    # a finished evaluation run again writes no second copy, and reads the stored evidence back
    again_result = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert again_result.evidence is not None and again_result.evidence.gaps.num_rows == evidence.gaps.num_rows
    with warehouse.connect(world.warehouse) as con:
        n = con.execute("SELECT count(*) FROM evidence_intervals WHERE eval_id = ?", [result.eval_id]).fetchone()
    assert n == (len(evidence.intervals),)

"""The select pipeline: stored sets, and which set is current after each selection."""
from __future__ import annotations

from kneuron import queries
from kneuron.engine.pipelines.select import select_sets
from kneuron.engine.pipelines.sets import current_set_ids, stored_sets
from kneuron.queries.selection import SelectionConfig, ThresholdSpec
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import build_warehouse, make_world

AUTO = SelectionConfig(run_id="r1", concepts=("dog",))
TOP3 = SelectionConfig(run_id="r1", concepts=("dog",), stage1=ThresholdSpec.parse("q:0.9"),
                       stage2=ThresholdSpec.parse("top:3"))


def current(root) -> dict[tuple[str, str], str]:
    con = queries.connect(root)
    try:
        return current_set_ids(con, "r1")
    finally:
        con.close()


def test_the_last_selection_is_current_and_a_rerun_makes_it_current_again(tmp_path):
    stats, samples = make_world(seed=7)
    root = tmp_path / "wh"
    build_warehouse(root, stats, samples)

    first = select_sets(root, AUTO)
    assert first.written == first.current and len(first.current) == 3  # two_stage, stage1_only, stage2_only
    by_method = {s.method: s.set_id for s in stored_sets(queries.connect(root), "r1").values()}
    assert current(root) == {("dog", m): by_method[m] for m in ("two_stage", "stage1_only", "stage2_only")}

    second = select_sets(root, TOP3)
    assert not set(second.current) & set(first.current)
    assert current(root)[("dog", "two_stage")] in second.current
    con = queries.connect(root)
    assert len(stored_sets(con, "r1", second.current)[current(root)[("dog", "two_stage")]].neurons) == 3

    again = select_sets(root, AUTO)  # stored already: nothing written, but current again
    assert again.written == [] and sorted(again.present) == sorted(first.current)
    assert set(current(root).values()) == set(first.current)


def test_cli_select_prints_the_current_sets(tmp_path, capsys):
    stats, samples = make_world(seed=7)
    root = tmp_path / "wh"
    build_warehouse(root, stats, samples)
    code, out, err = run_cli(["select", "--warehouse", str(root), "--concept", "dog"], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("current sets now: "))
    assert sorted(line.removeprefix("current sets now: ").split()) == sorted(current(root).values())

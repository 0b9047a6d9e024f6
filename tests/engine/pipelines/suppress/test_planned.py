"""The planned path of ``kneuron suppress --engine ray`` without Ray: captions planned on the driver, made by a
`Captioner` in this process call by call (`call_ranges`), read back in a local run's order. The tables equal a
local run's for zero, mean and resample ablation (resample needs each call's ``first_image``), a set planned
twice is captioned once and read twice, and `caption_under_sets` on a piece of the images with ``first_image``
gives the whole list's captions of that piece; `kneuron.suppress` checks its engine options before it runs."""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from kneuron import warehouse
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.interventions.ablation import Ablation, record_reference
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.pipelines.suppress.captioner import (
    Captioner,
    PlannedCaptions,
    call_ranges,
    rows_per_generate,
    set_key,
)
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.engine.signals.neurons import NeuronSet
from tests.helpers.eval_fixtures import FAST, build_eval_world
from tests.helpers.tables import sorted_tables
from tests.helpers.tiny_models import tiny_minigpt4

KEYS = {"captions": ["concept", "method", "group", "image_id"],
        "scores": ["concept", "method", "group", "image_id", "metric", "reference"],
        "neuron_sets": ["set_id", "layer", "unit"], "evals": ["eval_id"],
        "ablation_means": ["eval_id", "layer", "unit", "kind"]}


def tables(root: Path) -> dict[str, pa.Table]:
    """The evaluation's tables in a total order (without the creation times)."""
    return sorted_tables(root, KEYS)


class InProcess:
    """A `CaptionEngine` that runs each call of a request (`call_ranges`) on a `Captioner` at once."""

    def __init__(self, captioner: Captioner, config: EvalConfig) -> None:
        self.captioner, self.config = captioner, config
        self.made: dict[tuple[tuple[int, ...], object], list[str]] = {}
        self.calls: list[tuple[int, int, int]] = []  # (first_image, images, sets)

    def submit(self, image_ids: Sequence[int], sets: Sequence[NeuronSet | None]) -> None:
        ids = tuple(image_ids)
        for start, stop in call_ranges(len(ids), sets, self.config.batch_size, rows_per_generate(self.config)):
            self.calls.append((start, stop - start, len(sets)))
            out = self.captioner.caption(list(ids[start:stop]), list(sets), start)
            for k, neurons in enumerate(sets):
                self.made.setdefault((ids, set_key(neurons)), []).extend(out[k])

    def texts(self, image_ids: Sequence[int], neurons: NeuronSet | None) -> list[str]:
        return self.made.pop((tuple(image_ids), set_key(neurons)))


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planned")
    world = build_eval_world(tmp)
    return world, tmp / "warehouse"


def copy(pristine, tmp_path: Path, name: str) -> Path:  # noqa: ANN001
    root = tmp_path / name
    shutil.copytree(pristine[1], root)
    return root


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_planned_captions_give_the_local_tables(pristine, adapter, tmp_path, ablation) -> None:  # noqa: ANN001
    world = pristine[0]
    config = EvalConfig(methods=("two_stage", "random", "random_layer_matched"), metrics=FAST, max_images=3,
                        batch_size=2, rows_per_generate=4, seed=1, concepts=("circle", "star"), ablation=ablation,
                        reference_images=3)
    local_root, planned_root = copy(pristine, tmp_path, "local"), copy(pristine, tmp_path, "planned")
    local = run_evaluation(config, local_root, adapter=adapter, dataset=world.dataset, progress=False)
    engines: list[InProcess] = []

    @contextlib.contextmanager
    def remote(cfg: EvalConfig, run, shared: Ablation) -> Iterator[InProcess]:  # noqa: ANN001
        assert shared.mode == ablation and (shared.reference is None) == (ablation == "zero")
        captioner = Captioner.__new__(Captioner)  # the actor's state without loading a model from a folder
        captioner.config, captioner.ablation, captioner.adapter = cfg, shared, adapter
        captioner.dataset, captioner.generate_kwargs = world.dataset, {}
        engines.append(InProcess(captioner, cfg))
        yield engines[-1]

    planned = run_evaluation(config, planned_root, adapter=adapter, dataset=world.dataset, progress=False,
                             remote=remote)
    assert planned.eval_id == local.eval_id and planned.jobs_run == local.jobs_run == 8
    calls = engines[0].calls
    assert any(first > 0 and sets == 3 for first, _, sets in calls)  # the sets' requests were cut: offsets used
    assert all(n * sets <= 4 for _, n, sets in calls if sets == 3)  # about one generate of rows per call
    got, want = tables(planned_root), tables(local_root)
    for table in KEYS:
        assert got[table].equals(want[table]), table
    assert (got["ablation_means"].num_rows > 0) == (ablation == "mean")


def test_first_image_gives_the_whole_lists_resample_donors(pristine, adapter) -> None:  # noqa: ANN001
    world = pristine[0]
    ids = world.evaluation["circle"] + world.evaluation["star"]
    images = [world.dataset.load_image(i) for i in ids[:6]]
    reference = record_reference(adapter, [world.dataset.load_image(i) for i in world.ident["square"][:4]], 4)
    resample = Ablation("resample", reference, seed=2)
    sets = [{layer: list(range(adapter.d_ff)) for layer in range(adapter.n_layers)}]  # every unit: donor shows
    whole = caption_under_sets(adapter, images, sets, resample)[0].texts
    piece = caption_under_sets(adapter, images[2:], sets, resample, first_image=2)[0].texts
    assert piece == whole[2:]
    shifted = caption_under_sets(adapter, images[2:], sets, resample)[0].texts  # the donors of images 0..3
    assert shifted != whole[2:]


def test_a_set_planned_twice_is_captioned_once_and_read_twice() -> None:
    submitted: list[tuple[tuple[int, ...], list]] = []

    class Engine:
        def submit(self, image_ids, sets):  # noqa: ANN001, ANN202
            submitted.append((tuple(image_ids), list(sets)))

        def texts(self, image_ids, neurons):  # noqa: ANN001, ANN202
            return [f"{image_ids}-{set_key(neurons)}"]

    plan = PlannedCaptions(Engine())
    a, same_as_a, b = {0: [1, 2]}, {0: [2, 1]}, {1: [3]}
    plan.plan([4, 5], [a, same_as_a, b])
    plan.plan([4, 5], [None])
    assert submitted == [((4, 5), [a, b]), ((4, 5), [None])]
    assert plan.texts([4, 5], a) == plan.texts([4, 5], same_as_a) == ["(4, 5)-((0, (1, 2)),)"]
    assert plan.texts([4, 5], a) is None  # read as often as planned, then gone
    assert plan.texts([4, 6], b) is None  # other images: not planned
    assert plan.texts([4, 5], b) == ["(4, 5)-((1, (3,)),)"]


def test_call_ranges() -> None:
    assert call_ranges(5, [None], batch_size=2, rows=8) == [(0, 2), (2, 4), (4, 5)]  # the local batches
    assert call_ranges(5, [{0: [1]}, {0: [2]}], batch_size=2, rows=8) == [(0, 4), (4, 5)]
    assert call_ranges(3, [{0: [k]} for k in range(10)], batch_size=2, rows=4) == [(0, 1), (1, 2), (2, 3)]
    assert call_ranges(0, [None], batch_size=2, rows=4) == []


def test_rows_per_generate_default() -> None:
    assert rows_per_generate(dataclasses.replace(EvalConfig(), rows_per_generate=None, batch_size=3)) == 12
    assert rows_per_generate(dataclasses.replace(EvalConfig(), rows_per_generate=5, batch_size=3)) == 5


def test_api_engine_options_are_checked_before_anything_runs(pristine, tmp_path) -> None:  # noqa: ANN001
    import kneuron

    root = copy(pristine, tmp_path, "api")
    with pytest.raises(KneuronError, match="^suppress: engine must be 'local' or 'ray', got 'dask'$"):
        kneuron.suppress(root, engine="dask")
    with pytest.raises(KneuronError, match="^--ray-address, --workers, --gpus-per-worker and --cpus-per-worker "
                                           "need --engine ray$"):
        kneuron.suppress(root, workers=2)
    with pytest.raises(KneuronError, match=r"^suppress: adapter= needs engine='local' \(each Ray captioner loads "
                                           r"the model\)$"):
        kneuron.suppress(root, engine="ray", adapter=object())
    assert warehouse.Warehouse.open(root).read("captions").num_rows == 0

"""The Ray engine of ``kneuron suppress`` (``--engine ray``): the evaluation's captions made by an actor pool.

    result = run_evaluation_ray(config, warehouse_path, RayOptions(address=None, workers=2), log=print)

The evaluation is planned on the driver exactly as a local run plans it (`kneuron.engine.pipelines.suppress.pipeline`:
reference
sets, images, eval id, the jobs already stored, the baseline sets chosen, the ablation's reference activations
recorded). Then every caption the pending jobs need is submitted at once
(`kneuron.engine.pipelines.suppress.captioner.plan_captions`): per concept its missing unmodified captions, in the local
run's batches, and its images under the sets of all its pending methods, cut into calls of about one generate
of (set, image) rows each (`caption_chunk`: many sets per generate, with the evaluation's ablation; each call
knows where its images start in the concept's list, so resample gives every image the donor of a local run).
``--workers`` captioner actors (`Captioner`: the model and dataset loaded once per actor, one GPU each when the
cluster has GPUs; the ablation, with its reference activations for mean / resample, put once into Ray's object
store) make them in parallel while the driver walks the jobs in a local run's order, waits for each concept's
captions, scores them (BERTScore's model lives on the driver) and commits each job's batch: the driver is the
single committer, and every row is the row of ``--engine local`` (greedy decoding; a row's caption does not
depend on which rows share its generate).

Faults: a captioner that dies is restarted by Ray and its calls retried (``max_restarts`` /
``max_task_retries``); a driver killed mid-run leaves the jobs it committed, and rerunning the command resumes
(only the missing jobs are planned). Errors are one line (`KneuronError`), as in ingest's Ray path: Ray not
installed, a cluster that cannot be reached, a model the captioners cannot load, a captioner that fails.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.interventions.ablation import Ablation
from kneuron.engine.pipelines.ray_cluster import RayOptions, check_reachable, import_ray, ray_session, worker_message
from kneuron.engine.pipelines.suppress.captioner import Captioner, SetKey, call_ranges, rows_per_generate, set_key
from kneuron.engine.pipelines.suppress.pipeline import EvalResult, RemoteCaptions, run_evaluation
from kneuron.engine.signals.neurons import NeuronSet

Log = Callable[[str], None]

#: restarts of a dead captioner (and retries of its calls) before the run fails
MAX_RESTARTS = 3


class RayCaptions:
    """A `CaptionEngine` over ``actors``: each request cut into image ranges (`call_ranges`: the local run's
    batches for unmodified captions, about ``rows`` (set, image) rows otherwise), one call per range x the
    request's sets, spread round-robin."""

    def __init__(self, ray: Any, actors: list[Any], batch_size: int, rows: int) -> None:
        self.ray, self.actors, self.batch_size, self.rows = ray, actors, max(1, batch_size), max(1, rows)
        self.refs: dict[tuple[tuple[int, ...], SetKey], list[tuple[Any, int]]] = {}
        self._next = 0

    def submit(self, image_ids: Sequence[int], sets: Sequence[NeuronSet | None]) -> None:
        ids = tuple(int(i) for i in image_ids)
        calls = []
        for start, stop in call_ranges(len(ids), sets, self.batch_size, self.rows):
            actor = self.actors[self._next % len(self.actors)]
            self._next += 1
            calls.append(actor.caption.remote(list(ids[start:stop]), list(sets), start))
        for k, neurons in enumerate(sets):
            self.refs[(ids, set_key(neurons))] = [(ref, k) for ref in calls]

    def texts(self, image_ids: Sequence[int], neurons: NeuronSet | None) -> list[str]:
        refs = self.refs.pop((tuple(int(i) for i in image_ids), set_key(neurons)))
        try:
            return [text for ref, k in refs for text in self.ray.get(ref)[k]]
        except KneuronError:
            raise
        except Exception as exc:  # RayTaskError / RayActorError wrap the captioner's failure
            raise KneuronError(f"a Ray captioner failed: {worker_message(exc)}") from None


def worker_config(config: EvalConfig) -> EvalConfig:
    """``config`` with the paths captioners read made absolute (their working directory is not the driver's)."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

    return replace(config, model=absolute(config.model), dataset_root=absolute(config.dataset_root))


def captioner_shape(total_cpus: float, total_gpus: float, options: RayOptions, device: str | None
                    ) -> tuple[float, float, int]:
    """(CPUs, GPUs, torch threads) of each captioner: a GPU each when the cluster has them (and the device is not
    cpu), else ``total_cpus / workers`` CPUs (at most 1 unless ``--cpus-per-worker`` says)."""
    gpus = options.worker_gpus(total_gpus, device, "captioner")
    cpus = options.cpus_per_worker
    if cpus is None:
        cpus = min(1.0, math.floor(total_cpus / options.workers * 1000) / 1000)
    if cpus * options.workers > total_cpus + 1e-9:
        raise KneuronError(f"{options.workers} captioner(s) x {cpus:g} CPU do not fit the Ray cluster's "
                           f"{total_cpus:g} CPUs; lower --cpus-per-worker or --workers")
    return cpus, gpus, max(1, math.floor(cpus))


@contextlib.contextmanager
def captioner_pool(ray: Any, options: RayOptions, log: Log) -> Iterator[RemoteCaptions]:
    """The ``remote`` of `run_evaluation`: on first use, ``options.workers`` captioner actors (model loaded once
    each, waited for) behind a `RayCaptions`; killed when the run ends."""
    actors: list[Any] = []
    kept: list[Any] = []  # the ablation's object ref, alive while the captioners may restart

    @contextlib.contextmanager
    def remote(config: EvalConfig, run: Mapping[str, Any], ablation: Ablation) -> Iterator[RayCaptions]:
        resources = ray.cluster_resources()
        cpus, gpus, threads = captioner_shape(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
                                              options, config.device)
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                           max_task_retries=MAX_RESTARTS)(Captioner)
        started = time.monotonic()
        remote_config = worker_config(config)
        if ablation.reference is not None:
            ablation.reference.means()  # computed once here, so every captioner uses the driver's (stored) means
        shared = ray.put(ablation)  # once into the object store; a restarted captioner reads it again
        kept.append(shared)
        actors.extend(actor.remote(remote_config, dict(run), threads, shared) for _ in range(options.workers))
        try:
            ray.get([a.ready.remote() for a in actors])
        except Exception as exc:  # the actor's constructor failed (RayActorError wraps it)
            raise KneuronError(f"a Ray captioner could not load the model: {worker_message(exc)}") from None
        gpu = f" + {gpus:g} GPU" if gpus else ""
        log(f"{options.workers} captioner(s) x {cpus:g} CPU{gpu} ready in {time.monotonic() - started:.1f} s")
        yield RayCaptions(ray, actors, config.batch_size, rows_per_generate(config))

    try:
        yield remote
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)


def run_evaluation_ray(config: EvalConfig, warehouse_path: str | os.PathLike[str] | None = None,
                       options: RayOptions | None = None, progress: bool = True, log: Log | None = None,
                       **kwargs: Any) -> EvalResult:
    """`run_evaluation` with its captions made on Ray (see the module docstring); the same evaluation and rows.
    kwargs: passed on (``adapter``, ``dataset``, ``scorer`` for the driver's own use)."""
    options = options or RayOptions()
    ray = import_ray()
    options.validate()
    if config.edited_model:
        raise KneuronError("--edited-model is evaluated with --engine local only")
    if options.address not in (None, "auto") and not ray.is_initialized():
        check_reachable(str(options.address))  # before anything is written
    say: Log = log if log is not None else (lambda message: None)
    with ray_session(ray, options.address), captioner_pool(ray, options, say if progress else (lambda m: None)) \
            as remote:
        return run_evaluation(config, warehouse_path, progress=progress, log=log, remote=remote, **kwargs)

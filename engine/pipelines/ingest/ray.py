"""The Ray engine of ``kneuron ingest`` (``--engine ray``): record a run's chunks on a Ray cluster.

    summary = run_ingest_ray(config, RayOptions(address=None, workers=2), log=print)

The run starts as the local engine's does (`ingest_start`), except that the model facts (`ModelHead`: run id,
concept tokens, shape) come from one probe task that loads the model where the recorders will. Then the chunks
still to record flow through Ray Data (`ingest_ray_workers`): CPU tasks load, mask and inpaint each chunk
(`prepare_chunk`; with the ``sd`` inpainter that happens in the recorders, next to their GPU), an actor pool of
recorders — the model loaded once per actor, on its GPU when it has one — captions and records them
(`record_prepared`, `chunk_tables`), and the rows come back to the driver. The driver is the single committer:
each chunk is one atomic batch (`commit_chunk`), committed in the order chunks finish. Rows are those of
``--engine local`` (same plan, same code per chunk): only their commit order differs.

Exactly once: a chunk's rows exist only in the driver until its batch commits. A recorder that dies is
restarted by Ray and its chunk retried (Ray Data's actor fault tolerance); a chunk delivered twice is committed
once. A driver killed mid-run leaves only uncommitted temp files; rerunning the command resumes (`plan_run`).

Errors are one line (`KneuronError`): Ray not installed, a cluster that cannot be reached, a worker that cannot
load the model (the first failure's message, once), a chunk that fails. On small machines the recorders take
fractional CPUs (`worker_shape`), so the CPU tasks always have room: 2 CPUs and 2 one-CPU recorders would
leave the tasks none and the pipeline would stall.
"""
from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kneuron import warehouse
from kneuron.engine.errors import KneuronError
from kneuron.engine.pipelines.ingest.chunk import ChunkResult, commit_chunk
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.ray_workers import DatasetSource, PrepareTask, Recorder, probe_model
from kneuron.engine.pipelines.ingest.start import IngestSummary, ModelHead, RunPlan, begin_run, plan_run
from kneuron.engine.pipelines.ray_cluster import RayOptions, check_reachable, import_ray, ray_session, worker_message
from kneuron.engine.runtime import scoped
from kneuron.engine.runtime.progress import Progress

Log = Callable[[str], None]



@dataclass(frozen=True)
class WorkerShape:
    """Resources of the pipeline: ``workers`` recorders of ``cpus`` CPUs and ``gpus`` GPUs each, CPU tasks of
    ``task_cpus`` CPUs, ``threads`` torch threads per recorder."""

    workers: int
    cpus: float
    gpus: float
    task_cpus: float
    threads: int

    def describe(self) -> str:
        """``2 recorder(s) x 0.67 CPU`` (``+ 1 GPU``)."""
        gpu = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} recorder(s) x {self.cpus:.2g} CPU{gpu}"


def worker_shape(total_cpus: float, total_gpus: float, options: RayOptions, device: str) -> WorkerShape:
    """The resources to ask for on a cluster of ``total_cpus`` / ``total_gpus``.

    By default a recorder takes at most one CPU and at most ``total / (workers + 1)``, so one recorder's share
    always stays free for the CPU tasks (a 2-core laptop with 2 recorders: 0.67 CPU each, tasks of 0.33). An
    explicit ``cpus_per_worker`` that leaves the tasks less than 0.1 CPU is refused: the run would stall.
    """
    gpus = options.worker_gpus(total_gpus, device, "recorder")
    workers = options.workers
    cpus = options.cpus_per_worker
    if cpus is None:
        cpus = round(min(1.0, total_cpus / (workers + 1)), 3)
    left = total_cpus - workers * cpus
    if left < 0.1:
        raise KneuronError(f"{workers} recorder(s) x {cpus:g} CPU leave the image tasks no CPU of the cluster's "
                           f"{total_cpus:g}; lower --cpus-per-worker or --workers")
    task_cpus = round(min(1.0, left / 2), 3) if left < 2 else 1.0
    return WorkerShape(workers, cpus, gpus, max(task_cpus, 0.05), max(1, math.floor(cpus)))


# ---------------------------------------------------------------------------------------------- the run
def run_ingest_ray(config: IngestConfig, options: RayOptions | None = None, log: Log | None = None) -> IngestSummary:
    """Ingest ``config`` on Ray (see the module docstring); the same run and rows as `run_ingest`. options: the
    cluster and the recorders' shape (default `RayOptions()`: a local instance, one recorder)."""
    options = options or RayOptions()
    ray = import_ray()
    options.validate()
    start = begin_run(config, log)
    dataset = start.dataset
    source = DatasetSource(str(dataset.root.resolve()), dataset.split)
    remote_config = worker_config(config)
    if options.address not in (None, "auto") and not ray.is_initialized():
        check_reachable(str(options.address))  # before anything is written
    # a second writer fails at the open, at once; Ray Data's bars and log lines are off for the run only (the run
    # logs its own progress)
    with warehouse.open_warehouse(config.warehouse, create=True) as wh, \
            scoped.environ(RAY_DATA_DISABLE_PROGRESS_BARS="1"), scoped.logger_level("ray.data", logging.ERROR), \
            ray_session(ray, options.address):
        resources = ray.cluster_resources()
        shape = worker_shape(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), options,
                             config.device)
        head = probe(ray, remote_config, source, start.concepts, start.automatic, shape)
        plan = plan_run(wh, head, dataset, config, start.note)
        progress = Progress(plan.pending_pairs, f"{plan.label()} on Ray, {shape.describe()}",
                            log if (log and config.progress) else (lambda _: None))
        try:
            for result in stream(ray, plan, remote_config, source, head, shape):
                commit_chunk(wh, plan, result, progress.advance)
        finally:
            progress.close()
    return start.finish(plan.summary)


def worker_config(config: IngestConfig) -> IngestConfig:
    """``config`` with the paths workers read made absolute (their working directory is not the driver's).
    Only workers see it: the ``runs`` row keeps the options as given, as the local engine stores them."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

    return replace(config, model=absolute(config.model) or config.model, sd_model=absolute(config.sd_model),
                   save_inpainted=str(Path(config.save_inpainted).resolve()) if config.save_inpainted else None,
                   coco_root=absolute(config.coco_root))


def probe(ray: Any, config: IngestConfig, source: DatasetSource, concepts: list[str], automatic: bool,
          shape: WorkerShape) -> ModelHead:
    """The run's `ModelHead`, from one task that loads the model as a recorder would (its process exits after,
    freeing the device). A model that does not load is the task's first failure's message, once."""
    task = ray.remote(num_cpus=shape.cpus, num_gpus=shape.gpus, max_calls=1, max_retries=0)(probe_model)
    try:
        head: ModelHead = ray.get(task.remote(config, source, concepts, automatic, shape.threads))
    except Exception as exc:  # RayTaskError wraps the worker's exception
        raise KneuronError(f"a Ray worker could not load the model: {worker_message(exc)}") from None
    return head


def stream(ray: Any, plan: RunPlan, config: IngestConfig, source: DatasetSource, head: ModelHead,
           shape: WorkerShape) -> Iterator[ChunkResult]:
    """The results of ``plan.todo``'s chunks as they finish (each once; a run without pairs: one empty one)."""
    work = [{"index": index, "concept": concept, "image_ids": ids}
            for index, (concept, ids) in enumerate(plan.todo) if concept is not None]
    for index, (concept, ids) in enumerate(plan.todo):
        if concept is None:
            yield ChunkResult(index, None, list(ids))
    if not work:
        return
    quiet_ray_data(ray)
    data = ray.data.from_items(work, override_num_blocks=len(work))
    if config.inpainter != "sd":
        data = data.map_batches(PrepareTask(config, source), batch_size=1, batch_format="numpy",
                                num_cpus=shape.task_cpus)
    data = data.map_batches(Recorder, fn_constructor_args=(config, source, head, plan.run_id, shape.threads),
                            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=shape.workers),
                            num_cpus=shape.cpus, num_gpus=shape.gpus or None)
    seen: set[int] = set()
    try:
        for row in data.iter_rows():
            result: ChunkResult = pickle.loads(row["result"])
            if result.index not in seen:
                seen.add(result.index)
                yield result
    except KneuronError:
        raise
    except Exception as exc:  # a chunk failed in a worker (Ray wraps it)
        raise KneuronError(f"a Ray worker failed: {worker_message(exc)}") from None
    missing = sorted({int(str(item["index"])) for item in work} - seen)
    if missing:
        raise KneuronError(f"the Ray pipeline ended without {len(missing)} chunk(s); run the command again to "
                           "record them (committed chunks are kept)")


def quiet_ray_data(ray: Any) -> None:
    """No Ray Data progress bars or execution banners on the driver: the run prints its own progress line."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.max_consecutive_actor_init_deaths = 1  # a recorder that cannot load the model fails the run fast



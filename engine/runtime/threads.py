"""The thread policy of a kneuron command: how many threads torch, DuckDB and tokenizers use, and how idle
OpenMP workers wait.

Why. On a machine that other CPU work shares, a torch job with one busy-waiting OpenMP worker per core slows
down far more than its share of the CPU: every parallel region ends at a barrier that waits for its slowest
worker, a worker the scheduler has parked stalls all the others, and the others spin meanwhile, taking CPU from
the very processes they wait for: a step can run many times slower than its fair share of the CPU would make
it (the measurements: benchmarks/RESULTS.md, "Benchmarks", and ``benchmarks/test_bench_contention.py``).
Small models (the bundled tiny MiniGPT-4) and token-by-token generation loops gain little from more threads:
their matrix products are too small to split well, and spinning workers cost far more next to other jobs than
they save on an idle machine. One thread is the default for them, and ``--threads 2`` (with
``OMP_WAIT_POLICY=ACTIVE``) gives the idle-machine speed back.

The policy (`choose`, applied once per command by ``cli/main.py`` through `applied`):

- **threads** (torch intra-op and DuckDB): ``kneuron --threads N`` when given, else ``$OMP_NUM_THREADS`` when
  set, else the CPUs this process may use (`available_cpus`: affinity mask and cgroup CPU quota). A count the
  user chose (either way) is *explicit* and used for everything.
- **jobs** (`job`): without an explicit count, the work on a model with fewer than `SMALL_MODEL_PARAMS`
  parameters (captioning loops, attribution passes, the BERTScore backbone; ``kneuron demo`` with a bundled
  model as a whole) runs on one intra-op thread, and larger models use the command's count. The count is
  restored after the job.
- **torch inter-op threads**: 1 (kneuron launches no inter-op parallel work; the pool only adds idle threads).
- **DuckDB**: ``SET threads`` on every connection ``queries.connect`` opens, read from `DUCKDB_THREADS_ENV`
  (storage cannot import this module; the environment carries the number).
- **tokenizers**: ``TOKENIZERS_PARALLELISM=false`` (its Rayon pool competes with torch's for the same cores).
- **waiting** (`prepare_environment`, before torch is imported): ``OMP_WAIT_POLICY=PASSIVE`` (GNU and LLVM
  OpenMP: idle workers sleep instead of spinning) and ``KMP_BLOCKTIME=0`` (Intel OpenMP), only where the user
  has not set them.
- **start-up** (`prepare_process`, with the waiting variables): Python's cyclic collector scans less often
  while torch and transformers import, and skips its last scan at exit (a command that loads the tiny model:
  4.3 s -> 2.9 s, ``benchmarks/test_bench_startup.py``).

Thread counts do not change kneuron's numbers in practice (greedy captions, selected sets and scores of the demo
are the same; see ``benchmarks/test_bench_demo.py``), but float reductions may round differently with another
count, as with any torch program.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

from kneuron.engine.errors import KneuronError

#: environment variable through which the DuckDB thread count reaches ``queries.connect``
DUCKDB_THREADS_ENV = "KNEURON_DUCKDB_THREADS"
#: environment variable holding ``--threads`` for the rest of the command (and processes it starts)
THREADS_ENV = "KNEURON_THREADS"
#: models with fewer parameters than this run their jobs on one intra-op thread (unless a count is explicit)
SMALL_MODEL_PARAMS = 50_000_000
#: set before torch loads its OpenMP runtime, unless already set: idle workers sleep instead of spinning
WAIT_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class ThreadPolicy:
    """Thread counts of one command.

    threads: torch intra-op threads of the command (and DuckDB's). interop: torch inter-op threads.
    explicit: the user chose ``threads`` (``--threads`` or ``$OMP_NUM_THREADS``); jobs then keep it.
    source: where ``threads`` came from (``--threads``, ``OMP_NUM_THREADS``, ``cpus``).
    """

    threads: int
    interop: int = 1
    explicit: bool = False
    source: str = "cpus"

    def job_threads(self, n_params: int | None) -> int:
        """Intra-op threads for work on a model of ``n_params`` parameters (None: unknown, the command's count)."""
        if self.explicit or n_params is None or n_params >= SMALL_MODEL_PARAMS:
            return self.threads
        return 1

    def describe(self) -> str:
        return (f"{self.threads} thread(s) ({self.source}{', explicit' if self.explicit else ''}), "
                f"inter-op {self.interop}; models under {SMALL_MODEL_PARAMS // 1_000_000}M parameters: "
                f"{self.job_threads(0)}")


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered to a cgroup v2 CPU quota when one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _positive(text: str | None, name: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise KneuronError(f"{name} must be a whole number of threads, got {text!r}") from None
    if value < 1:
        raise KneuronError(f"{name} must be >= 1, got {value}")
    return value


def choose(requested: int | None = None, environ: Mapping[str, str] | None = None,
           cpus: int | None = None) -> ThreadPolicy:
    """The policy for ``requested`` threads (``--threads``; None: not given) in ``environ`` (default
    ``os.environ``) on ``cpus`` CPUs (default `available_cpus`); see the module docstring."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        if requested < 1:
            raise KneuronError(f"--threads must be >= 1, got {requested}")
        return ThreadPolicy(threads=requested, explicit=True, source="--threads")
    from_option = _positive(environ.get(THREADS_ENV), THREADS_ENV)  # set by an enclosing kneuron command
    if from_option is not None:
        return ThreadPolicy(threads=from_option, explicit=True, source="--threads")
    from_omp = _positive(environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    if from_omp is not None:
        return ThreadPolicy(threads=from_omp, explicit=True, source="OMP_NUM_THREADS")
    return ThreadPolicy(threads=cpus if cpus is not None else available_cpus())


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the waiting and tokenizer variables (`WAIT_ENV`) the user has not set; returns what it set.

    Must run before torch is first imported to change how OpenMP waits (its runtime reads them once).
    """
    environ = os.environ if environ is None else environ
    changed = {}
    for name, value in WAIT_ENV.items():
        if name not in environ:
            environ[name] = changed[name] = value
    return changed


#: young-generation threshold of Python's cyclic collector during a command (Python's default: 700)
GC_YOUNG_THRESHOLD = 20_000
_gc_prepared = False


def prepare_process(environ: MutableMapping[str, str] | None = None) -> None:
    """Once per command, before its modules import torch: `prepare_environment`, and how Python's cyclic
    collector treats the ~400k objects torch and transformers create at import. Its young-generation threshold
    becomes `GC_YOUNG_THRESHOLD` allocations (from 700, when the user has not changed it), so that the collector
    does not scan the import's objects dozens of times (~0.8 s of a 3 s start-up), and at exit every object is
    frozen (`gc.freeze`), so that the interpreter does not scan them once more just before the process ends
    (~1 s). Reference counting still frees everything as before; only the collection of reference cycles
    happens less often."""
    import atexit
    import gc

    global _gc_prepared
    prepare_environment(environ)
    if _gc_prepared:
        return
    _gc_prepared = True
    young, middle, old = gc.get_threshold()
    if (young, middle, old) == (700, 10, 10):
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    atexit.register(gc.freeze)


_applied: ThreadPolicy | None = None


@contextmanager
def applied(requested: int | None = None, with_torch: bool = True,
            environ: MutableMapping[str, str] | None = None) -> Iterator[ThreadPolicy]:
    """The command's policy for the duration of the block (a command run in-process, e.g. by tests, leaves the
    process as it found it): `choose`, `prepare_environment`, the DuckDB count in `DUCKDB_THREADS_ENV`, an
    explicit ``--threads`` in `THREADS_ENV` (for nested commands), and with ``with_torch`` torch's intra-op
    and inter-op threads. Afterwards the environment variables, torch's intra-op count and `current` are
    restored (an inter-op count, once set, stays: torch fixes it for the process).

    Commands that never use torch pass ``with_torch=False`` so that torch is not imported for them.
    """
    global _applied
    environ = os.environ if environ is None else environ
    policy = choose(requested, environ)
    saved = {name: environ.get(name) for name in (DUCKDB_THREADS_ENV, THREADS_ENV, "OMP_NUM_THREADS")}
    previous = _applied
    prepare_environment(environ)
    environ[DUCKDB_THREADS_ENV] = str(policy.threads)
    if requested is not None:
        environ[THREADS_ENV] = str(requested)
    torch_before = None
    if with_torch or "torch" in sys.modules:
        import torch

        torch_before = torch.get_num_threads()
        set_torch_threads(policy)
    elif "OMP_NUM_THREADS" not in environ:  # should torch be imported after all, it starts with the policy's count
        environ["OMP_NUM_THREADS"] = str(policy.threads)
    _applied = policy
    try:
        yield policy
    finally:
        _applied = previous
        for name, value in saved.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        if torch_before is not None:
            import torch

            torch.set_num_threads(torch_before)


def set_torch_threads(policy: ThreadPolicy) -> None:
    """torch intra-op threads to ``policy.threads``; inter-op to ``policy.interop`` unless already fixed."""
    import torch

    torch.set_num_threads(policy.threads)
    if torch.get_num_interop_threads() != policy.interop:
        with contextlib.suppress(RuntimeError):  # inter-op work has started in this process: the count is fixed
            torch.set_num_interop_threads(policy.interop)


def current() -> ThreadPolicy:
    """The policy `applied` set in this process, else the one the environment gives (library use, tests)."""
    return _applied if _applied is not None else choose()


def parameter_count(model: Any) -> int | None:
    """Parameters of a torch module (cached on the module), or None when ``model`` is not one."""
    if model is None or not hasattr(model, "parameters"):
        return None
    cached = getattr(model, "_kneuron_n_params", None)
    if isinstance(cached, int):
        return cached
    count = sum(p.numel() for p in model.parameters())
    with suppress(AttributeError, TypeError):
        model._kneuron_n_params = count
    return cast("int | None", count)


@contextmanager
def job(model: Any = None, n_params: int | None = None) -> Iterator[int]:
    """Run the block on the intra-op threads the current policy gives work on ``model`` (or on a model of
    ``n_params`` parameters; `ThreadPolicy.job_threads`), then restore the previous count. Yields the count used.

        with job(adapter.model):
            ...  # a captioning loop of the tiny model: one thread unless the user chose a count
    """
    import torch

    wanted = current().job_threads(parameter_count(model) if model is not None else n_params)
    before = torch.get_num_threads()
    if wanted == before:
        yield wanted
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)

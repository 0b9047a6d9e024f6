"""Joining a Ray cluster, shared by the Ray engines of ``kneuron ingest`` and ``kneuron suppress``.

    ray = import_ray()                      # or a one-line KneuronError saying how to install it
    check_reachable("10.0.0.5:6379")        # fail in seconds, not minutes, on a wrong address
    with ray_session(ray, options.address): ...

`RayOptions` are the options both commands take (``--ray-address``, ``--workers``, ``--gpus-per-worker``,
``--cpus-per-worker``; `RayOptions.worker_gpus`: the GPUs each actor reserves by them); `worker_message` turns a
Ray error into the worker's own first line.
"""
from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kneuron.engine.errors import KneuronError

INSTALL_HINT = "pip install 'kneuron[ray]'"
#: seconds to wait for a TCP connection to a cluster's address before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    address: None = start a local Ray instance (or use the one this process already joined; ``RAY_ADDRESS``
        is honoured by Ray), ``auto`` = the running cluster of this machine, ``HOST:PORT`` = that cluster.
    workers: recorder / captioner actors (each loads the model once).
    gpus_per_worker: GPUs each actor reserves (None: 1 when the cluster has GPUs and the device is not cpu).
    cpus_per_worker: CPUs each actor reserves (None: the engine picks, see its module).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None

    def validate(self) -> None:
        """Raise `KneuronError` naming the first impossible option."""
        if self.workers < 1:
            raise KneuronError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise KneuronError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise KneuronError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")

    def worker_gpus(self, total_gpus: float, device: str | None, actor: str) -> float:
        """GPUs each ``actor`` (``recorder`` / ``captioner``) reserves: ``gpus_per_worker``, else one when the
        cluster has ``total_gpus >= 1`` and ``device`` is not cpu; `KneuronError` when one actor asks for more than
        the cluster has."""
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if total_gpus >= 1 and device != "cpu" else 0.0
        if gpus > total_gpus:
            raise KneuronError(f"each {actor} asks for {gpus:g} GPU(s) but the Ray cluster has {total_gpus:g}; "
                               "lower --gpus-per-worker")
        return gpus


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line `KneuronError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise KneuronError(f"--engine ray needs Ray (with Ray Data), which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Join Ray for the run: reuse this process's connection, or start / attach (and leave afterwards)."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise KneuronError(f"cannot start or reach the Ray cluster {where}: {_first_line(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """Raise `KneuronError` unless a TCP connection to ``HOST:PORT`` opens within `CONNECT_TIMEOUT_S` (Ray
    itself would retry for minutes)."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise KneuronError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise KneuronError(f"the Ray cluster at {address} is unreachable: {exc.strerror or exc}") from None


def worker_message(exc: BaseException) -> str:
    """The first line of the innermost cause of a Ray error (a worker's `KneuronError` as it was raised)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        nxt = getattr(current, "cause", None)
        current = nxt if isinstance(nxt, BaseException) else (current.__cause__ or current.__context__)
    if isinstance(last, KneuronError):
        return str(last)
    return _first_line(last)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        text = line.strip()
        if text and not text.startswith(("Traceback", "ray::", "File ")):
            return text
    return type(exc).__name__

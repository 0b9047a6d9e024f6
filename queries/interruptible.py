"""A DuckDB query that Ctrl-C and a time limit can stop: it runs in a worker thread while the main thread waits.

    table = run_interruptible(con, lambda: queries.execute(con, text, params), timeout=30)

DuckDB runs a query in C++ on the calling thread, so a Python SIGINT handler would only run after the query
ends. Here the query runs in a worker thread; the main thread waits in short joins (where KeyboardInterrupt
arrives at once) and then calls ``con.interrupt()``; past ``timeout`` seconds it does the same and raises a
one-line `KneuronError`. The connection is used by one thread at a time: the main thread only interrupts it.
"""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kneuron.engine.errors import KneuronError

T = TypeVar("T")
POLL_S = 0.05


def run_interruptible(con: Any, work: Callable[[], T], timeout: float | None = None) -> T:
    """``work()`` (a query on ``con``) in a thread; KeyboardInterrupt or ``timeout`` stop it (`con.interrupt`)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="kneuron-query", daemon=True)
    started = time.monotonic()
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL_S)
            if timeout is not None and worker.is_alive() and time.monotonic() - started > timeout:
                con.interrupt()
                worker.join()
                outcome.clear()  # its error's traceback holds the interrupted result, which keeps the cursor busy
                raise KneuronError(f"the query ran longer than --timeout {timeout:g} s and was stopped")
    except KeyboardInterrupt:
        con.interrupt()
        worker.join()
        outcome.clear()
        raise
    finally:
        gc.collect()  # frees an interrupted result that would keep the connection busy
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])


def close_when_idle(con: Any, tries: int = 40) -> None:
    """Close a DuckDB connection, waiting (up to ``tries`` x `POLL_S`) while an interrupted call still winds down
    on it; a connection still busy after that is left to the process's exit."""
    for _ in range(tries):
        try:
            con.close()
            return
        except Exception:  # noqa: BLE001 - duckdb's "connection is busy": try again shortly
            time.sleep(POLL_S)

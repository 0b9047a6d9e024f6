"""`kneuron.Warehouse`: a warehouse from Python, read with DuckDB relations under `kneuron sql`'s rules.

    wh = kneuron.open_warehouse("kneuron-warehouse")
    wh.sql("SELECT concept, count(*) AS n FROM samples GROUP BY ALL").df()
    wh.query("layer_distribution", method="two_stage").arrow()

``sql`` and ``query`` see the views `kneuron sql` sees (the tables plus ``current_sets``, ``current_members`` and
``neuron_means``), refuse any statement that writes, and bind ``$name`` parameters by name: a parameter the SQL
uses and the call does not give is NULL (the bundled analyses read NULL as "all"); a given parameter the SQL does
not use is an error. Opening a handle creates nothing: the folder appears when `kneuron.ingest` first stores into it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from kneuron.engine.errors import KneuronError

logger = logging.getLogger(__name__)

Location = str | os.PathLike[str]


class Warehouse:
    """A handle on a warehouse location (a folder or a URI); reading needs the warehouse to exist.

    Each ``sql``/``query`` call reads the warehouse's commit records again, so rows a step stored since the last
    call are seen; a relation keeps reading the files committed when it was made.
    """

    def __init__(self, location: Location | None = None) -> None:
        from kneuron.warehouse.store import ENV_VAR, default_warehouse_path, is_uri

        if location is None:
            location = os.environ.get(ENV_VAR) or default_warehouse_path()
        text = os.fspath(location)
        self.location: str = text if is_uri(text) else str(Path(text).expanduser().absolute())

    def __repr__(self) -> str:
        return f"kneuron.Warehouse({self.location!r})"

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __fspath__(self) -> str:
        return self.location

    @property
    def root(self) -> Path:
        """The warehouse folder (a URI's text as a path for remote warehouses)."""
        return Path(self.location)

    @property
    def exists(self) -> bool:
        """Whether a warehouse is stored at this location yet."""
        try:
            self._store()
        except KneuronError:
            return False
        return True

    def close(self) -> None:
        """Nothing to release: each relation holds its own connection, closed when the relation is dropped."""

    def _store(self) -> Any:
        from kneuron import warehouse

        return warehouse.open_warehouse(self.location)

    def _connection(self) -> tuple[Any, duckdb.DuckDBPyConnection]:
        """(the opened reader, a new read-only connection over its committed files). Each query gets its own
        connection: a DuckDB connection serves one open result at a time, and a relation keeps its connection
        alive for as long as it is used."""
        from kneuron import queries

        store = self._store()
        con = queries.connect(store, read_only=True)
        logger.debug("opened a DuckDB connection over %s (%d batches)", self.location, len(store.batches))
        return store, con

    def _relation(self, text: str, params: dict[str, Any], what: str) -> duckdb.DuckDBPyRelation | None:
        from kneuron import queries

        bound = self._checked(text, params, what)
        store, con = self._connection()
        try:
            return self._run(con, text, bound)
        except duckdb.Error as exc:
            con.close()
            store.check_files()  # a vanished committed file: the one line naming it
            raise KneuronError(f"SQL error: {queries.first_line(exc)}") from exc

    @staticmethod
    def _checked(text: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        """The parameters of ``text`` bound from ``params`` (NULL where not given), after checking that
        ``params`` names only parameters the SQL has and that every statement only reads."""
        from kneuron import queries, warehouse

        wanted = queries.parameters(text)
        unknown = sorted(set(params) - set(wanted))
        if unknown:
            raise KneuronError(f"{what} has no parameter {', '.join('$' + name for name in unknown)}"
                               + (f" (it has {', '.join('$' + w for w in wanted)})" if wanted else " (it has none)"))
        parser = duckdb.connect(":memory:")
        try:
            warehouse.check_read_only_sql(parser, text)
        finally:
            parser.close()
        return {name: params.get(name) for name in wanted}

    @staticmethod
    def _run(con: duckdb.DuckDBPyConnection, text: str, bound: dict[str, Any]) -> duckdb.DuckDBPyRelation | None:
        from kneuron import queries

        if queries.BUILD_AS_WRITTEN in text.splitlines():
            with queries.joins_as_written(con):
                table = queries.execute(con, text, bound)
            return con.from_arrow(table)
        return con.sql(text, params=bound or None)

    def sql(self, text: str, params: dict[str, Any] | None = None, /, **more: Any) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation of the read-only SQL ``text`` (of its last statement); parameters by keyword or
        dict. ``.df()``, ``.pl()``, ``.fetchall()``, ``.to_arrow_table()`` read it.

        `KneuronError`: a statement that writes, an SQL error (its first line), a parameter the SQL lacks.
        """
        relation = self._relation(text, {**(params or {}), **more}, "the SQL")
        if relation is None:
            raise KneuronError("the SQL's last statement returns no rows")
        return relation

    def table(self, text: str, params: dict[str, Any] | None = None, /, *, timeout: float | None = None,
              **more: Any) -> pa.Table:
        """``sql(text, ...)`` read into a pyarrow table (a table without columns for a statement without rows);
        what `kneuron sql` prints. A committed file that vanished is the one-line error naming it. Ctrl-C stops a
        running query; so does ``timeout`` (seconds), with a one-line error (`kneuron.queries.interruptible`)."""
        from kneuron import queries
        from kneuron.queries.interruptible import close_when_idle, run_interruptible

        bound = self._checked(text, {**(params or {}), **more}, "the SQL")
        store, con = self._connection()

        def work() -> pa.Table:
            if queries.BUILD_AS_WRITTEN in text.splitlines():
                with queries.joins_as_written(con):
                    return queries.execute(con, text, bound)
            return queries.execute(con, text, bound)

        try:
            return run_interruptible(con, work, timeout)
        except KneuronError as exc:
            if isinstance(exc.__cause__, duckdb.Error):  # DuckDB says IO or Permission Error for a vanished file
                store.check_files()  # names the file and suggests `kneuron verify --repair`
            raise
        finally:
            close_when_idle(con)

    def query(self, name: str, /, **params: Any) -> duckdb.DuckDBPyRelation:
        """The bundled query ``name`` (`kneuron sql --list`), e.g. ``wh.query("set_sizes", method="two_stage")``."""
        from kneuron import queries

        relation = self._relation(queries.load(name), params, f"query {name!r}")
        assert relation is not None  # every bundled query returns rows
        return relation

    def runs(self) -> pa.Table:
        """The runs with what was ingested (`kneuron ls runs`)."""
        return self.query("list_runs").to_arrow_table()

    def sets(self, run: str | None = None) -> pa.Table:
        """The stored neuron sets and which is current (`kneuron ls sets`); ``run``: one run's only."""
        return self.query("list_sets", run_id=run).to_arrow_table()

    def evals(self, run: str | None = None) -> pa.Table:
        """The suppression evaluations (`kneuron ls evals`); ``run``: one run's only."""
        return self.query("list_evals", run_id=run).to_arrow_table()

    def neuron_set(self, set_id: str | None = None, *, concept: str | None = None, method: str = "two_stage",
                   run: str | None = None) -> list[tuple[int, int]]:
        """The (layer, unit) neurons of the set ``set_id``, else of ``concept``'s current ``method`` set of
        ``run`` (default: the latest run), strongest first: what `kneuron.caption` suppresses."""
        from kneuron.engine.pipelines.run import RunReader

        if set_id is None and concept is None:
            raise KneuronError("say which set: a set id, or concept= (and method=)")
        with RunReader(self.location, run) as reader:
            _, members, _ = reader.chosen_set(concept, method, set_id)
        return [(layer, unit) for layer, unit, _ in members]


def open_warehouse(location: Location | None = None) -> Warehouse:
    """A `Warehouse` handle on ``location`` (default ``$KNEURON_WAREHOUSE`` or ``./kneuron-warehouse``).

    Nothing is created or read yet: `kneuron.ingest` creates the warehouse; reading a missing one is a
    `KneuronError` naming the folder.
    """
    return Warehouse(location)


def location_of(wh: Warehouse | Location | None) -> str | None:
    """The location a step gets: a handle's, a path's text, or None (the default warehouse)."""
    if wh is None:
        return None
    if isinstance(wh, Warehouse):
        return wh.location
    return os.fspath(wh)

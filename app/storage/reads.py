"""Read statements run with the database driver itself, on a connection of the engine's pool.

A list page cost the gateway mostly SQLAlchemy's execution path (session, execution context,
result set-up: about three times the driver's own work for a 50-row page), not the database. On
PostgreSQL a read :class:`~sqlalchemy.Select` is compiled once and kept: a statement built once
with bound parameters (a ``PageQuery`` shape, ``app/http/paging.py``) under its identity, one
built per request under SQLAlchemy's own cache key (the same shape with other values is the same
compiled SQL). Its values go through the compiled statement's bind processors, it runs with
asyncpg's ``fetch`` on a connection checked out of the engine's pool (the same pool and
connection budget as every other query), and each column's value goes through its type's result
processor, so that rows equal what the session returns (``tests/storage/test_reads.py`` holds the
two equal shape by shape).

The statement runs in the driver's autocommit mode, as every read of a GET does. A connection
error drops the connection, and a disconnect also every connection of the pool opened before it,
as SQLAlchemy does itself. A session already inside a transaction (the read must see its writes),
a statement SQLAlchemy cannot cache, and the embedded SQLite default read through the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.util import greenlet_spawn

log = logging.getLogger("jobgate.reads")

COMPILED_CACHE_SIZE = 512
MAX_EXPANSIONS = 64  # expanded forms kept per statement (one per count of values in its lists)
# asyncpg's errors of the connection rather than of the statement: the connection is not reused.
DRIVER_CONNECTION_ERRORS = frozenset((
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "InterfaceError",
    "InternalClientError",
    "AdminShutdownError",
    "CrashShutdownError",
    "CannotConnectNowError",
))


class _Plan:
    """One compiled statement shape: its SQL, parameter order and value processors."""

    __slots__ = ("compiled", "sql", "positions", "binders", "results", "expanding", "_expansions")

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.sql: str = compiled.string
        self.positions: Sequence[str] = compiled.positiontup or ()
        self.binders: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)
        self.expanding = bool(compiled.post_compile_params or compiled.literal_execute_params)
        # An expanding IN's SQL depends only on how many values each list holds (where no value
        # is rendered literally): expanded once per count, then only bound.
        self._expansions: dict[tuple[int, ...], Any] | None = (
            {} if compiled.post_compile_params and not compiled.literal_execute_params else None
        )
        dialect = compiled.dialect
        self.results: list[Callable[[Any], Any] | None] = [
            column.type._cached_result_processor(dialect, None) for column in compiled._result_columns
        ]

    def arguments(self, key: Any, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        if key is None:  # a statement built once: every value is in ``params``
            values = self.compiled.construct_params(params, escape_names=False, _no_postcompile=True)
        else:  # a statement built for this request: its values are in its cache key
            values = self.compiled.construct_params(
                extracted_parameters=key.bindparams,
                escape_names=False,
                _collected_params=key.params,
                _no_postcompile=True,
            )
        sql, positions, binders = self.sql, self.positions, self.binders
        if self.expanding:
            expanded, kept = self._expanded(values, cached=key is None)
            sql, positions, binders = expanded.statement, expanded.positiontup or (), expanded.processors
            if kept:  # expanded for another request's values: this request's, by expanded name
                values = dict(values)
                for name, names in expanded.parameter_expansion.items():
                    values.update(zip(names, values[name]))
            else:
                values = expanded.parameters
        arguments = []
        for name in positions:
            value = values[name]
            bind = binders.get(name)
            arguments.append(value if bind is None or value is None else bind(value))
        return sql, arguments

    def _expanded(self, values: Mapping[str, Any], *, cached: bool) -> tuple[Any, bool]:
        """The post-compiled form of the statement for ``values`` (SQLAlchemy's own expansion),
        kept per count of values where the statement was built once (its parameters are named);
        and whether it was kept from an earlier request."""
        if self._expansions is None or not cached:
            return self.compiled._process_parameters_for_postcompile(values), False
        names = self.compiled.bind_names
        lengths = {names[p]: len(values[names[p]]) for p in self.compiled.post_compile_params}
        counts = tuple(lengths.values())
        expanded = self._expansions.get(counts)
        if expanded is not None:
            return expanded, True
        expanded = self.compiled._process_parameters_for_postcompile(values)  # takes the lists out of values
        expansion = expanded.parameter_expansion
        if len(self._expansions) < MAX_EXPANSIONS and all(
            len(expansion.get(name, ())) == length for name, length in lengths.items()
        ):
            self._expansions[counts] = expanded  # lists of plain values (not of tuples)
        return expanded, False

    def rows(self, records: list[Any], make: Callable[[Any], Any]) -> list[Any]:
        results = self.results
        if not any(results):
            return [make(record) for record in records]
        processed = [(i, p) for i, p in enumerate(results) if p is not None]
        out = []
        for record in records:
            row = list(record)
            for i, process in processed:
                row[i] = process(row[i])
            out.append(make(row))
        return out


class DriverReads:
    """Runs read statements with asyncpg directly; see the module's description."""

    def __init__(self, engine: AsyncEngine) -> None:
        if not self.supports(engine):
            raise ValueError("driver reads need PostgreSQL through asyncpg")
        self.engine = engine
        self.dialect = engine.dialect
        self._plans: dict[Any, Any] = {}

    @staticmethod
    def supports(engine: AsyncEngine) -> bool:
        return engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"

    def _compile(self, stmt: Select[Any], key: Any) -> _Plan:
        if len(self._plans) >= COMPILED_CACHE_SIZE:
            self._plans.clear()
        return _Plan(stmt.compile(dialect=self.dialect, cache_key=key))

    def _plan(self, stmt: Select[Any], params: Mapping[str, Any] | None) -> tuple[_Plan, Any] | None:
        if params is not None:  # built once and kept by its owner (a PageQuery's shape)
            held = self._plans.get(id(stmt))
            if held is None or held[0] is not stmt:
                held = stmt, self._compile(stmt, None)
                self._plans[id(stmt)] = held
            return held[1], None
        key = stmt._generate_cache_key()
        if key is None:
            return None
        plan = self._plans.get(key.key)
        if plan is None:
            plan = self._plans[key.key] = self._compile(stmt, key)
        return plan, key

    async def rows(
        self,
        session: AsyncSession,
        stmt: Select[Any],
        params: Mapping[str, Any] | None = None,
        make: Callable[[Any], Any] = tuple,
    ) -> list[Any]:
        """The rows of ``stmt`` (with ``params`` for its bound parameters), each made by ``make``
        from its column values in order (plain tuples by default)."""
        planned = None if session.in_transaction() else self._plan(stmt, params)
        if planned is None:
            return await _on_session(session, stmt, params, make)
        plan, key = planned
        sql, arguments = plan.arguments(key, params)
        fairy = await self._checkout()
        try:
            records = await fairy.driver_connection.fetch(sql, *arguments)
        except BaseException as error:
            await greenlet_spawn(self._discard, fairy, error)
            raise
        await greenlet_spawn(fairy.close)
        return plan.rows(records, make)

    async def _checkout(self) -> Any:
        """A connection of the pool; a failure to connect raises as the session's would (a
        :class:`~sqlalchemy.exc.DBAPIError` around the driver's error)."""
        dbapi_error = self.dialect.loaded_dbapi.Error
        try:
            return await self.engine.raw_connection()
        except dbapi_error as error:
            raise DBAPIError.instance(None, None, error, dbapi_error, dialect=self.dialect) from error

    def _discard(self, fairy: Any, error: BaseException) -> None:
        """After a failed statement: a disconnect drops the connection and every connection of the
        pool opened before it; an interrupted statement (cancelled, timed out) drops the
        connection alone; any other error (of the statement) returns it to the pool."""
        name = type(error).__name__
        sqlstate = getattr(error, "sqlstate", None) or ""
        if isinstance(error, (asyncio.CancelledError, TimeoutError)):
            fairy.invalidate(error)
        elif isinstance(error, OSError) or name in DRIVER_CONNECTION_ERRORS or sqlstate.startswith(("08", "57P")):
            self.engine.sync_engine.pool._invalidate(fairy, error)  # noqa: SLF001 - as SQLAlchemy does on a disconnect
            log.warning("database connection dropped after %s", name)
        fairy.close()


SESSION_INFO_KEY = "driver_reads"


async def read_rows(
    session: AsyncSession,
    stmt: Select[Any],
    params: Mapping[str, Any] | None = None,
    make: Callable[[Any], Any] = tuple,
) -> list[Any]:
    """The rows of a read statement, each made by ``make`` from its values (tuples by default):
    with the driver where the session's factory provides it (``Runtime.read_sessions`` on
    PostgreSQL), else on the session."""
    reads: DriverReads | None = session.info.get(SESSION_INFO_KEY)
    if reads is None:
        return await _on_session(session, stmt, params, make)
    return await reads.rows(session, stmt, params, make)


async def _on_session(
    session: AsyncSession, stmt: Select[Any], params: Mapping[str, Any] | None, make: Callable[[Any], Any]
) -> list[Any]:
    return [make(row) for row in await session.execute(stmt, params)]

"""List reads: statements built once, compiled once, run on an asyncpg pool of their own.

A list's statement is built once per shape (``PageQuery`` in the paging module) with a bound
parameter for each value a request sends. On PostgreSQL, :class:`ListReads` compiles each such
statement once with SQLAlchemy's public compiler, keeps its SQL, its parameter order and its
types' bind and result processors, and runs it with asyncpg's ``fetch`` on a pool of its own
(``asyncpg.create_pool``, part of the process's connection budget: ``app/storage/db.py``). Each
request then only binds its values and decodes its rows: the session's execution path (a
connection checkout, an execution context, a result object) is not on a list page's way.

A statement with an expanding ``IN`` (its SQL depends on how many values a request sends) is
compiled once per count of values. Every other read goes through the session: a statement built
for one request, a session inside a transaction (the read must see its writes), and the
embedded SQLite default. Both ways give the same rows (``tests/storage/test_reads.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.engine import Compiled, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import metrics
from app.settings import Settings
from app.storage.db import decode_json

log = logging.getLogger("jobgate.reads")

SESSION_INFO_KEY = "list_reads"
MAX_PLANS = 512  # statements kept compiled (every list's shapes number a few hundred at most)


# asyncpg's errors of the connection rather than of the statement.
DRIVER_CONNECTION_ERRORS = frozenset(
    (
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "InterfaceError",
        "InternalClientError",
        "AdminShutdownError",
        "CrashShutdownError",
        "CannotConnectNowError",
    )
)
ACQUIRE_TIMEOUT = 5.0  # as the engine's pool_timeout: a pool that stays busy answers 503


class _Plan:
    """One compiled statement: its SQL, its parameters in order (each a value's name, or a list's
    name and an index into it) with their bind processors, and a result processor per selected
    column (where the driver's value is not already the value)."""

    __slots__ = ("binds", "compiled", "results", "sql", "statement")

    def __init__(
        self, statement: Select[Any], base: Compiled, compiled: Compiled, dialect: Dialect, lists: Sequence[str]
    ) -> None:
        self.statement = statement  # held, so that its id is not another statement's while kept
        self.compiled = compiled
        self.sql: str = compiled.string
        expanded = {name: re.compile(re.escape(name) + r"_(\d+)\Z") for name in lists}
        self.binds: list[tuple[str, int | None, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or ():
            of_list = next(((key, m) for key, pattern in expanded.items() if (m := pattern.match(name))), None)
            if of_list is None:
                position: tuple[str, int | None] = name, None
            else:  # the n-th value of a list (SQLAlchemy numbers them from 1)
                position = of_list[0], int(of_list[1].group(1)) - 1
            bind = compiled.binds[name] if of_list is None else base.binds[position[0]]
            self.binds.append((*position, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        self.results = [
            (index, process)
            for index, column in enumerate(statement.selected_columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        arguments = []
        for name, index, bind in self.binds:
            value = values[name] if index is None else values[name][index]
            arguments.append(value if bind is None or value is None else bind(value))
        return arguments

    def rows(self, records: list[Any], make: Callable[[Any], Any]) -> list[Any]:
        if not self.results:
            return [make(record) for record in records]
        out = []
        for record in records:
            row = list(record)
            for index, process in self.results:
                row[index] = process(row[index])
            out.append(make(row))
        return out


class ListReads:
    """Runs list statements built once on the reads' own asyncpg pool (see the module's text)."""

    def __init__(self, dsn: str, dialect: Dialect, *, size: int) -> None:
        self.dsn = dsn
        self.dialect = dialect
        self.size = size
        self.pool: asyncpg.Pool | None = None
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._shapes: dict[int, tuple[Select[Any], Compiled, tuple[str, ...]]] = {}

    async def open(self) -> None:
        """Create the pool; its connections are opened when reads need them."""
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,
                max_size=self.size,
                max_inactive_connection_lifetime=300,
                timeout=5,  # to connect: as the engine's connections
                command_timeout=10,
                server_settings={"application_name": "jobgate"},
                init=_json_codecs,
                reset=_nothing_to_reset,
            )

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    def _plan(self, statement: Select[Any], params: Mapping[str, Any]) -> tuple[_Plan, Mapping[str, Any]]:
        """The plan of the statement and the values of all its parameters (``params``, and those
        the statement holds itself). A statement with lists (an ``IN`` of bound values) is planned
        once per count of values in each list, each value a parameter of its own."""
        shape = self._shapes.get(id(statement))
        if shape is None or shape[0] is not statement:
            compiled = statement.compile(dialect=self.dialect)
            lists = tuple({compiled.bind_names[bind] for bind in compiled.binds.values() if bind.expanding})
            shape = statement, compiled, lists
            self._shapes[id(statement)] = shape
        _, base, lists = shape
        values = base.construct_params(params, escape_names=False)
        key = (id(statement), *(len(values[name]) for name in lists))
        plan = self._plans.get(key)
        if plan is None or plan.statement is not statement:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
                self._shapes.clear()
            compiled = base
            if lists:
                # Rendered with this request's values (each list's values become parameters of their
                # own; every other value stays a parameter): any request of these counts binds it.
                valued = statement.params(dict(params))
                compiled = valued.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
            plan = self._plans[key] = _Plan(statement, base, compiled, self.dialect, lists)
        return plan, values

    async def rows(
        self, statement: Select[Any], params: Mapping[str, Any], make: Callable[[Any], Any]
    ) -> list[Any] | None:
        """The rows of ``statement`` with ``params``, or None before the pool is open."""
        if self.pool is None:
            return None
        plan, values = self._plan(statement, params)
        arguments = plan.arguments(values)
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:  # type: ignore[union-attr]
                metrics.POOL_CHECKED_OUT.inc()
                try:
                    records = await connection.fetch(plan.sql, *arguments)
                finally:
                    metrics.POOL_CHECKED_OUT.dec()
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as error:
            # The database went away (a restart, a failover): every connection opened before now
            # is replaced when next acquired, rather than failing one request each.
            await self.pool.expire_connections()  # type: ignore[union-attr]
            log.warning("database connection dropped after %s", type(error).__name__)
            raise
        return plan.rows(records, make)


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """A list read is one statement in autocommit that changes nothing of the connection's
    session (no SET, LISTEN, advisory lock or cursor), so a released connection skips the
    default reset query: a round trip per read, as much as the read's own."""


async def _json_codecs(connection: asyncpg.Connection) -> None:
    """JSON columns decoded as the engine decodes them (``decode_json``); a JSON value to bind
    is already text (the type's bind processor encodes it), as on the engine's connections."""
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=str, decoder=decode_json, format="text"
        )


def open_list_reads(settings: Settings, engine: AsyncEngine, *, size: int) -> ListReads | None:
    """The list reads of a PostgreSQL database (None on the embedded SQLite default)."""
    if settings.is_sqlite:
        return None
    url = make_url(settings.database_url).set(drivername="postgresql")
    return ListReads(url.render_as_string(hide_password=False), engine.dialect, size=size)


async def read_rows(
    session: AsyncSession,
    stmt: Select[Any],
    params: Mapping[str, Any] | None = None,
    make: Callable[[Any], Any] = tuple,
) -> list[Any]:
    """The rows of a read statement, each made by ``make`` from its values (tuples by default).

    A statement built once and run with ``params`` goes to the session's :class:`ListReads`
    where its factory provides one and the session holds no transaction; anything else runs on
    the session."""
    reads: ListReads | None = session.info.get(SESSION_INFO_KEY)
    if reads is not None and params is not None and not session.in_transaction():
        rows = await reads.rows(stmt, params, make)
        if rows is not None:
            return rows
    return [make(row) for row in await session.execute(stmt, params)]

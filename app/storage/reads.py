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

Between reads, a read's connection stays with the read path (:class:`LeasingPool`, the engine's
pool on PostgreSQL): checking a connection out of SQLAlchemy's pool and back in costs a read about
50 µs in a serving process (pool records, events, reset on return, a greenlet each way), as
much as the rest of a list page's Python work. The next read takes it back directly, and a read
that finds none while the pool is at its full size waits (up to the pool's timeout) for the one
an ending read hands over. A connection kept this way is still checked out of the pool (the
connection budget is the pool's):
whoever asks the pool while it has none in its queue is handed one the reads keep, a read ending
while someone waits for the pool returns its connection there, and a connection unused for
:data:`LEASE_IDLE_SECONDS` goes back to the queue. A kept connection the pool would no longer
hand out (invalidated, older than the pool's last disconnect, past its recycle age) is returned,
not reused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import greenlet_spawn

log = logging.getLogger("jobgate.reads")

COMPILED_CACHE_SIZE = 512
MAX_EXPANSIONS = 64  # expanded forms kept per statement (one per count of values in its lists)
LEASE_IDLE_SECONDS = 1.0  # a connection the reads keep goes back to the pool's queue unused this long
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


class LeasingPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, which also keeps the driver reads' connections between reads
    and hands them from one read to the next (see the module's description)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: list[tuple[Any, float]] = []  # (checked-out connection, when its read ended)
        self._readers: deque[asyncio.Future[Any]] = deque()  # reads waiting for a connection
        self._waiting = 0  # checkouts of the pool waiting for its queue (it was empty, at full size)
        self._trim: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        self._returning: list[Any] = []  # connections a task of _close_soon is to return
        self._disposed = False

    # -- the read path's side ------------------------------------------------------------------

    async def lease(self) -> Any | None:
        """A connection for a read: one the reads keep, or one an ending read hands over while
        the pool has none to give (after whoever else waits for the pool); None: a checkout of
        the pool gets one without waiting."""
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            while self._kept:  # (the list itself: it may change while an unfit one is returned)
                fairy, _ = self._kept.pop()
                if self._fit(fairy):
                    return fairy
                await greenlet_spawn(fairy.close)
            if self._disposed or (not self._waiting and (not self._pool.empty() or self._can_grow())):
                return None
            if deadline is None:
                deadline = loop.time() + self._timeout
            handed: asyncio.Future[Any] = loop.create_future()
            self._readers.append(handed)
            expiry = loop.call_at(deadline, _expire, handed, self)
            try:
                fairy = await handed
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled() and handed.exception() is None:
                    self._pass_on(handed.result())  # handed over just as this read was cancelled
                raise
            finally:
                expiry.cancel()
            if fairy is not None:
                if self._fit(fairy):  # (a disconnect seen meanwhile retires it)
                    return fairy
                await greenlet_spawn(fairy.close)
            # None: a connection went back to the queue; take it, unless another took it first

    def _can_grow(self) -> bool:
        return self._max_overflow < 0 or self._overflow < self._max_overflow

    def release(self, fairy: Any) -> bool:
        """The connection of a read that ended: handed to a waiting read, else kept, unless
        someone waits for the pool or the pool would not hand it out again (False: the caller
        returns it to the pool)."""
        if self._waiting or self._disposed or fairy._pool is not self or not self._fit(fairy):
            return False
        if self._hand(fairy):
            return True
        self._kept.append((fairy, time.monotonic()))
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(LEASE_IDLE_SECONDS, self._return_idle)
        return True

    def _hand(self, fairy: Any | None) -> bool:
        """Give the first waiting read a connection (or None: the queue has one); False: none waits."""
        readers = self._readers
        while readers:
            handed = readers.popleft()
            if not handed.done():
                handed.set_result(fairy)
                return True
        return False

    def _pass_on(self, fairy: Any | None) -> None:
        """What a cancelled read was handed: to the next read, kept, or back to the pool."""
        if fairy is None:
            self._hand(None)
        elif not self.release(fairy):
            self._close_soon([fairy])

    def _close_soon(self, fairies: list[Any]) -> None:
        """Return connections to the queue from a task (a return runs in a greenlet); until it
        runs they are the pool's to return on :meth:`dispose`."""
        self._returning.extend(fairies)
        task = asyncio.get_running_loop().create_task(greenlet_spawn(self._return_pending))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _return_pending(self) -> None:
        while self._returning:
            self._returning.pop().close()

    def _fit(self, fairy: Any) -> bool:
        record = fairy._connection_record
        if record is None or fairy.dbapi_connection is None:
            return False
        started = record.starttime
        return (
            started >= self._invalidate_time
            and started >= record._soft_invalidate_time
            and (self._recycle < 0 or time.time() - started <= self._recycle)
        )

    def _return_idle(self) -> None:
        self._trim = None
        horizon = time.monotonic() - LEASE_IDLE_SECONDS
        idle = [fairy for fairy, since in self._kept if since <= horizon]
        self._kept[:] = [(fairy, since) for fairy, since in self._kept if since > horizon]  # in place
        if idle:
            self._close_soon(idle)
        if self._kept:
            self._trim = asyncio.get_running_loop().call_later(LEASE_IDLE_SECONDS, self._return_idle)

    # -- everyone else's side ------------------------------------------------------------------

    def _do_get(self) -> Any:
        if self._kept and self._pool.empty():
            # A connection the reads keep joins the queue, for this checkout (counted as waiting
            # meanwhile: no waiting read is woken for it).
            fairy, _ = self._kept.pop()
            self._waiting += 1
            try:
                fairy.close()
            finally:
                self._waiting -= 1
        if not self._pool.empty() or self._can_grow():
            return super()._do_get()
        self._waiting += 1
        try:
            return super()._do_get()
        finally:
            self._waiting -= 1
            if not self._waiting and not self._pool.empty():
                # This checkout gave up (cancelled, timed out) with a connection it was woken for
                # left in the queue, or others came back meanwhile: a waiting read takes one.
                self._hand(None)

    def _do_return_conn(self, record: Any) -> None:
        super()._do_return_conn(record)
        if not self._waiting:  # nobody waits for the queue: a waiting read checks this one out
            self._hand(None)

    def dispose(self) -> None:
        self._disposed = True
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        self._returning.extend(fairy for fairy, _ in self._kept)
        self._kept.clear()
        self._return_pending()
        while self._hand(None):  # waiting reads check out of the pool instead
            pass
        super().dispose()


def _expire(handed: asyncio.Future[Any], pool: LeasingPool) -> None:
    if not handed.done():
        handed.set_exception(
            PoolTimeoutError(
                f"QueuePool limit of size {pool.size()} overflow {pool.overflow()} reached, "
                f"connection timed out, timeout {pool.timeout():0.2f}"
            )
        )


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
        pool = self.engine.sync_engine.pool
        if not (isinstance(pool, LeasingPool) and pool.release(fairy)):
            await greenlet_spawn(fairy.close)
        return plan.rows(records, make)

    async def _checkout(self) -> Any:
        """A connection the reads keep, else one of the pool; a failure to connect raises as the
        session's would (a :class:`~sqlalchemy.exc.DBAPIError` around the driver's error)."""
        pool = self.engine.sync_engine.pool
        if isinstance(pool, LeasingPool):
            fairy = await pool.lease()
            if fairy is not None:
                return fairy
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
            fairy._pool._invalidate(fairy, error)  # noqa: SLF001 - as SQLAlchemy does on a disconnect
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

"""The change feed inside one gateway process: its copy of the tenants' versions, and subscriptions.

PostgreSQL: the triggers of migration 0011 notify channel ``jobgate_feed`` with
``<tenant>:<sequence>`` at commit. The hub listens on a connection of its own (outside every
pool), marks the tenant *pending*, and reads the tenant's events after the sequence it knows
(``feed_events``, keyed by the tenant's sequence, which commits in order; pending tenants are read
together, :data:`DRAIN_TENANTS` a query, since a worker's change notifies every tenant that sees
it at once): nothing a notification
announced is lost, even when notifications collapse or arrive late, and after a lost connection
the hub reloads every version and reads what its subscribers missed. The embedded default
(SQLite, one process) reads new events by rowid after every commit of the process's engine (and
once a second, for the commands that write the same file).

The copy answers :meth:`FeedHub.versions` only while it is current: the listening connection is
up (checked every second) and no notification of the tenant waits to be read; otherwise None, and
a caller falls back to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage import feed
from app.storage.feed import CHANNEL, SEQUENCE, Change

log = logging.getLogger("jobgate.feed")

FETCH_LIMIT = 5000
LIVENESS_SECONDS = 1.0
RECONNECT_SECONDS = 0.2  # the first wait before reconnecting; doubled up to 5 s while it fails
PURGE_EVERY_SECONDS = 60.0
PURGE_BATCH = 10_000

DRAIN_TENANTS = 500  # pending tenants read by one query (a worker's change notifies every tenant that sees it)
# Each tenant's events after the sequence this process knows of it, at most $3 per tenant.
_EVENTS_AFTER = (
    "SELECT e.tenant_id, e.seq, e.kind, e.object_id, e.project_id, e.at "
    "FROM unnest($1::bigint[], $2::bigint[]) AS k(tenant_id, after) "
    "CROSS JOIN LATERAL (SELECT * FROM feed_events f WHERE f.tenant_id = k.tenant_id AND f.seq > k.after "
    "ORDER BY f.seq LIMIT $3) e ORDER BY e.tenant_id, e.seq"
)


class ChangeFilter:
    """Which changes a stream takes: of ``kinds`` and, under a project, that project's objects and
    the objects of ``wide`` kinds (those that belong to no project). One small object per stream,
    no closure; the fan-out calls it once per change and stream."""

    __slots__ = ("kinds", "project", "wide")

    def __init__(self, kinds: frozenset[str], project: str | None = None, wide: frozenset[str] = frozenset()) -> None:
        self.kinds = kinds
        self.project = project
        self.wide = wide

    def __call__(self, change: Change) -> bool:
        if change.kind not in self.kinds:
            return False
        return self.project is None or change.project_id == self.project or change.kind in self.wide


class Subscription:
    """A bounded queue of one stream's changes. Beyond ``capacity`` changes the queue is emptied and
    marked :attr:`dropped`: the stream reads what it missed from the database (or ends), so a burst
    or a slow reader never makes the process hold more than ``capacity`` changes for it.

    Waiting costs one future while it waits and one timer handle per :meth:`due` instant: no task,
    no event object (a process holds thousands of idle subscriptions)."""

    __slots__ = ("tenant_ids", "accept", "capacity", "queue", "dropped", "closed", "expired", "_waiter", "_timer")

    def __init__(self, tenant_ids: frozenset[int], accept: Callable[[Change], bool], capacity: int) -> None:
        self.tenant_ids = tenant_ids
        self.accept = accept
        self.capacity = capacity
        self.queue: list[Change] = []
        self.dropped = False
        self.closed = False
        self.expired = False  # the instant given to :meth:`due` has passed
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, change: Change) -> None:
        if self.dropped or not self.accept(change):
            return
        if len(self.queue) >= self.capacity:
            self.dropped = True
            self.queue = []
        else:
            self.queue.append(change)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def resume(self) -> None:
        """Take changes again after a drop (the stream read what it missed from the database)."""
        self.dropped = False
        self.queue = []

    def due(self, when: float) -> None:
        """Wake the waiter at ``when`` (``time.monotonic``) and set :attr:`expired` then."""
        if self._timer is not None:
            self._timer.cancel()
        self.expired = False
        self._timer = asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until a change, a drop, a close or the :meth:`due` instant."""
        if self.queue or self.dropped or self.closed or self.expired:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> list[Change]:
        changes = self.queue
        self.queue = []
        return changes

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FeedHub:
    def __init__(self, engine: AsyncEngine, database_url: str, *, retention_seconds: int, sqlite: bool) -> None:
        self.engine = engine
        self.retention_seconds = retention_seconds
        self.sqlite = sqlite
        self._dsn = None if sqlite else make_url(database_url).set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._versions: dict[int, dict[str, int]] = {}
        self._pending: set[int] = set()
        self._subscribers: dict[int, set[Subscription]] = {}
        self._current = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._connection: asyncpg.Connection | None = None
        self._last_rowid = 0
        self._last_purge = 0.0
        self._stopping = False
        self._commit_listener: Callable[..., None] | None = None

    # -- what the gateway asks ---------------------------------------------------------------

    @property
    def current(self) -> bool:
        return self._current

    def versions(self, tenant_id: int, kinds: Iterable[str]) -> tuple[int, ...] | None:
        """The tenant's versions of ``kinds`` as this process knows them, or None while the copy
        may be behind (feed down, or a notification of the tenant not yet read)."""
        if not self._current or tenant_id in self._pending:
            return None
        known = self._versions.get(tenant_id, {})
        return tuple(known.get(kind, 0) for kind in kinds)

    @property
    def listening_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection (None while disconnected, and on SQLite)."""
        return self._connection.get_server_pid() if self._connection is not None and self._current else None

    def sequence(self, tenant_id: int) -> int:
        return self._versions.get(tenant_id, {}).get(SEQUENCE, 0)

    def subscribe(
        self, tenant_ids: Iterable[int], accept: Callable[[Change], bool], capacity: int = 1000
    ) -> Subscription:
        subscription = Subscription(frozenset(tenant_ids), accept, capacity)
        for tenant_id in subscription.tenant_ids:
            self._subscribers.setdefault(tenant_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.release()
        for tenant_id in subscription.tenant_ids:
            subscribers = self._subscribers.get(tenant_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[tenant_id]

    @property
    def subscriptions(self) -> int:
        return len({s for subs in self._subscribers.values() for s in subs})

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        if self.sqlite:
            loop = asyncio.get_running_loop()

            def committed(_connection: Any) -> None:
                loop.call_soon_threadsafe(self._wake.set)

            self._commit_listener = committed
            event.listen(self.engine.sync_engine, "commit", committed)
            async with self.engine.connect() as connection:
                self._versions = await feed.all_versions(connection)
                self._last_rowid = int(
                    (await connection.execute(text("SELECT coalesce(max(rowid), 0) FROM feed_events"))).scalar_one()
                )
            self._current = True
            self._tasks = [asyncio.create_task(self._poll_sqlite(), name="jobgate-feed")]
        else:
            self._tasks = [asyncio.create_task(self._listen(), name="jobgate-feed")]

    def end_streams(self) -> None:
        """Close every subscription (their streams end with a retry hint); the process is stopping."""
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.close()

    async def stop(self) -> None:
        self._stopping = True
        self._current = False
        self.end_streams()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._commit_listener is not None:
            event.remove(self.engine.sync_engine, "commit", self._commit_listener)
            self._commit_listener = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    # -- PostgreSQL ---------------------------------------------------------------------------

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        tenant, _, seq = payload.partition(":")
        try:
            tenant_id, sequence = int(tenant), int(seq)
        except ValueError:
            return
        if sequence > self.sequence(tenant_id):
            self._pending.add(tenant_id)
            self._wake.set()

    def _lost(self, _connection: Any) -> None:
        # the listening connection closed: from now on the copy may miss notifications
        self._current = False
        self._wake.set()

    async def _listen(self) -> None:
        backoff = RECONNECT_SECONDS
        while not self._stopping:
            try:
                self._connection = await asyncpg.connect(self._dsn, timeout=5, server_settings={
                    "application_name": "jobgate-feed"})
                self._connection.add_termination_listener(self._lost)
                await self._connection.add_listener(CHANNEL, self._notified)
                await self._reload()
                backoff = RECONNECT_SECONDS
                await self._serve_pg()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to the database, reconnect
                log.warning("change feed disconnected (%s); reconnecting", type(exc).__name__)
            self._current = False
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.terminate()
                self._connection = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _reload(self) -> None:
        """Every version from the database, and what the subscribers missed while disconnected."""
        assert self._connection is not None
        rows = await self._connection.fetch("SELECT tenant_id, kind, version FROM feed_versions")
        fresh: dict[int, dict[str, int]] = {}
        for tenant_id, kind, version in rows:
            fresh.setdefault(tenant_id, {})[kind] = version
        behind = [t for t in self._subscribers if fresh.get(t, {}).get(SEQUENCE, 0) > self.sequence(t)]
        self._pending.update(behind)
        for tenant_id, versions in fresh.items():
            if tenant_id not in self._pending:
                self._versions[tenant_id] = versions
        await self._drain_pg()
        self._current = not self._connection.is_closed()

    async def _serve_pg(self) -> None:
        connection = self._connection
        assert connection is not None
        next_check = time.monotonic() + LIVENESS_SECONDS
        while not self._stopping:
            timeout = max(0.0, next_check - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self._drain_pg()
            if time.monotonic() >= next_check:
                # a dead listening connection notifies nothing: prove it alive, or fall back
                await asyncio.wait_for(connection.fetchval("SELECT 1"), LIVENESS_SECONDS)
                next_check = time.monotonic() + LIVENESS_SECONDS
                await self._purge()

    async def _drain_pg(self) -> None:
        connection = self._connection
        assert connection is not None
        while self._pending:
            tenants = list(itertools.islice(self._pending, DRAIN_TENANTS))
            limit = max(100, FETCH_LIMIT // len(tenants))  # a bounded read however many tenants are pending
            rows = await connection.fetch(_EVENTS_AFTER, tenants, [self.sequence(t) for t in tenants], limit)
            self._apply([Change(*row) for row in rows])
            read = Counter(row[0] for row in rows)
            self._pending.difference_update(t for t in tenants if read[t] < limit)

    # -- SQLite --------------------------------------------------------------------------------

    async def _poll_sqlite(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            try:
                async with self.engine.connect() as connection:
                    while True:
                        rows = (
                            await connection.execute(
                                text("SELECT rowid, tenant_id, seq, kind, object_id, project_id, at FROM feed_events "
                                     "WHERE rowid > :after ORDER BY rowid LIMIT :limit"),
                                {"after": self._last_rowid, "limit": FETCH_LIMIT},
                            )
                        ).all()
                        if rows:
                            self._last_rowid = rows[-1][0]
                            self._apply([Change(*row[1:]) for row in rows])
                        if len(rows) < FETCH_LIMIT:
                            break
                    await self._purge(connection)
                self._current = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._current = False
                log.warning("change feed could not read (%s)", type(exc).__name__)
                await asyncio.sleep(0.5)

    # -- both ----------------------------------------------------------------------------------

    def _apply(self, changes: list[Change]) -> None:
        for change in changes:
            versions = self._versions.setdefault(change.tenant_id, {})
            if change.seq <= versions.get(SEQUENCE, 0):
                continue  # already seen
            versions[SEQUENCE] = change.seq
            versions[change.kind] = change.seq
            for subscription in tuple(self._subscribers.get(change.tenant_id, ())):
                subscription.offer(change)

    async def _purge(self, connection: Any = None) -> None:
        now = time.time()
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        before = int((now - self.retention_seconds) * 1000)
        try:
            if connection is not None:  # SQLite
                await connection.execute(
                    text("DELETE FROM feed_events WHERE rowid IN (SELECT rowid FROM feed_events WHERE at < :before "
                         "LIMIT :batch)"),
                    {"before": before, "batch": PURGE_BATCH},
                )
                await connection.commit()
            else:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        text("DELETE FROM feed_events WHERE ctid = ANY (ARRAY(SELECT ctid FROM feed_events "
                             "WHERE at < :before LIMIT :batch))"),
                        {"before": before, "batch": PURGE_BATCH},
                    )
        except Exception as exc:  # noqa: BLE001 - the next purge tries again
            log.warning("change feed purge failed (%s)", type(exc).__name__)

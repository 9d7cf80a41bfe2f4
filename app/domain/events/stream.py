"""What an event stream sends: the caller's tenant's changes, filtered and coalesced.

One function builds a stream (:func:`change_events`), one builds the lifecycle routes' stream of
snapshots (:func:`snapshots`); both yield :class:`Outgoing` messages that the HTTP edge writes as
``text/event-stream``. A stream ends at the token's expiry, when the process shuts down (with a
``retry`` hint), or when its reader falls too far behind (it resumes with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller
from app.core.problems import FieldError, Problem
from app.storage import feed
from app.storage.feed import KINDS, SEQUENCE, Change
from app.storage.hub import ChangeFilter, FeedHub, Subscription

HEARTBEAT_SECONDS = 15.0
COALESCE_SECONDS = 0.1  # changes of one object within this window are sent once, as its latest
RETRY_MS = 2000  # the reconnection delay a stream ends with
CAPACITY = 1000  # changes a stream holds in memory; beyond, it reads them from the database instead
CATCH_UPS = 3  # times in a row a stream may fall behind its capacity before it is dropped
LEASE_SECONDS = 45  # a stream's hold on its tenant's budget; renewed at every heartbeat

# The scope a kind of change needs (the stream itself needs orch:read).
KIND_SCOPES = {
    "source": "orch:read",
    "job": "orch:read",
    "packrun": "orch:read",
    "operation": "orch:read",
    "quota": "orch:quota",
    "deadletter": "orch:operate",
    "worker": "orch:operate",
    "audit": "orch:operate",
}
assert set(KIND_SCOPES) == set(KINDS)


class Outgoing(NamedTuple):
    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None
    encoded: bytes | None = None  # the message's bytes when built beforehand (:func:`message`)


class EventData(msgspec.Struct, omit_defaults=True, rename="camel"):
    kind: str
    id: str
    version: int
    at: str
    project_id: str | None = None


def parse_kinds(raw: str | None, caller: Caller) -> frozenset[str]:
    """The kinds the caller asked for (all by default), narrowed to those its scopes may read."""
    readable = frozenset(kind for kind, scope in KIND_SCOPES.items() if scope in caller.scopes)
    if raw is None:
        return readable
    asked = [kind.strip() for kind in raw.split(",")]
    unknown = sorted({kind for kind in asked if kind not in KIND_SCOPES})
    if unknown or not any(asked):
        raise Problem(
            400,
            "validation_failed",
            "kinds must be a comma list of " + ", ".join(KIND_SCOPES) + ".",
            errors=[FieldError("kinds", f"unknown kind(s): {', '.join(unknown) or '(empty)'}")],
        )
    return frozenset(asked) & readable


def parse_last_event_id(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise Problem(
            400,
            "invalid_last_event_id",
            "Last-Event-ID must be the id of an event this stream sent (a non-negative integer).",
        )
    return int(value)


def instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def coalesced(changes: Iterable[Change]) -> list[Change]:
    """The latest change of each object, in sequence order."""
    latest: dict[tuple[str, str], Change] = {}
    for change in changes:
        latest[(change.kind, change.object_id)] = change
    return sorted(latest.values(), key=lambda change: change.seq)


@functools.lru_cache(maxsize=1024)
def message(change: Change) -> Outgoing:
    """A change's event; one object for every stream that sends it (the fan-out builds it once)."""
    data = EventData(change.kind, change.object_id, change.seq, instant(change.at), change.project_id)
    outgoing = Outgoing(event=f"{change.kind}.changed", id=str(change.seq), data=msgspec.json.encode(data).decode())
    return outgoing._replace(encoded=encode(outgoing))


def encode(outgoing: Outgoing) -> bytes:
    """The ``text/event-stream`` bytes of a message."""
    if outgoing.encoded is not None:
        return outgoing.encoded
    lines: list[str] = []
    if outgoing.comment is not None:
        lines.extend(f": {line}" for line in _LINE_BREAK.split(outgoing.comment))
    if outgoing.id is not None:
        lines.append(f"id: {_one_line(outgoing.id)}")
    if outgoing.event is not None:
        lines.append(f"event: {_one_line(outgoing.event)}")
    if outgoing.data is not None:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(outgoing.data))
    if outgoing.retry is not None:
        lines.append(f"retry: {outgoing.retry}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _one_line(value: str) -> str:
    return _LINE_BREAK.sub("", value)


# Kinds whose objects belong to no project: a project's caller reads them all (quotas are the tenant's,
# the workers that may run its jobs serve every project).
TENANT_WIDE = frozenset({"quota", "worker"})


def accepting(kinds: frozenset[str], project: str | None) -> Callable[[Change], bool]:
    """Changes of these kinds, and under a project only what that project's reads show: its own
    objects, and the objects of the kinds that belong to no project."""
    return ChangeFilter(kinds, project, TENANT_WIDE)


class StreamBudget:
    """``JOBGATE_STREAMS_PER_PROCESS`` open streams in this process, ``JOBGATE_STREAMS_PER_TENANT``
    per tenant across every process (leases in the shared store, renewed while a stream lives, so a
    crashed process's streams lapse). The shared store unreachable: the tenant budget is not
    enforced (it fails open, like the rate limit)."""

    def __init__(self, store: Any, per_tenant: int, per_process: int) -> None:
        self.store = store
        self.per_tenant = per_tenant
        self.per_process = per_process
        self.open = 0

    async def take(self, tenant_id: int, stream_id: str) -> None:
        if self.open >= self.per_process or not await self.renew(tenant_id, stream_id):
            raise Problem(429, "too_many_streams", "Too many open event streams; retry later.",
                          headers={"Retry-After": "5"})
        self.open += 1

    async def renew(self, tenant_id: int, stream_id: str) -> bool:
        try:
            return bool(await self.store.lease(f"streams:{tenant_id}", stream_id, self.per_tenant, LEASE_SECONDS))
        except Exception:  # noqa: BLE001 - fail open
            return True

    async def give_back(self, tenant_id: int, stream_id: str) -> None:
        self.open -= 1
        try:
            await self.store.release(f"streams:{tenant_id}", stream_id)
        except Exception:  # noqa: BLE001 - the lease lapses by itself
            pass


async def _wait(subscription: Subscription, deadline: float, heartbeat: float) -> str:
    """'change', 'closed', 'dropped', 'heartbeat' (then the next one is due ``heartbeat`` seconds
    later: a comment every 15 s whatever else the stream sends) or 'expired'."""
    await subscription.wait()
    if time.monotonic() >= deadline:
        return "expired"
    if subscription.closed:
        return "closed"
    if subscription.dropped:
        return "dropped"
    if subscription.queue and not subscription.expired:
        return "change"
    subscription.due(min(deadline, time.monotonic() + heartbeat))
    return "heartbeat"


async def change_events(
    hub: FeedHub,
    sessions: async_sessionmaker[AsyncSession],
    caller: Caller,
    kinds: frozenset[str],
    after: int | None,
    deadline: float,
    *,
    keep: Callable[[], Awaitable[bool]] | None = None,
    heartbeat: float = HEARTBEAT_SECONDS,
    window: float = COALESCE_SECONDS,
) -> AsyncIterator[Outgoing]:
    """The tenant's changes from now, or from after ``after`` (Last-Event-ID): every retained
    change since, or one ``reset`` event when some were purged. ``keep`` is awaited at each
    heartbeat; False ends the stream (its budget lease was lost)."""
    tenant_id = caller.tenant_id
    accept = accepting(kinds, caller.project)
    subscription = hub.subscribe([tenant_id], accept, CAPACITY)
    try:
        last = 0
        if after is not None:
            async with sessions() as session:
                current = (await feed.versions_of(session, tenant_id)).get(SEQUENCE, 0)
                oldest = await feed.oldest_retained(session, tenant_id)
            if after > current or (after < current and (oldest is None or oldest > after + 1)):
                yield Outgoing(event="reset", id=str(current), data="{}")
                last = current
            else:
                last = after
                async for outgoing in _read_back(sessions, tenant_id, accept, after):
                    yield outgoing
                    last = int(outgoing.id or last)
        behind = 0
        quiet = 0.0  # changes are sent at once from this instant on; before it they wait for it
        subscription.due(min(deadline, time.monotonic() + heartbeat))
        while True:
            state = await _wait(subscription, deadline, heartbeat)
            if state == "expired":
                return
            if state == "closed":
                yield Outgoing(retry=RETRY_MS, comment="closed")
                return
            if state == "dropped":
                # More changes than the stream holds (a burst, or a reader that does not keep up): read
                # them from the database instead, coalesced; a reader that stays behind is dropped.
                behind += 1
                if behind > CATCH_UPS:
                    yield Outgoing(retry=100, comment="dropped")
                    return
                subscription.resume()
                async for outgoing in _read_back(sessions, tenant_id, accept, last, coalesce=True):
                    yield outgoing
                    last = int(outgoing.id or last)
                continue
            if state == "heartbeat":
                if keep is not None and not await keep():
                    yield Outgoing(retry=RETRY_MS, comment="over budget")
                    return
                yield Outgoing(comment="keepalive")
                continue
            behind = 0
            hold = quiet - time.monotonic()
            if hold > 0:  # within the window after the last send: what arrives meanwhile goes once
                await asyncio.sleep(hold)
            for change in coalesced(c for c in subscription.take() if c.seq > last):
                yield message(change)
                last = change.seq
            quiet = time.monotonic() + window
    finally:
        hub.unsubscribe(subscription)


async def _read_back(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: int,
    accept: Callable[[Change], bool],
    after: int,
    *,
    coalesce: bool = False,
) -> AsyncIterator[Outgoing]:
    """The retained changes after ``after``, page by page (each page coalesced when asked); the
    last message of a page carries the page's last sequence, so resumption skips what was read."""
    last = after
    while True:
        async with sessions() as session:
            page = await feed.changes_after(session, tenant_id, last, 1000)
        if not page:
            return
        wanted = [change for change in page if accept(change)]
        for change in coalesced(wanted) if coalesce else wanted:
            yield message(change)
        last = page[-1].seq
        if len(page) < 1000:
            return


async def snapshots(
    hub: FeedHub,
    tenant_ids: Iterable[int],
    read: Callable[[], Awaitable[bytes]],
    deadline: float,
    *,
    keep: Callable[[], Awaitable[bool]] | None = None,
    kinds: frozenset[str] = frozenset({"operation", "packrun"}),
    heartbeat: float = HEARTBEAT_SECONDS,
    window: float = COALESCE_SECONDS,
) -> AsyncIterator[Outgoing]:
    """A lifecycle route as a stream: ``snapshot`` (what the JSON route answers) first, then
    ``changed`` with the new answer whenever a change of ``kinds`` of ``tenant_ids`` committed and
    the answer differs. The answers depend on the clock (freshness): each heartbeat reads it again
    too, and sends ``changed`` when it moved."""
    subscription = hub.subscribe(tenant_ids, ChangeFilter(kinds), CAPACITY)
    try:
        body = await read()
        yield Outgoing(event="snapshot", data=body.decode())
        subscription.due(min(deadline, time.monotonic() + heartbeat))
        while True:
            state = await _wait(subscription, deadline, heartbeat)
            if state == "expired":
                return
            if state == "closed":
                yield Outgoing(retry=RETRY_MS, comment=state)
                return
            if state == "dropped":  # more changes than it holds: one re-read says them all
                subscription.resume()
            if state == "heartbeat":
                if keep is not None and not await keep():
                    yield Outgoing(retry=RETRY_MS, comment="over budget")
                    return
                fresh = await read()
                if fresh != body:
                    body = fresh
                    yield Outgoing(event="changed", data=body.decode())
                else:
                    yield Outgoing(comment="keepalive")
                continue
            subscription.take()
            fresh = await read()
            if fresh != body:
                body = fresh
                yield Outgoing(event="changed", data=body.decode())
            await asyncio.sleep(window)
    finally:
        hub.unsubscribe(subscription)

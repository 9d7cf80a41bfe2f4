"""The stream of changes inside one gateway process, on both backends: live changes, heartbeats,
coalescing, a slow reader dropped (never more than its capacity held), the catch-up of
Last-Event-ID, and the process's copy of the versions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from sqlalchemy import update

from app.domain.events import stream
from app.storage.feed import Change, changes_after, versions_of
from app.storage.hub import Subscription
from app.storage.models import Source
from tests.api.rows import Rows

ALL = frozenset(stream.KIND_SCOPES)


async def caller_of(runtime: Any, tenant: str, scopes: str = "orch:read orch:quota orch:operate",
                    project: str | None = None) -> Any:
    from app.core.caller import Caller

    return Caller(subject="t", client_id=None, scopes=frozenset(scopes.split()), granted_tenants=(tenant,),
                  tenant=await runtime.tenants.get(tenant), project=project, trace_id="t" * 32)


async def take(messages: Any, count: int, timeout: float = 10.0) -> list[stream.Outgoing]:
    got: list[stream.Outgoing] = []

    async def run() -> None:
        async for outgoing in messages:
            got.append(outgoing)
            if len(got) == count:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def caught_up(runtime: Any, tenant_id: int) -> int:
    """Wait until the process's copy has the tenant's sequence of the database; return it."""
    async with runtime.sessions() as session:
        want = (await versions_of(session, tenant_id)).get("", 0)
    deadline = time.monotonic() + 10
    while runtime.feed.versions(tenant_id, ("",)) != (want,):
        assert time.monotonic() < deadline, f"the feed did not reach {want}: {runtime.feed.versions(tenant_id, ('',))}"
        await asyncio.sleep(0.01)
    return want


async def test_a_committed_change_is_delivered_with_its_sequence(client, factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    messages = stream.change_events(runtime.feed, runtime.sessions, await caller_of(runtime, tenant), ALL, None,
                                    time.monotonic() + 30, heartbeat=5)
    first = asyncio.ensure_future(take(messages, 1))
    await asyncio.sleep(0.05)  # the stream subscribes when it first runs
    (source,) = await rows.add(rows.source(project_id="billing"))
    (outgoing,) = await first
    await messages.aclose()
    assert outgoing.event == "source.changed"
    assert f'"id":"{source.source_id}"' in (outgoing.data or "")
    assert '"projectId":"billing"' in (outgoing.data or "")


async def test_an_idle_stream_sends_heartbeat_comments(client, factory, runtime):
    tenant = await factory.tenant()
    messages = stream.change_events(runtime.feed, runtime.sessions, await caller_of(runtime, tenant), ALL, None,
                                    time.monotonic() + 30, heartbeat=0.05)
    beats = await take(messages, 2)
    await messages.aclose()
    assert [(o.comment, o.event, o.data) for o in beats] == [("keepalive", None, None)] * 2


async def test_many_changes_of_one_object_are_coalesced_and_the_latest_is_sent(client, factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    (source,) = await rows.add(rows.source())
    caller = await caller_of(runtime, tenant)
    await caught_up(runtime, rows.tenant_id)
    messages = stream.change_events(runtime.feed, runtime.sessions, caller, frozenset({"source"}), None,
                                    time.monotonic() + 30, heartbeat=0.5, window=0.3)
    received: list[stream.Outgoing] = []

    async def read() -> None:
        async for outgoing in messages:
            if outgoing.event:
                received.append(outgoing)

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.05)
    for n in range(30):
        async with runtime.sessions.begin() as session:
            await session.execute(update(Source).where(Source.tenant_id == rows.tenant_id).values(name=f"n{n}"))
    async with runtime.sessions() as session:
        last = (await versions_of(session, rows.tenant_id))["source"]
    deadline = time.monotonic() + 10
    while not received or int(received[-1].id or 0) < last:
        assert time.monotonic() < deadline, received
        await asyncio.sleep(0.02)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await messages.aclose()
    assert len(received) < 30
    assert received[-1].id == str(last)
    assert [int(o.id or 0) for o in received] == sorted({int(o.id or 0) for o in received})


def test_a_reader_that_falls_behind_its_capacity_is_dropped_and_holds_nothing():
    subscription = Subscription(frozenset({1}), lambda change: True, capacity=3)
    for seq in range(1, 4):
        subscription.offer(Change(1, seq, "job", str(seq), None, 0))
    assert not subscription.dropped and len(subscription.queue) == 3
    subscription.offer(Change(1, 4, "job", "4", None, 0))
    assert subscription.dropped and len(subscription.queue) == 0
    subscription.offer(Change(1, 5, "job", "5", None, 0))
    assert len(subscription.queue) == 0


def test_coalescing_keeps_each_objects_latest_change_in_sequence_order():
    changes = [Change(1, 1, "job", "a", None, 0), Change(1, 2, "job", "b", None, 0), Change(1, 3, "job", "a", None, 0),
               Change(1, 4, "source", "a", None, 0)]
    assert [c.seq for c in stream.coalesced(changes)] == [2, 3, 4]


async def test_a_stream_behind_its_capacity_reads_what_it_missed_from_the_database(
    client, factory, runtime, monkeypatch
):
    monkeypatch.setattr(stream, "CAPACITY", 2)
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    messages = stream.change_events(runtime.feed, runtime.sessions, await caller_of(runtime, tenant), ALL, None,
                                    time.monotonic() + 30, heartbeat=5)
    first = asyncio.ensure_future(take(messages, 5))
    await asyncio.sleep(0.05)
    # five changes arrive before the reader takes any: more than the capacity of 2
    sources = await rows.add(*[rows.source() for _ in range(5)])
    got = await first
    await messages.aclose()
    assert [o.event for o in got] == ["source.changed"] * 5
    assert sorted(s.source_id for s in sources) == sorted(msgspec.json.decode(o.data or "")["id"] for o in got)


async def test_a_stream_that_stays_behind_is_dropped_with_a_short_retry_hint(client, factory, runtime, monkeypatch):
    monkeypatch.setattr(stream, "CAPACITY", 2)
    monkeypatch.setattr(stream, "CATCH_UPS", 0)
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    messages = stream.change_events(runtime.feed, runtime.sessions, await caller_of(runtime, tenant), ALL, None,
                                    time.monotonic() + 30, heartbeat=5)
    first = asyncio.ensure_future(messages.__anext__())
    await asyncio.sleep(0.05)
    await rows.add(*[rows.source() for _ in range(5)])
    outgoing = await asyncio.wait_for(first, 10)
    rest = [o async for o in messages]
    assert [(o.retry, o.comment) for o in [outgoing, *rest]] == [(100, "dropped")]


async def test_last_event_id_catches_up_from_the_database_then_follows_live(client, factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    sources = await rows.add(*[rows.source() for _ in range(3)])
    after = await caught_up(runtime, rows.tenant_id) - 2  # the last two of the three missed
    messages = stream.change_events(runtime.feed, runtime.sessions, await caller_of(runtime, tenant), ALL, after,
                                    time.monotonic() + 30, heartbeat=5)
    got = await take(messages, 2)
    live = asyncio.ensure_future(take(messages, 1))
    await asyncio.sleep(0.05)
    (later,) = await rows.add(rows.source())
    (following,) = await live
    await messages.aclose()
    ids = [msgspec.json.decode(o.data or "")["id"] for o in [*got, following]]
    # the two of the three numbered last (a transaction's order: by statement on SQLite, by id on PostgreSQL)
    async with runtime.sessions() as session:
        missed = [c.object_id for c in await changes_after(session, rows.tenant_id, after)][:2]
    assert set(missed) < {s.source_id for s in sources}
    assert ids == [*missed, later.source_id]


async def test_the_process_copy_of_the_versions_follows_every_commit(client, factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    await caught_up(runtime, rows.tenant_id)
    before = runtime.feed.versions(rows.tenant_id, ("source", "quota"))
    await rows.add(rows.source())
    await caught_up(runtime, rows.tenant_id)
    after = runtime.feed.versions(rows.tenant_id, ("source", "quota"))
    assert after is not None and before is not None
    assert after[0] > before[0] and after[1] == before[1]


def test_under_a_project_only_what_that_projects_reads_show_is_streamed():
    # Change(tenant, seq, kind, object id, project, at)
    accepts = stream.accepting(ALL, "billing")
    assert accepts(Change(1, 1, "job", "a", "billing", 0))
    assert not accepts(Change(1, 2, "job", "b", "other", 0))
    # an object without a project is 404 to a project's reads, so its changes are not announced
    for kind in ("job", "source", "deadletter", "packrun", "operation", "audit"):
        assert not accepts(Change(1, 3, kind, "c", None, 0)), kind
    assert accepts(Change(1, 4, "quota", "q", None, 0))  # quotas belong to the tenant, not a project
    assert stream.accepting(ALL, None)(Change(1, 5, "job", "d", None, 0))


def test_each_message_is_written_as_server_sent_event_lines_and_a_changes_bytes_are_built_once():
    change = Change(1, 7, "job", "j-1", "billing", 0)
    sent = stream.message(change)
    assert stream.encode(sent) == (
        b'id: 7\r\nevent: job.changed\r\ndata: {"kind":"job","id":"j-1","version":7,'
        b'"at":"1970-01-01T00:00:00.000Z","projectId":"billing"}\r\n\r\n'
    )
    again = stream.message(Change(1, 7, "job", "j-1", "billing", 0))
    assert again.encoded is sent.encoded  # built once, shared by every stream
    assert stream.encode(stream.Outgoing(retry=2000, comment="closed")) == b": closed\r\nretry: 2000\r\n\r\n"
    snapshot = stream.Outgoing(event="snapshot", data="a\nb")
    assert stream.encode(snapshot) == b"event: snapshot\r\ndata: a\r\ndata: b\r\n\r\n"


class _Hub:
    """The hub's subscribe/unsubscribe, keeping the subscriptions so a test can offer them changes."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(self, tenant_ids: Any, accept: Any, capacity: int) -> Subscription:
        subscription = Subscription(frozenset(tenant_ids), accept, capacity)
        self.subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.release()


async def _renewals_under_changes(messages: Any, hub: _Hub, keeps: list[float], *, every: float,
                                  reading: float = 0.0) -> int:
    """Offer a change every ``every`` s for 1.5 s while a reader taking ``reading`` s per message
    consumes ``messages``; how many times the stream renewed its lease."""

    async def consume() -> None:
        async for _ in messages:
            if reading:
                await asyncio.sleep(reading)

    consumer = asyncio.ensure_future(consume())
    seq = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        await asyncio.sleep(every)
        seq += 1
        for subscription in hub.subscriptions:
            subscription.offer(Change(1, seq, "operation", f"o{seq % 3}", None, 0))
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    return len(keeps)


async def test_a_snapshot_stream_renews_its_lease_at_every_heartbeat_while_changes_keep_coming():
    hub, keeps, answers = _Hub(), [], iter(range(10**6))

    async def keep() -> bool:
        keeps.append(time.monotonic())
        return True

    async def read() -> bytes:
        return str(next(answers)).encode()

    messages = stream.snapshots(hub, [1], read, time.monotonic() + 60, keep=keep, heartbeat=0.2, window=0.1)
    assert await _renewals_under_changes(messages, hub, keeps, every=0.02) >= 3


async def test_a_slow_event_streams_reader_does_not_put_off_its_heartbeats():
    hub, keeps = _Hub(), []

    async def keep() -> bool:
        keeps.append(time.monotonic())
        return True

    class Reader:
        tenant_id = 1
        project = None

    messages = stream.change_events(hub, None, Reader(), frozenset({"operation"}), None, time.monotonic() + 60,
                                    keep=keep, heartbeat=0.2, window=0.01)
    assert await _renewals_under_changes(messages, hub, keeps, every=0.005, reading=0.03) >= 3

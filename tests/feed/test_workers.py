"""Workers in the change feed, on both backends: a worker that registers, changes what it serves,
stops or lapses is one ``worker`` event in the sequence of every tenant that sees it (the rule of
GET /jobengine/workers), of no tenant it is restricted away from; an ordinary heartbeat is none."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, update

from app.domain.events import stream
from app.domain.workers import registry
from app.engine.reconciler import reconcile_once
from app.storage.feed import changes_after, versions_of
from app.storage.models import Worker
from tests.api.rows import Rows
from tests.feed.test_stream import caller_of, caught_up, take


async def sequence_of(runtime: Any, tenant_id: int) -> int:
    async with runtime.sessions() as session:
        return (await versions_of(session, tenant_id)).get("", 0)


async def worker_changes(runtime: Any, tenant_id: int, after: int) -> list[str]:
    async with runtime.sessions() as session:
        return [c.object_id for c in await changes_after(session, tenant_id, after) if c.kind == "worker"]


def identity(tenant_ids: tuple[int, ...] | None, **fields: Any) -> registry.Identity:
    return registry.Identity(
        worker_id=f"w-{uuid.uuid4().hex[:12]}",
        job_types=fields.get("job_types", ("scan",)),
        tenant_ids=tenant_ids,
        concurrency=fields.get("concurrency", 2),
        heartbeat_seconds=5.0,
    )


async def register(runtime: Any, me: registry.Identity, now: datetime | None = None) -> None:
    async with runtime.sessions() as session:
        await registry.register(session, me, now)


async def forget(runtime: Any, worker_id: str) -> None:
    async with runtime.sessions.begin() as session:
        await session.execute(delete(Worker).where(Worker.worker_id == worker_id))


async def tenant_ids(runtime: Any, *tenants: str) -> list[int]:
    return [(await runtime.tenants.get(tenant)).id for tenant in tenants]


async def test_a_registration_is_announced_to_the_tenants_that_see_the_worker_only(client, factory, runtime):
    first, second = await factory.tenant(), await factory.tenant()
    first_id, second_id = await tenant_ids(runtime, first, second)
    before = [await sequence_of(runtime, first_id), await sequence_of(runtime, second_id)]
    restricted, everyone = identity((first_id,)), identity(None)
    await register(runtime, restricted)
    await register(runtime, everyone)
    try:
        assert await worker_changes(runtime, first_id, before[0]) == [restricted.worker_id, everyone.worker_id]
        # the second tenant sees only the worker that claims every tenant's jobs
        assert await worker_changes(runtime, second_id, before[1]) == [everyone.worker_id]
        async with runtime.sessions() as session:
            versions = await versions_of(session, second_id)
        assert versions["worker"] == versions[""] > before[1]
    finally:
        await forget(runtime, restricted.worker_id)
        await forget(runtime, everyone.worker_id)


async def test_every_tenant_a_worker_change_notifies_reaches_the_process_copy(client, factory, runtime, monkeypatch):
    from app.storage import hub

    monkeypatch.setattr(hub, "DRAIN_TENANTS", 2)  # more tenants pending than one read takes
    tenants = [await factory.tenant() for _ in range(5)]
    ids = await tenant_ids(runtime, *tenants)
    for tenant_id in ids:
        await caught_up(runtime, tenant_id)
    before = [runtime.feed.versions(tenant_id, ("worker",)) for tenant_id in ids]
    me = identity(None)
    await register(runtime, me)
    try:
        for tenant_id, (worker_before,) in zip(ids, before, strict=True):
            want = await caught_up(runtime, tenant_id)
            assert runtime.feed.versions(tenant_id, ("worker",)) == (want,) and want > worker_before
    finally:
        await forget(runtime, me.worker_id)


async def test_a_graceful_stop_is_announced_and_an_ordinary_heartbeat_is_not(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    tenant_id, other_id = await tenant_ids(runtime, tenant, other)
    me = identity((tenant_id,))
    await register(runtime, me)
    after_register, other_before = await sequence_of(runtime, tenant_id), await sequence_of(runtime, other_id)
    async with runtime.sessions() as session:
        await registry.beat(session, me, running=1)
        await registry.beat(session, me, running=2)
    assert await worker_changes(runtime, tenant_id, after_register) == []
    async with runtime.sessions() as session:
        await registry.deregister(session, me.worker_id)
    assert await worker_changes(runtime, tenant_id, after_register) == [me.worker_id]
    assert await sequence_of(runtime, other_id) == other_before  # restricted away from the other tenant
    # a stopped worker's row forgotten later is no change of what a tenant sees
    after_stop = await sequence_of(runtime, tenant_id)
    await forget(runtime, me.worker_id)
    assert await sequence_of(runtime, tenant_id) == after_stop


async def test_a_lapse_is_announced_once_by_the_reconciler_and_a_heartbeat_ends_it(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    tenant_id, other_id = await tenant_ids(runtime, tenant, other)
    now = datetime.now(UTC)
    me = identity((tenant_id,))
    await register(runtime, me, now - timedelta(minutes=5))  # its heartbeat is long overdue
    before, other_before = await sequence_of(runtime, tenant_id), await sequence_of(runtime, other_id)
    try:
        summary = await reconcile_once(runtime, now)
        assert summary["lapsed_workers"] >= 1
        assert await worker_changes(runtime, tenant_id, before) == [me.worker_id]
        assert await worker_changes(runtime, other_id, other_before) == []
        # announced once: the next pass finds it lapsed already
        await reconcile_once(runtime, now + timedelta(seconds=30))
        assert await worker_changes(runtime, tenant_id, before) == [me.worker_id]
        # it comes back: a tenant sees it again
        async with runtime.sessions() as session:
            await registry.beat(session, me, running=0)
        assert await worker_changes(runtime, tenant_id, before) == [me.worker_id, me.worker_id]
    finally:
        await forget(runtime, me.worker_id)


async def test_a_worker_moved_to_other_tenants_is_announced_to_the_old_and_the_new(client, factory, runtime):
    old, new, neither = await factory.tenant(), await factory.tenant(), await factory.tenant()
    old_id, new_id, neither_id = await tenant_ids(runtime, old, new, neither)
    me = identity((old_id,))
    await register(runtime, me)
    before = {t: await sequence_of(runtime, t) for t in (old_id, new_id, neither_id)}
    try:
        async with runtime.sessions.begin() as session:  # any writer: the triggers see every statement
            await session.execute(update(Worker).where(Worker.worker_id == me.worker_id).values(tenant_ids=[new_id]))
        assert await worker_changes(runtime, old_id, before[old_id]) == [me.worker_id]
        assert await worker_changes(runtime, new_id, before[new_id]) == [me.worker_id]
        assert await worker_changes(runtime, neither_id, before[neither_id]) == []
        async with runtime.sessions.begin() as session:  # what it serves
            await session.execute(update(Worker).where(Worker.worker_id == me.worker_id).values(
                job_types=["scan", "walk"], concurrency=4))
        assert await worker_changes(runtime, new_id, before[new_id]) == [me.worker_id, me.worker_id]
    finally:
        await forget(runtime, me.worker_id)


async def test_worker_events_reach_the_streams_that_may_read_them(client, factory, runtime):
    tenant = await factory.tenant()
    (tenant_id,) = await tenant_ids(runtime, tenant)
    rows = await Rows.of(runtime, tenant)
    await caught_up(runtime, tenant_id)
    operators = await caller_of(runtime, tenant, "orch:read orch:operate")
    readers = await caller_of(runtime, tenant, "orch:read")
    in_project = await caller_of(runtime, tenant, "orch:read orch:operate", "billing")
    # orch:read may not read workers: asking for them leaves nothing, the default leaves them out
    assert stream.parse_kinds("worker", readers) == frozenset()
    assert "worker" not in stream.parse_kinds(None, readers)
    deadline = time.monotonic() + 30

    def open_stream(caller: Any, kinds: str | None) -> Any:
        return stream.change_events(runtime.feed, runtime.sessions, caller, stream.parse_kinds(kinds, caller), None,
                                    deadline, heartbeat=5)

    streams = {
        "workers only": (open_stream(operators, "worker"), 1),
        "every kind": (open_stream(operators, None), 2),
        "workers under a project": (open_stream(in_project, "worker"), 1),
        "without orch:operate": (open_stream(readers, None), 2),
    }
    got = {name: asyncio.ensure_future(take(messages, count)) for name, (messages, count) in streams.items()}
    await asyncio.sleep(0.05)  # the streams subscribe when they first run
    me = identity((tenant_id,))
    try:
        (first,) = await rows.add(rows.source())
        await register(runtime, me)
        (second,) = await rows.add(rows.source())

        def sent(name: str) -> list[tuple[str | None, str]]:
            return [(o.event, msgspec.json.decode(o.data or "")["id"]) for o in got[name].result()]

        await asyncio.wait_for(asyncio.gather(*got.values()), 10)
        worker = ("worker.changed", me.worker_id)
        assert sent("workers only") == [worker]  # the source before it was left out
        assert sent("workers under a project") == [worker]  # workers serve every project
        assert sent("every kind") == [("source.changed", first.source_id), worker]
        assert sent("without orch:operate") == [("source.changed", first.source_id),
                                                ("source.changed", second.source_id)]
        (worker_event,) = got["workers only"].result()
        assert "projectId" not in msgspec.json.decode(worker_event.data or "")
    finally:
        for messages, _ in streams.values():
            await messages.aclose()
        await forget(runtime, me.worker_id)

"""PostgreSQL restarted under a steady load of reads and replays: during the outage the gateway
answers 503 problems with Retry-After (never a 500, never a hang), it recovers within 10 s of the
database returning without being restarted, and no replay is applied twice or loses its audit row."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.idempotency import Captured, IdempotencyStore
from app.storage.models import AuditRecord, DeadLetterEntry, Job
from tests.api.rows import Rows
from tests.drills.load import REQUEST_TIMEOUT, Load
from tests.engine.conftest import eventually

ENTRIES = 400  # more than the load gets through: replays are in flight throughout
RECOVERY_SECONDS = 10.0
OUTAGE_SECONDS = 3.0
LOAD_DEADLINE = 60.0


async def _pending_entries(runtime, tenant: str, count: int) -> list[str]:
    rows = await Rows.of(runtime, tenant)
    source = rows.source()
    entries = [
        rows.entry(f"connection refused by 10.0.0.{n}", source_id=source.source_id) for n in range(count)
    ]
    await rows.add(source, *entries)
    return [e.entry_id for e in entries]


def _restart_fast(postgres) -> Callable[[Load], Awaitable[float]]:
    async def outage(load: Load) -> float:
        await asyncio.to_thread(postgres.restart, "fast")
        return time.monotonic()

    return outage


def _stop_immediate_then_start(postgres) -> Callable[[Load], Awaitable[float]]:
    """Crash-stop, keep the database away until the load has met the outage, then start it."""

    async def outage(load: Load) -> float:
        down = time.monotonic()
        await asyncio.to_thread(postgres.stop, "immediate")

        async def outage_long_enough() -> bool:
            met = sum(1 for a in load.since(down) if a.status == 503) >= 20
            return met and time.monotonic() - down >= OUTAGE_SECONDS

        await eventually(outage_long_enough, timeout=OUTAGE_SECONDS + 10)
        await asyncio.to_thread(postgres.start)
        return time.monotonic()

    return outage


@pytest.mark.parametrize("restart", [_restart_fast, _stop_immediate_then_start], ids=["fast", "immediate"])
async def test_postgres_outage_answers_503_then_recovers_with_every_replay_applied_once(
    restart, drill_services, drill_runtime, drill_factory, drill_gateway
):
    tenant = await drill_factory.tenant()
    entry_ids = await _pending_entries(drill_runtime, tenant, ENTRIES)
    load = Load(
        urls=[drill_gateway.url],
        headers=lambda: drill_factory.headers(tenant, reason="drill: replay after the database restart"),
        entry_ids=entry_ids,
        reads=[
            "/jobengine/deadletter?limit=20",
            "/jobengine/jobs?limit=20",
            "/jobengine/deadletter/stats",
            "/readyz",
        ],
    )
    running = asyncio.create_task(load.run(LOAD_DEADLINE))
    try:

        async def warmed_up() -> bool:
            return sum(a.ok for a in load.answers) >= 20

        await eventually(warmed_up, timeout=20)
        down = time.monotonic()
        back = await restart(drill_services.postgres)(load)

        async def replays_accepted_again() -> bool:
            return sum(1 for a in load.since(back) if a.kind == "replay" and a.status == 202) >= 10

        async def settled() -> bool:
            return load.settled_after(back)

        try:
            await eventually(replays_accepted_again, timeout=RECOVERY_SECONDS)
            load.drain()  # then only the refused replays go on, until each is accepted
            await eventually(settled, timeout=RECOVERY_SECONDS)
        except AssertionError:
            raise AssertionError(f"not recovered: {_summary(load, back)}") from None
    finally:
        load.stop()
        await running

    failures = [a for a in load.answers if not a.ok]
    unexpected = [a for a in failures if not a.is_unavailable_problem]
    assert unexpected == [], f"answers other than 503 problems with Retry-After: {unexpected[:5]}"
    assert all(a.ended - a.started < REQUEST_TIMEOUT for a in load.answers)
    assert all(a.ended >= down for a in failures), "a failure before the outage began"
    last_failure = max((a.ended for a in failures), default=back)
    after = [a for a in failures if a.started >= back]
    stored = sum(1 for a in load.accepted.values() if a.replayed)  # applied, but the first answer was a 503
    print(
        f"outage {back - down:.2f}s, {len(failures)} 503s ({len(after)} begun after the database returned, "
        f"the last ending {last_failure - back:.2f}s after), {len(load.answers)} requests, "
        f"{stored} replays answered from their stored response"
    )
    assert last_failure - back <= RECOVERY_SECONDS

    await drill_runtime.engine.dispose()  # the test's own pool held connections of the old server
    async with drill_runtime.sessions() as session:
        tenant_id = (await drill_runtime.tenants.get(tenant)).id
        entries = (
            await session.execute(select(DeadLetterEntry).where(DeadLetterEntry.tenant_id == tenant_id))
        ).scalars()
        jobs = (await session.execute(select(Job).where(Job.tenant_id == tenant_id))).scalars()
        audits = (
            (
                await session.execute(
                    select(AuditRecord).where(
                        AuditRecord.tenant_id == tenant_id, AuditRecord.action == "deadletter.replay"
                    )
                )
            )
            .scalars()
            .all()
        )
    replayed = set(load.accepted)
    assert replayed == load.attempted and len(replayed) >= 20
    assert {(e.entry_id, e.status, e.replay_count) for e in entries} == {
        (e, "replaying", 1) if e in replayed else (e, "pending", 0) for e in entry_ids
    }
    assert Counter(j.replay_of_entry_id for j in jobs) == Counter(replayed)  # one replay job per replay
    applied = Counter(a.idempotency_key for a in audits if a.result_status == 202 and a.result_code is None)
    assert applied == Counter(Load.key_of(e) for e in replayed)  # every 202 audited once, none twice
    assert {a.target for a in audits if a.result_code is None} == replayed


@pytest.mark.parametrize("claimed_by", ["same process", "another process"])
async def test_key_of_a_request_that_failed_while_the_database_was_away_is_free_once_it_is_back(
    claimed_by, drill_services, drill_runtime, drill_factory
):
    tenant = await drill_factory.tenant()
    caller = Caller(
        subject="drill",
        client_id=None,
        scopes=frozenset(),
        granted_tenants=(tenant,),
        tenant=await drill_runtime.tenants.get(tenant),
        project=None,
        trace_id="drill-trace-0001",
        idempotency_key="drill-key-1",
    )
    first = IdempotencyStore(drill_runtime.sessions)
    assert await first.claim(caller, "request-1") is None
    await asyncio.to_thread(drill_services.postgres.stop, "fast")
    try:
        await first.settle(caller, Captured(status=503))  # the key cannot be released now
    finally:
        await asyncio.to_thread(drill_services.postgres.start)
        await drill_runtime.engine.dispose()  # the test's pool held connections of the old server
    retrying = first if claimed_by == "same process" else IdempotencyStore(drill_runtime.sessions)

    async def claimed_again() -> bool:
        try:
            return await retrying.claim(caller, "request-1") is None
        except Problem as problem:
            assert problem.code == "idempotency_in_flight"
            return False

    # The lock of an abandoned claim is 60 s; the released key is free long before that.
    await eventually(claimed_again, timeout=5)


def _summary(load: Load, back: float) -> str:
    after = Counter((a.kind, a.status, a.code, a.error) for a in load.since(back))
    waiting = load.attempted - set(load.accepted)
    answers = {
        e: [
            (round(a.started - back, 2), a.status, a.code, a.error)
            for a in load.answers
            if a.key == Load.key_of(e)
        ]
        for e in sorted(waiting)[:3]
    }
    return (
        f"{len(load.accepted)}/{ENTRIES} replays accepted; answers since the database returned: "
        f"{dict(after)}; {len(waiting)} attempted, not accepted: {answers}"
    )

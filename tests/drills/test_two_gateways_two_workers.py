"""Two gateway processes and two worker processes on one PostgreSQL and one Redis run the whole
replay flow at once: jobs submitted through both gateways dead-letter in the workers; then a
replay of everything pending that matches a filter (started from both gateways), two overlapping
batches (one through each gateway) and concurrent single replays (spread over both gateways) race
each other; the workers run the replay runner and the replayed jobs. Each entry is replayed
exactly once, each replay job runs once and succeeds, and nothing else is touched."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio
from sqlalchemy import select

from app.storage.models import AuditRecord, OperationRun
from tests.engine.conftest import eventually
from tests.engine.support import entries_of, jobs_of, submit

FLAKY_UNTIL = timedelta(seconds=6)  # every first run fails (and dead-letters), every replay succeeds
GROUPS = {"drill.pending": 16, "drill.batch": 16, "drill.single": 4, "drill.untouched": 3}
SINGLE_CALLS = 12  # concurrent replays of each single entry


@pytest_asyncio.fixture(loop_scope="session")
async def clients(start_gateways) -> AsyncIterator[list[httpx.AsyncClient]]:  # type: ignore[no-untyped-def]
    gateways = start_gateways(2)
    async with (
        httpx.AsyncClient(base_url=gateways[0].url, timeout=30) as a,
        httpx.AsyncClient(base_url=gateways[1].url, timeout=30) as b,
    ):
        yield [a, b]


async def test_two_gateways_and_two_workers_replay_each_entry_exactly_once(
    clients, drill_runtime, drill_factory, start_worker
):
    runtime, factory = drill_runtime, drill_factory
    tenant = await factory.tenant()
    source = await factory.source(clients[0], tenant)
    workers = [start_worker(tenant), start_worker(tenant)]
    for worker in workers:
        await worker.ready()

    fail_until = datetime.now(UTC) + FLAKY_UNTIL
    submissions = [
        (
            n,
            code,
            {
                "errorCode": code,
                "category": "transient",
                "message": f"mirror {n} timed out",
                "failUntil": fail_until.isoformat(),
            },
        )
        for n, code in enumerate(code for code, count in GROUPS.items() for _ in range(count))
    ]
    await asyncio.gather(
        *(
            submit(
                clients[n % 2],
                factory,
                tenant,
                source["sourceId"],
                "demo.flaky",
                payload=payload,
                maxAttempts=1,
            )
            for n, _, payload in submissions
        )
    )

    async def all_dead_lettered():
        entries = await entries_of(runtime, tenant)
        return entries if len(entries) == len(submissions) else None

    entries = await eventually(all_dead_lettered, timeout=30)
    assert datetime.now(UTC) < fail_until, (
        "the first runs must dead-letter before the handler starts to succeed"
    )
    ids = {code: sorted(e.entry_id for e in entries if e.error_code == code) for code in GROUPS}

    async def handler_succeeds_now():
        return datetime.now(UTC) > fail_until

    await eventually(handler_succeeds_now, timeout=FLAKY_UNTIL.total_seconds() + 5)

    headers = factory.headers(tenant, reason="drill: mirror is back", ticket="OPS-77")
    pending_body = {"filter": {"errorCode": "drill.pending"}, "ratePerSecond": 1000}
    batch = ids["drill.batch"]
    batches = [batch[:12], list(reversed(batch[4:]))]  # overlapping by 8
    singles = [(entry_id, n) for entry_id in ids["drill.single"] for n in range(SINGLE_CALLS)]
    pending, batched, single = await asyncio.gather(
        asyncio.gather(
            *(
                clients[n % 2].post(
                    "/jobengine/deadletter/replay/pending", json=pending_body, headers=headers
                )
                for n in range(4)
            )
        ),
        asyncio.gather(
            *(
                clients[n].post("/jobengine/deadletter/replay/batch", json={"entryIds": b}, headers=headers)
                for n, b in enumerate(batches)
            )
        ),
        asyncio.gather(
            *(
                clients[n % 2].post(f"/jobengine/deadletter/{entry_id}/replay", headers=headers)
                for entry_id, n in singles
            )
        ),
    )

    assert [r.status_code for r in pending] == [202] * 4, [r.text for r in pending]
    # A start while the filter's run is active joins it; one after that run completed starts another,
    # which finds nothing left: together the runs replay each matching entry once (checked below).
    run_ids = {r.json()["operationRunId"] for r in pending}
    assert sum(not r.json()["deduplicated"] for r in pending) == len(run_ids)
    assert [r.status_code for r in batched] == [200, 200], [r.text for r in batched]
    by_batches = [
        r["entryId"] for resp in batched for r in resp.json()["results"] if r["outcome"] == "replayed"
    ]
    assert sorted(by_batches) == batch  # each entry by exactly one of the two batches
    accepted = Counter(entry_id for (entry_id, _), r in zip(singles, single) if r.status_code == 202)
    assert accepted == Counter(ids["drill.single"])  # one 202 per entry
    refused = {(r.status_code, r.json()["code"]) for r in single if r.status_code != 202}
    assert refused <= {(409, "replay_in_progress"), (409, "already_replayed")}, refused

    replayed_ids = sorted(ids["drill.pending"] + batch + ids["drill.single"])

    async def all_replayed():
        current = await entries_of(runtime, tenant)
        return (
            current if sorted(e.entry_id for e in current if e.status == "replayed") == replayed_ids else None
        )

    final = {e.entry_id: e for e in await eventually(all_replayed, timeout=30)}
    jobs = await jobs_of(runtime, tenant)
    replay_jobs = [j for j in jobs if j.replay_of_entry_id is not None]
    assert Counter(j.replay_of_entry_id for j in replay_jobs) == Counter(replayed_ids)  # exactly one each
    for job in replay_jobs:
        assert (job.job_type, job.status, job.attempt) == ("demo.flaky", "succeeded", 1)  # ran once
        assert (
            final[job.replay_of_entry_id].replay_count,
            final[job.replay_of_entry_id].last_replay_job_id,
        ) == (1, job.job_id)
    assert len(jobs) == len(submissions) + len(replayed_ids)
    for entry_id in ids["drill.untouched"]:
        assert (final[entry_id].status, final[entry_id].replay_count) == ("pending", 0)

    async def runs_completed():
        async with runtime.sessions() as session:
            runs = (
                (await session.execute(select(OperationRun).where(OperationRun.id.in_(run_ids))))
                .scalars()
                .all()
            )
        return runs if all(run.status == "completed" for run in runs) else None

    runs = await eventually(runs_completed)
    totals: Counter[str] = Counter()
    for run in runs:
        totals.update(run.summary_counts)
    assert totals == Counter(matched=16, replayed=16)  # and nothing skipped or failed
    async with runtime.sessions() as session:
        info = await runtime.tenants.get(tenant)
        audits = (
            (await session.execute(select(AuditRecord).where(AuditRecord.tenant_id == info.id)))
            .scalars()
            .all()
        )
    audited = Counter((a.action, a.result_status) for a in audits)
    assert audited[("deadletter.replay", 202)] == len(ids["drill.single"])
    assert audited[("deadletter.replay", 409)] == len(singles) - len(ids["drill.single"])
    assert audited[("deadletter.replay_batch", 200)] == 2
    assert audited[("deadletter.replay_pending", 202)] == 4
    assert all(worker.process.poll() is None for worker in workers)  # nobody crashed on the way

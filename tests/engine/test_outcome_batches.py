"""Outcomes written in batches, and jobs given back keeping their place in the queue.

The worker runs in this process (``Worker`` on the test database), so that a test can stop it
exactly between a job's end and the write of its batch, as a killed process would be. Every test
runs on both backends (PostgreSQL writes a batch with ``unnest`` arrays, SQLite row by row).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from app.engine import dispatcher, outcomes
from app.engine.config import WorkerConfig
from app.engine.handlers import JobFailure
from app.engine.worker import Worker
from app.storage import aggregates
from app.storage.job_counts import by_type_and_status
from app.storage.models import Job, Source
from tests.api.conftest import app, backend, client, pytest_generate_tests, runtime  # noqa: F401 - both backends
from tests.engine.conftest import eventually
from tests.engine.support import entries_of, job, jobs_of, submit, tenant_id

CONFIG = WorkerConfig(poll_seconds=0.05, lease_seconds=30, heartbeat_seconds=5)


def _worker(runtime, tenant_ids, runs, worker_id, **config):
    async def record(context):  # the handlers: note the run, then succeed, fail (retryable) or fail for good
        runs.append(context.job_id)

    async def flaky(context):
        runs.append(context.job_id)
        raise JobFailure("upstream.timeout", "transient", f"Timed out on attempt {context.attempt}")

    async def broken(context):
        runs.append(context.job_id)
        raise JobFailure("payload.invalid", "validation", "Field 'image' is missing", retryable=False)

    handlers = {"test.quick": record, "test.flaky": flaky, "test.broken": broken}
    worker = Worker(runtime, replace(CONFIG, **config), handlers, worker_id=worker_id, concurrency=8, steps=[])
    return worker, tenant_ids


async def test_a_worker_killed_before_its_batch_is_written_reruns_only_those_jobs(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    tids = (await tenant_id(runtime, tenant),)
    runs: list[str] = []
    # A retry is due a minute later at the earliest: no worker of this test runs it again.
    first, _ = _worker(runtime, tids, runs, "w-killed", backoff_base_seconds=120)
    kinds = ("test.quick", "test.flaky", "test.broken")

    async def submitted():  # a success, a retry and a dead-letter
        return [(await submit(client, factory, tenant, source["sourceId"], kind))["jobId"] for kind in kinds]

    async def statuses(ids):
        return [j.status for i in ids for j in await jobs_of(runtime, tenant) if j.job_id == i]

    async def reached(ids, expected):
        return await statuses(ids) == expected

    ended = ["succeeded", "scheduled", "failed"]
    written = await submitted()
    writer = asyncio.create_task(first._outcome_loop())
    await first.claim_once(8, tids)
    await eventually(lambda: reached(written, ended))
    # The process dies with three outcomes waiting for their batch: the writer never runs again.
    writer.cancel()
    lost = await submitted()
    await first.claim_once(8, tids)
    await eventually(lambda: _true(len(first._ends) == 3))
    for execution in list(first.executions):
        execution.cancel()
    assert await statuses(lost) == ["running"] * 3

    # Their leases expire; another worker runs them again; the written ones never run again.
    await outcomes.expire_leases(runtime, datetime.now(UTC) + timedelta(seconds=60))
    assert await statuses(lost) == ["pending"] * 3
    second, _ = _worker(runtime, tids, runs, "w-second", backoff_base_seconds=120)
    writer = asyncio.create_task(second._outcome_loop())
    try:
        await second.claim_once(8, tids)
        await eventually(lambda: reached(lost, ended))
    finally:
        writer.cancel()
    assert sorted(runs) == sorted(written + lost + lost)
    for job_id in written:
        assert (await job(runtime, tenant, job_id)).attempt == 1
    for job_id in lost:
        assert (await job(runtime, tenant, job_id)).attempt == 2
    # One dead-letter entry per dead-lettered job, with the attempt that wrote it; counted once.
    entries = {e.job_id: e.attempts for e in await entries_of(runtime, tenant)}
    assert entries == {written[2]: 1, lost[2]: 2}
    assert await _jobs_failed(runtime, tids[0], source["sourceId"]) == 2
    assert await aggregates.check(runtime.engine, tids[0]) == []


async def test_a_batch_writes_nothing_for_a_job_whose_lease_was_taken_over(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    tids = (await tenant_id(runtime, tenant),)
    runs: list[str] = []
    worker, _ = _worker(runtime, tids, runs, "w-slow")
    kept, taken = [(await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"] for _ in range(2)]
    await worker.claim_once(8, tids)
    await eventually(lambda: _true(len(worker._ends) == 2))
    # Before the batch is written, the lease of one job runs out and another worker claims it.
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(Job).where(Job.job_id == taken).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await outcomes.expire_leases(runtime)
    assert (await job(runtime, tenant, taken)).status == "pending"
    async with runtime.sessions() as session:
        [claimed] = await dispatcher.claim(session, worker_id="w-other", job_types=["test.quick"], limit=8,
                                           lease_seconds=30, now=datetime.now(UTC), tenants=tids)
    assert claimed.job_id == taken
    writer = asyncio.create_task(worker._outcome_loop())
    try:
        await eventually(lambda: _true(not worker.executions))
    finally:
        writer.cancel()
    done, other = await job(runtime, tenant, kept), await job(runtime, tenant, taken)
    assert (done.status, done.lease_owner, done.attempt) == ("succeeded", None, 1)
    assert (other.status, other.lease_owner, other.attempt, other.finished_at) == ("leased", "w-other", 2, None)


async def test_a_job_whose_lease_expired_goes_back_to_its_place_in_the_queue(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    tids = (await tenant_id(runtime, tenant),)
    first = (await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"]

    async def claim(worker_id, now, limit=1):
        async with runtime.sessions() as session:
            return await dispatcher.claim(session, worker_id=worker_id, job_types=["test.quick"], limit=limit,
                                          lease_seconds=30, now=now, tenants=tids)

    [crashed] = await claim("w-crashed", datetime.now(UTC))
    assert crashed.job_id == first
    later = [(await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"] for _ in range(3)]
    expired_at = datetime.now(UTC) + timedelta(seconds=60)
    await outcomes.expire_leases(runtime, expired_at)
    assert (await job(runtime, tenant, first)).status == "pending"
    # One claim at a time, so each takes the head of the queue.
    order = [(await claim("w-next", expired_at + timedelta(seconds=1)))[0].job_id for _ in range(4)]
    assert order == [first, *later]


async def _all(statuses, status):
    values = await statuses
    return bool(values) and set(values.values()) == {status}


async def _true(value):
    return value


async def _jobs_failed(runtime, tenant, source_id):
    async with runtime.sessions() as session:
        return (
            await session.execute(
                select(Source.jobs_failed).where(Source.tenant_id == tenant, Source.source_id == source_id)
            )
        ).scalar_one()

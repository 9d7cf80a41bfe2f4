"""Outcomes written in batches, and jobs given back keeping their place in the queue.

The worker runs in this process (``Worker`` on the test database), so that a test can stop it
exactly between a job's end and the write of its batch, as a killed process would be.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from app.engine import dispatcher, outcomes
from app.engine.config import WorkerConfig
from app.engine.worker import Worker
from app.storage.models import Job
from tests.engine.conftest import eventually
from tests.engine.support import job, jobs_of, submit, tenant_id

CONFIG = WorkerConfig(poll_seconds=0.05, lease_seconds=30, heartbeat_seconds=5)


def _worker(runtime, tenant_ids, runs, worker_id, **config):
    async def record(context):  # the handler: note the run, succeed at once
        runs.append(context.job_id)

    worker = Worker(runtime, replace(CONFIG, **config), {"test.quick": record}, worker_id=worker_id,
                    concurrency=8, steps=[])
    return worker, tenant_ids


async def test_a_worker_killed_before_its_batch_is_written_reruns_only_those_jobs(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    tids = (await tenant_id(runtime, tenant),)
    runs: list[str] = []
    first, _ = _worker(runtime, tids, runs, "w-killed")
    written = [(await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"] for _ in range(2)]
    writer = asyncio.create_task(first._success_loop())
    await first.claim_once(8, tids)

    async def statuses(ids):
        return {j.job_id: j.status for j in await jobs_of(runtime, tenant) if j.job_id in ids}

    await eventually(lambda: _all(statuses(written), "succeeded"))
    # The process dies with two outcomes waiting for their batch: the writer never runs again.
    writer.cancel()
    lost = [(await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"] for _ in range(2)]
    await first.claim_once(8, tids)
    await eventually(lambda: _true(len(first._successes) == 2))
    for execution in list(first.executions):
        execution.cancel()
    assert set((await statuses(lost)).values()) == {"running"}

    # Their leases expire; another worker runs them again; the written ones never run again.
    await outcomes.expire_leases(runtime, datetime.now(UTC) + timedelta(seconds=60))
    assert set((await statuses(lost)).values()) == {"pending"}
    second, _ = _worker(runtime, tids, runs, "w-second")
    writer = asyncio.create_task(second._success_loop())
    try:
        await second.claim_once(8, tids)
        await eventually(lambda: _all(statuses(lost), "succeeded"))
    finally:
        writer.cancel()
    assert sorted(runs) == sorted(written + lost + lost)
    for job_id in written:
        assert (await job(runtime, tenant, job_id)).attempt == 1
    for job_id in lost:
        assert (await job(runtime, tenant, job_id)).attempt == 2


async def test_a_batch_writes_nothing_for_a_job_whose_lease_was_taken_over(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    tids = (await tenant_id(runtime, tenant),)
    runs: list[str] = []
    worker, _ = _worker(runtime, tids, runs, "w-slow")
    kept, taken = [(await submit(client, factory, tenant, source["sourceId"], "test.quick"))["jobId"] for _ in range(2)]
    await worker.claim_once(8, tids)
    await eventually(lambda: _true(len(worker._successes) == 2))
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
    writer = asyncio.create_task(worker._success_loop())
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

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


RETRYABLE = JobFailure("upstream.timeout", "transient", "Timed out after 30s calling https://registry.example.com/v2/x")
FATAL = JobFailure("payload.invalid", "validation", "Field 'image' is missing in manifest 42", retryable=False)
# Each end the worker may batch, and the status it leaves: (end, failure, submission, cancel requested first).
ENDS = [
    ("succeeded", None, {}, False, "succeeded"),
    ("succeeded", None, {}, True, "succeeded"),  # a handler that returns after a cancel request succeeded
    ("cancel", None, {}, True, "canceled"),
    ("failed", RETRYABLE, {}, False, "scheduled"),
    ("failed", FATAL, {}, False, "failed"),
    ("failed", RETRYABLE, {"maxAttempts": 1}, False, "failed"),  # no attempt left
    ("failed", RETRYABLE, {}, True, "canceled"),  # neither retried nor dead-lettered once a cancel is asked
    ("failed", FATAL, {}, True, "canceled"),
]
JOB_FIELDS = ("status", "attempt", "cancel_requested", "finished_at", "lease_owner", "lease_expires_at",
              "last_error_code", "last_error_category", "last_error_message", "priority", "payload")
ENTRY_FIELDS = ("project_id", "job_type", "category", "error_code", "message", "error_template", "template_hash",
                "payload", "attempts", "status", "replay_count", "first_dead_lettered_at", "dead_lettered_at")


async def _running(client, factory, runtime, tenant, source_id, worker_id, bodies):
    """Jobs submitted, claimed by ``worker_id`` and started, in the order of ``bodies``."""
    ids = [(await submit(client, factory, tenant, source_id, "test.quick", payload={"n": n}, **body))["jobId"]
           for n, body in enumerate(bodies)]
    async with runtime.sessions() as session:
        claimed = await dispatcher.claim(session, worker_id=worker_id, job_types=["test.quick"], limit=len(ids),
                                         lease_seconds=30, now=datetime.now(UTC),
                                         tenants=(await tenant_id(runtime, tenant),))
        started = await outcomes.start(session, worker_id, claimed, datetime.now(UTC))
    by_id = {c.job_id: c for c in started}
    assert sorted(by_id) == sorted(ids)
    return [by_id[i] for i in ids]


async def test_a_batch_of_mixed_ends_ends_each_job_as_the_single_path_would(client, factory, runtime):
    tenant = await factory.tenant()
    tid = await tenant_id(runtime, tenant)
    batched_source, single_source = [(await factory.source(client, tenant))["sourceId"] for _ in range(2)]
    bodies = [body for _, _, body, _, _ in ENDS]
    batched = await _running(client, factory, runtime, tenant, batched_source, "w-1", bodies)
    single = await _running(client, factory, runtime, tenant, single_source, "w-1", bodies)
    for (_, _, _, cancel_first, _), *twins in zip(ENDS, batched, single, strict=True):
        for held in twins if cancel_first else ():
            response = await client.post(f"/jobengine/jobs/{held.job_id}/cancel", headers=factory.headers(tenant))
            assert response.status_code == 202, response.text

    due = {j.job_id: j.run_after for j in await jobs_of(runtime, tenant)}
    now = datetime.now(UTC)
    backoff = {"backoff_base": 2.0, "backoff_max": 300.0}
    async with runtime.sessions() as session:
        written = await outcomes.end_many(
            session, "w-1", [outcomes.Ending(held, end, failure) for (end, failure, *_), held in zip(ENDS, batched)],
            now=now, **backoff,
        )
    for (end, failure, *_), held in zip(ENDS, single):
        async with runtime.sessions() as session:
            if end == "succeeded":
                await outcomes.succeed(session, "w-1", held, now)
            elif end == "cancel":
                await outcomes.cancel(session, "w-1", held, now)
            else:
                await outcomes.fail(session, "w-1", held, failure, now=now, **backoff)

    expected = [status for *_, status in ENDS]
    assert [written[(tid, held.job_id)] for held in batched] == expected
    rows = {j.job_id: j for j in await jobs_of(runtime, tenant)}
    for status, mine, twin in zip(expected, batched, single):
        ours, theirs = rows[mine.job_id], rows[twin.job_id]
        assert ours.status == status
        assert {f: getattr(ours, f) for f in JOB_FIELDS} == {f: getattr(theirs, f) for f in JOB_FIELDS}
        if status == "scheduled":  # due after the backoff of the first attempt: 1 to 2 s, with jitter
            for retried in (ours, theirs):
                assert now + timedelta(seconds=1) <= retried.run_after <= now + timedelta(seconds=2)
        else:
            assert (ours.run_after, theirs.run_after) == (due[mine.job_id], due[twin.job_id])
    entries = {e.job_id: e for e in await entries_of(runtime, tenant)}
    dead = [(mine.job_id, twin.job_id) for status, mine, twin in zip(expected, batched, single) if status == "failed"]
    assert sorted(entries) == sorted(job_id for pair in dead for job_id in pair)
    for mine, twin in dead:
        assert entries[mine].source_id == batched_source and entries[twin].source_id == single_source
        assert {f: getattr(entries[mine], f) for f in ENTRY_FIELDS} == {f: getattr(entries[twin], f) for f in ENTRY_FIELDS}
    assert await _jobs_failed(runtime, tid, batched_source) == await _jobs_failed(runtime, tid, single_source) == 2
    # The maintained counts (jobs per status, dead-letter aggregates) agree with the rows.
    assert await aggregates.check(runtime.engine, tid) == []
    async with runtime.sessions() as session:
        counts = {status: n for _, status, n in await by_type_and_status(session, tid)}
    assert counts == {status: 2 * expected.count(status) for status in set(expected)}


async def test_a_batch_writes_nothing_for_jobs_another_worker_took_over_or_another_end_reached(client, factory, runtime):
    tenant = await factory.tenant()
    tid = await tenant_id(runtime, tenant)
    source_id = (await factory.source(client, tenant))["sourceId"]
    held, *taken, ended = await _running(client, factory, runtime, tenant, source_id, "w-1", [{}] * 6)
    # Four leases run out and another worker claims those jobs; one job is ended by someone else
    # while this worker still names itself its owner.
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(Job).where(Job.job_id.in_([t.job_id for t in taken]))
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.execute(update(Job).where(Job.job_id == ended.job_id).values(status="timed_out"))
    await outcomes.expire_leases(runtime)
    async with runtime.sessions() as session:
        others = await dispatcher.claim(session, worker_id="w-other", job_types=["test.quick"], limit=8,
                                        lease_seconds=30, now=datetime.now(UTC), tenants=(tid,))
    assert sorted(o.job_id for o in others) == sorted(t.job_id for t in taken)
    before = {j.job_id: {f: getattr(j, f) for f in (*JOB_FIELDS, "started_at", "run_after", "updated_at")}
              for j in await jobs_of(runtime, tenant)}

    ends = [outcomes.Ending(held, "failed", FATAL), outcomes.Ending(taken[0], "succeeded"),
            outcomes.Ending(taken[1], "failed", RETRYABLE), outcomes.Ending(taken[2], "failed", FATAL),
            outcomes.Ending(taken[3], "cancel"), outcomes.Ending(ended, "failed", FATAL)]
    async with runtime.sessions() as session:
        written = await outcomes.end_many(session, "w-1", ends, backoff_base=2.0, backoff_max=300.0)

    assert written == {(tid, held.job_id): "failed"}
    after = {j.job_id: {f: getattr(j, f) for f in (*JOB_FIELDS, "started_at", "run_after", "updated_at")}
             for j in await jobs_of(runtime, tenant)}
    for other in (*taken, ended):
        assert after[other.job_id] == before[other.job_id]
    assert {t.job_id: after[t.job_id]["lease_owner"] for t in taken} == {t.job_id: "w-other" for t in taken}
    assert [e.job_id for e in await entries_of(runtime, tenant)] == [held.job_id]
    assert await _jobs_failed(runtime, tid, source_id) == 1
    assert await aggregates.check(runtime.engine, tid) == []


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

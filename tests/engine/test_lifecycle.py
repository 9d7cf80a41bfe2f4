"""Graceful shutdown, retries with backoff, and replay jobs returning to their entries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from app.storage.models import DeadLetterEntry, Job
from tests.engine.conftest import eventually
from tests.engine.handlers import read_log
from tests.engine.support import entries_of, job, jobs_of, submit, tenant_id


async def test_sigterm_releases_the_lease_without_consuming_the_attempt(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    submitted = await submit(client, factory, tenant, source["sourceId"], "test.record",
                             payload={"log": log_path, "seconds": 60})
    worker = workers(tenant, JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS="0.2")
    await eventually(lambda: _started(log_path))
    assert worker.terminate() == 0
    released = await job(runtime, tenant, submitted["jobId"])
    assert (released.status, released.attempt, released.lease_owner) == ("pending", 0, None)


async def test_sigterm_lets_a_short_job_finish(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    submitted = await submit(client, factory, tenant, source["sourceId"], "test.record",
                             payload={"log": log_path, "seconds": 0.5})
    worker = workers(tenant, JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS="5")
    await eventually(lambda: _started(log_path))
    assert worker.terminate() == 0
    finished = await job(runtime, tenant, submitted["jobId"])
    assert (finished.status, finished.attempt) == ("succeeded", 1)


async def _started(path):
    return any(r[0] == "start" for r in read_log(path))


async def test_retryable_failure_is_retried_with_backoff_until_it_succeeds(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    workers(tenant, JOBGATE_WORKER_BACKOFF_BASE_SECONDS="0.1", JOBGATE_WORKER_BACKOFF_MAX_SECONDS="0.4")
    marker = await submit(client, factory, tenant, source["sourceId"], "demo.noop")
    await eventually(lambda: _status(runtime, tenant, marker["jobId"], "succeeded"))  # the worker is up
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    submitted = await submit(client, factory, tenant, source["sourceId"], "demo.flaky", maxAttempts=20, payload={
        "failUntil": until, "errorCode": "upstream.timeout", "category": "transient", "message": "slow"})

    async def succeeded():
        current = await job(runtime, tenant, submitted["jobId"])
        return current if current.status == "succeeded" else None

    done = await eventually(succeeded)
    # backoff 0.05-0.1, 0.1-0.2, 0.2-0.4, then 0.2-0.4 s: a handful of attempts in one second, not hundreds
    assert 2 <= done.attempt <= 12
    assert done.last_error_code == "upstream.timeout" and await entries_of(runtime, tenant) == []


async def _status(runtime, tenant, job_id, status):
    return (await job(runtime, tenant, job_id)).status == status


async def _replay(runtime, tenant, entry, payload):
    """What a replay does (one guarded statement plus the new job), done here directly."""
    job_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    async with runtime.sessions.begin() as session:
        result = await session.execute(
            update(DeadLetterEntry)
            .where(DeadLetterEntry.tenant_id == entry.tenant_id, DeadLetterEntry.entry_id == entry.entry_id,
                   DeadLetterEntry.status == "pending")
            .values(status="replaying", replay_count=DeadLetterEntry.replay_count + 1, last_replayed_at=now,
                    last_replay_job_id=job_id)
        )
        assert result.rowcount == 1
        session.add(Job(tenant_id=entry.tenant_id, job_id=job_id, project_id=entry.project_id,
                        source_id=entry.source_id, job_type=entry.job_type, payload=payload, priority=0,
                        status="pending", attempt=0, max_attempts=1, run_after=now,
                        replay_of_entry_id=entry.entry_id, cancel_requested=False, created_at=now, updated_at=now))
    return job_id


async def test_replay_that_fails_again_returns_to_its_entry_and_one_that_succeeds_marks_it_replayed(
    client, factory, runtime, workers
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    failing = {"failUntil": "2999-01-01T00:00:00Z", "errorCode": "db.connection_refused", "category": "dependency",
               "message": "connection refused by 10.0.0.7:5432"}
    await submit(client, factory, tenant, source["sourceId"], "demo.flaky", maxAttempts=1, payload=failing)
    workers(tenant)
    [entry] = await eventually(lambda: _entries_with(runtime, tenant, "pending"))
    first_dead = entry.first_dead_lettered_at

    await _replay(runtime, tenant, entry, {**failing, "message": "connection refused by 10.0.0.8:5432"})
    [again] = await eventually(lambda: _entries_with(runtime, tenant, "pending", replay_count=1))
    assert again.entry_id == entry.entry_id and again.job_id == entry.job_id
    assert again.message == "connection refused by 10.0.0.8:5432"
    assert again.error_template == entry.error_template and again.first_dead_lettered_at == first_dead
    assert again.dead_lettered_at > entry.dead_lettered_at

    await _replay(runtime, tenant, again, {**failing, "failUntil": "2000-01-01T00:00:00Z"})
    [replayed] = await eventually(lambda: _entries_with(runtime, tenant, "replayed", replay_count=2))
    assert replayed.entry_id == entry.entry_id
    jobs = await jobs_of(runtime, tenant)
    assert sorted(j.status for j in jobs) == ["failed", "failed", "succeeded"]
    async with runtime.sessions() as session:
        from app.storage.models import Source
        counted = await session.get(Source, (await tenant_id(runtime, tenant), source["sourceId"]))
    assert counted.jobs_failed == 2


async def _entries_with(runtime, tenant, status, replay_count=0):
    entries = await entries_of(runtime, tenant)
    return entries if entries and all(e.status == status and e.replay_count == replay_count for e in entries) else None

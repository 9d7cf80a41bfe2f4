"""The worker end to end: real `jobgate worker` processes on the test database. (A worker killed
mid-job is a fault drill: tests/drills/test_worker_kill.py.)"""

from __future__ import annotations

import uuid
from collections import Counter

from sqlalchemy import text

from app.domain.deadletter.templates import error_template, template_hash
from tests.engine.conftest import eventually
from tests.engine.handlers import read_log
from tests.engine.support import entries_of, jobs_of, submit


async def test_failing_jobs_dead_letter_with_their_categories_codes_and_templates(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    invalid = {"errorCode": "payload.invalid", "category": "validation", "retryable": False,
               "message": "Field 'image' is missing in manifest 42"}
    timeout = {"errorCode": "upstream.timeout", "category": "transient", "retryable": True,
               "message": "Timed out after 30s calling https://registry.example.com/v2/x"}
    for payload in (invalid, invalid, timeout):
        await submit(client, factory, tenant, source["sourceId"], "demo.fail", payload=payload, maxAttempts=2)
    workers(tenant)

    async def all_failed():
        jobs = await jobs_of(runtime, tenant)
        return all(j.status == "failed" for j in jobs) and jobs

    jobs = await eventually(all_failed)
    entries = await eventually(lambda: _entries(runtime, tenant, 3))
    by_job = {e.job_id: e for e in entries}
    for j in jobs:
        entry = by_job[j.job_id]
        payload = j.payload
        assert (entry.error_code, entry.category) == (payload["errorCode"], payload["category"])
        assert entry.message == payload["message"]
        assert entry.error_template == error_template(payload["message"])
        assert entry.template_hash == template_hash(payload["errorCode"], entry.error_template)
        assert entry.payload == payload and entry.status == "pending" and entry.source_id == source["sourceId"]
        # the non-retryable error dead-letters at once, the retryable one after its two attempts
        assert entry.attempts == (1 if payload is not None and not payload["retryable"] else 2)
    assert Counter(e.error_code for e in entries) == {"payload.invalid": 2, "upstream.timeout": 1}
    assert {e.error_template for e in entries if e.error_code == "payload.invalid"} == {
        "Field <value> is missing in manifest <n>"
    }
    listed = await client.get(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(tenant))
    assert listed.json()["jobCounts"] == {"submitted": 3, "active": 0, "failed": 3}


async def _entries(runtime, tenant, count):
    entries = await entries_of(runtime, tenant)
    return entries if len(entries) == count else None


async def test_each_job_runs_exactly_once_across_two_workers(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    pool = [workers(tenant, concurrency=8), workers(tenant, concurrency=8)]
    for worker in pool:
        await worker.ready()
    payload = {"log": log_path, "seconds": 0.02}
    submitted = [
        (await submit(client, factory, tenant, source["sourceId"], "test.record", payload=payload))["jobId"]
        for _ in range(60)
    ]

    async def all_succeeded():
        return all(j.status == "succeeded" for j in await jobs_of(runtime, tenant))

    await eventually(all_succeeded, timeout=30)
    starts = Counter(job_id for kind, job_id, *_ in read_log(log_path) if kind == "start")
    assert starts == Counter({job_id: 1 for job_id in submitted})
    assert {j.attempt for j in await jobs_of(runtime, tenant)} == {1}
    assert len({worker for *_, worker in read_log(log_path)}) == 2  # both workers took part


async def test_an_outcome_refused_twice_by_the_database_is_recorded_and_the_job_runs_once(
    client, factory, runtime, workers, log_path
):
    """The database refuses the first two attempts to record a success (a trigger raising, as a
    failover or a timed-out statement would); the worker retries and the job neither runs again
    nor stays leased."""
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    refusals = f"outcome_refusals_{uuid.uuid4().hex[:8]}"
    function = f"refuse_outcome_{uuid.uuid4().hex[:8]}"
    async with runtime.engine.begin() as conn:
        await conn.execute(text(f"CREATE SEQUENCE {refusals}"))
        await conn.execute(
            text(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.status = 'succeeded' AND nextval('{refusals}') <= 2 THEN "
                f"RAISE EXCEPTION 'outcome refused for the test'; END IF; RETURN NEW; END $$"
            )
        )
        tenant_row = await conn.execute(text("SELECT id FROM tenants WHERE key = :k"), {"k": tenant})
        await conn.execute(
            text(
                f"CREATE TRIGGER {function} BEFORE UPDATE ON jobs FOR EACH ROW "
                f"WHEN (NEW.tenant_id = {tenant_row.scalar_one()}) EXECUTE FUNCTION {function}()"
            )
        )
    try:
        worker = workers(tenant)
        await worker.ready()
        job_id = (await submit(client, factory, tenant, source["sourceId"], "test.record",
                               payload={"log": log_path}))["jobId"]

        async def succeeded():
            return next(j for j in await jobs_of(runtime, tenant) if j.job_id == job_id).status == "succeeded"

        await eventually(succeeded, timeout=20)
        async with runtime.engine.connect() as conn:
            assert (await conn.execute(text(f"SELECT last_value FROM {refusals}"))).scalar_one() == 3
        (done,) = await jobs_of(runtime, tenant)
        assert (done.attempt, done.lease_owner) == (1, None)
        assert [kind for kind, *_ in read_log(log_path)] == ["start", "end"]
        assert worker.output().count(f"recording the outcome of job {job_id} failed") == 2
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {function} ON jobs"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {function}()"))
            await conn.execute(text(f"DROP SEQUENCE IF EXISTS {refusals}"))

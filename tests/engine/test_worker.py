"""The worker end to end: real `jobgate worker` processes on the test database. (A worker killed
mid-job is a fault drill: tests/drills/test_worker_kill.py.)"""

from __future__ import annotations

from collections import Counter

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

"""The worker end to end: real `jobgate worker` processes on the test database."""

from __future__ import annotations

from collections import Counter

from app.domain.deadletter.templates import error_template, template_hash
from tests.engine.conftest import eventually
from tests.engine.handlers import read_log
from tests.engine.support import entries_of, job, jobs_of, submit


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


async def test_job_of_a_killed_worker_is_claimed_again_after_its_lease_expires(
    client, factory, runtime, workers, log_path
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    submitted = await submit(client, factory, tenant, source["sourceId"], "test.record",
                             payload={"log": log_path, "firstAttemptSeconds": 60, "seconds": 0})
    first = workers(tenant, JOBGATE_WORKER_LEASE_SECONDS="1.5")
    await eventually(lambda: _started(log_path, 1))
    first.kill()  # SIGKILL: no release, the lease must run out
    killed = await job(runtime, tenant, submitted["jobId"])
    assert killed.status == "running" and killed.lease_owner == first.worker_id
    second = workers(tenant, JOBGATE_WORKER_LEASE_SECONDS="1.5")

    async def finished():
        current = await job(runtime, tenant, submitted["jobId"])
        return current if current.status == "succeeded" else None

    done = await eventually(finished, timeout=30)
    runs = read_log(log_path)
    assert [(kind, attempt) for kind, _, attempt, _, _ in runs] == [("start", 1), ("start", 2), ("end", 2)]
    assert runs[1][4] == second.worker_id and done.attempt == 2 and done.lease_owner is None


async def _started(path, count):
    return len([r for r in read_log(path) if r[0] == "start"]) >= count

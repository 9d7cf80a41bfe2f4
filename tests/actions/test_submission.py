"""Submitting jobs and pack runs (scope orch:submit)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.storage.models import Job, OperationRun, PackRun
from tests.engine.rows import audit_rows, snapshot, tenant_id

JOBS = "/jobengine/jobs"
PACKS = "/jobengine/pack-runs"


def _submitter(factory, tenant, **kwargs):
    return factory.headers(tenant, scope="orch:submit orch:read", reason=None, **kwargs)


async def test_submitted_job_is_pending_and_counted_on_its_source(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    body = {"jobType": "demo.noop", "sourceId": source["sourceId"], "payload": {"k": [1, 2]}, "priority": 7,
            "maxAttempts": 5}
    response = await client.post(JOBS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"http://gateway.test/jobengine/jobs/{job['jobId']}"
    assert response.headers["etag"]
    assert (job["status"], job["jobType"], job["payload"], job["priority"], job["maxAttempts"], job["attempt"]) == (
        "pending", "demo.noop", {"k": [1, 2]}, 7, 5, 0)
    read = await client.get(f"{JOBS}/{job['jobId']}", headers=_submitter(factory, tenant))
    assert read.status_code == 200 and read.json()["jobId"] == job["jobId"]
    counted = await client.get(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(tenant))
    assert counted.json()["jobCounts"]["submitted"] == 1 and counted.json()["lastJobAt"] is not None
    [audit] = await audit_rows(runtime, tenant, "job.submit")
    assert (audit.result_status, audit.target, audit.subject) == (201, job["jobId"], "tester")


async def test_job_with_a_future_run_after_is_scheduled(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    body = {"jobType": "demo.noop", "sourceId": source["sourceId"], "runAfter": "2999-01-01T00:00:00Z"}
    response = await client.post(JOBS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 201 and response.json()["status"] == "scheduled"
    assert response.json()["runAfter"].startswith("2999-01-01")


async def test_resubmission_with_the_same_idempotency_key_answers_the_first_job(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    headers = {**_submitter(factory, tenant), "Idempotency-Key": "submit-0001"}
    body = {"jobType": "demo.noop", "sourceId": source["sourceId"]}
    first = await client.post(JOBS, json=body, headers=headers)
    second = await client.post(JOBS, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["jobId"] == second.json()["jobId"]
    assert (await snapshot(runtime, tenant))["jobs"] == 1


async def test_job_of_an_unknown_source_is_404_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    before = await snapshot(runtime, tenant)
    response = await client.post(JOBS, json={"jobType": "demo.noop", "sourceId": "nope"},
                                 headers=_submitter(factory, tenant))
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert await snapshot(runtime, tenant) == before
    [audit] = await audit_rows(runtime, tenant, "job.submit")
    assert audit.result_status == 404


async def test_job_of_another_tenants_source_is_404_and_changes_neither_tenant(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    theirs = await factory.source(client, other)
    before, theirs_before = await snapshot(runtime, tenant), await snapshot(runtime, other)
    response = await client.post(JOBS, json={"jobType": "demo.noop", "sourceId": theirs["sourceId"]},
                                 headers=_submitter(factory, tenant))
    assert response.status_code == 404
    assert await snapshot(runtime, tenant) == before and await snapshot(runtime, other) == theirs_before


async def test_job_of_a_disabled_source_is_409_source_disabled(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, enabled=False)
    before = await snapshot(runtime, tenant)
    for path, body in ((JOBS, {"jobType": "demo.noop", "sourceId": source["sourceId"]}),
                       (PACKS, {"packName": "p", "packVersion": "1", "sourceId": source["sourceId"],
                                "steps": [{"jobType": "demo.noop"}]})):
        response = await client.post(path, json=body, headers=_submitter(factory, tenant))
        assert response.status_code == 409 and response.json()["code"] == "source_disabled"
    assert await snapshot(runtime, tenant) == before  # counters included
    assert [a.result_status for a in await audit_rows(runtime, tenant) if a.action.endswith("submit")] == [409, 409]


BAD_JOBS = [
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "extra": 1}, id="unknown-field"),
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "payload": []}, id="payload-not-object"),
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "priority": "high"}, id="priority-text"),
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "maxAttempts": 0}, id="zero-attempts"),
    pytest.param({"jobType": "Demo Noop", "sourceId": "S"}, id="job-type-shape"),
    pytest.param({"sourceId": "S"}, id="no-job-type"),
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "payload": {"a": ["x\u0000y"]}}, id="nul-in-payload"),
    pytest.param({"jobType": "demo.noop", "sourceId": "S", "payload": {"\u0000": 1}}, id="nul-in-payload-key"),
]


@pytest.mark.parametrize("body", BAD_JOBS)
async def test_invalid_job_is_400_and_changes_nothing(client, factory, runtime, body):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, sourceId="S")
    assert source["sourceId"] == "S"
    before = await snapshot(runtime, tenant)
    response = await client.post(JOBS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await snapshot(runtime, tenant) == before
    [audit] = await audit_rows(runtime, tenant, "job.submit")
    assert (audit.result_status, audit.subject, audit.trace_id) == (400, "tester", response.headers["x-stella-trace-id"])


@pytest.mark.parametrize(
    "depth",
    [
        33,
        5000,
    ],
)
async def test_deeply_nested_payload_is_400_and_changes_nothing(client, factory, runtime, depth):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    before = await snapshot(runtime, tenant)
    payload = "[" * (depth - 1) + "]" * (depth - 1)
    body = f'{{"jobType": "demo.noop", "sourceId": "{source["sourceId"]}", "payload": {{"deep": {payload}}}}}'
    response = await client.post(JOBS, content=body, headers={**_submitter(factory, tenant),
                                                              "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert await snapshot(runtime, tenant) == before


async def test_payload_nested_32_deep_is_accepted(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    payload = "[" * 31 + "]" * 31
    body = f'{{"jobType": "demo.noop", "sourceId": "{source["sourceId"]}", "payload": {{"deep": {payload}}}}}'
    response = await client.post(JOBS, content=body, headers={**_submitter(factory, tenant),
                                                              "Content-Type": "application/json"})
    assert response.status_code == 201, response.text


async def test_submission_needs_the_submit_scope(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    response = await client.post(JOBS, json={"jobType": "demo.noop", "sourceId": source["sourceId"]},
                                 headers=factory.headers(tenant, scope="orch:read orch:operate"))
    assert response.status_code == 403
    assert (await snapshot(runtime, tenant))["jobs"] == 0


async def test_pack_run_creates_its_operation_run_then_one_pending_job_per_step(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    steps = [{"jobType": "demo.noop"}, {"jobType": "demo.sleep", "payload": {"seconds": 1}, "maxAttempts": 2},
             {"jobType": "demo.noop"}]
    body = {"packName": "nightly-scan", "packVersion": "1.4.0", "sourceId": source["sourceId"], "steps": steps}
    response = await client.post(PACKS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == f"http://gateway.test/jobengine/pack-runs/{run['packRunId']}"
    assert (run["status"], run["stepCounts"], run["retryOf"]) == ("queued", {"total": 3, "succeeded": 0, "failed": 0}, None)
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        operation = await session.get(OperationRun, run["operationRunId"])
        jobs = list((await session.execute(
            select(Job).where(Job.tenant_id == tid, Job.pack_run_id == run["packRunId"]).order_by(Job.step_index)
        )).scalars())
    assert (operation.type, operation.status, operation.outcome, operation.tenant_id) == (
        "pack_run.execute", "queued", "pending", tid)
    assert operation.context["pack_run_id"] == run["packRunId"]
    assert [(j.step_index, j.job_type, j.status, j.max_attempts) for j in jobs] == [
        (0, "demo.noop", "pending", 3), (1, "demo.sleep", "pending", 2), (2, "demo.noop", "pending", 3)]
    counted = await client.get(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(tenant))
    assert counted.json()["jobCounts"]["submitted"] == 3
    assert len(await audit_rows(runtime, tenant, "packrun.submit")) == 1


async def test_pack_run_with_a_job_type_without_handler_is_blocked_at_once(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    body = {"packName": "p", "packVersion": "1", "sourceId": source["sourceId"],
            "steps": [{"jobType": "demo.noop"}, {"jobType": "nobody.handles.this"}]}
    response = await client.post(PACKS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 201 and response.json()["status"] == "blocked"
    async with runtime.sessions() as session:
        operation = await session.get(OperationRun, response.json()["operationRunId"])
        run = await session.get(PackRun, (await tenant_id(runtime, tenant), response.json()["packRunId"]))
        statuses = (await session.execute(select(Job.status).where(Job.pack_run_id == run.pack_run_id))).scalars()
        assert set(statuses) == {"canceled"}
    assert (operation.status, operation.outcome) == ("completed", "blocked")
    assert "nobody.handles.this" in operation.failure_summary[0]["message"]


BAD_PACKS = [
    pytest.param({"steps": []}, id="no-steps"),
    pytest.param({"steps": [{"jobType": "demo.noop"}] * 101}, id="101-steps"),
    pytest.param({"steps": [{"jobType": "demo.noop", "priority": 1}]}, id="unknown-step-field"),
    pytest.param({"steps": "demo.noop"}, id="steps-not-list"),
    pytest.param({"steps": [{"jobType": "demo.noop"}], "retryOf": "x"}, id="unknown-field"),
    pytest.param({"steps": [{"jobType": "demo.noop", "payload": {"k": "\u0000"}}]}, id="nul-in-step-payload"),
    pytest.param({"steps": [{"jobType": "demo.noop"}], "packName": "a\u0000b"}, id="nul-in-pack-name"),
]


@pytest.mark.parametrize("change", BAD_PACKS)
async def test_invalid_pack_run_is_400_and_changes_nothing(client, factory, runtime, change):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    before = await snapshot(runtime, tenant)
    body = {"packName": "p", "packVersion": "1", "sourceId": source["sourceId"], **change}
    response = await client.post(PACKS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 400, response.text
    assert await snapshot(runtime, tenant) == before
    assert [a.result_status for a in await audit_rows(runtime, tenant, "packrun.submit")] == [400]


async def test_pack_run_of_another_tenants_source_is_404(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    theirs = await factory.source(client, other)
    before = await snapshot(runtime, tenant)
    body = {"packName": "p", "packVersion": "1", "sourceId": theirs["sourceId"], "steps": [{"jobType": "demo.noop"}]}
    response = await client.post(PACKS, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 404
    assert await snapshot(runtime, tenant) == before
    assert [a.result_status for a in await audit_rows(runtime, tenant, "packrun.submit")] == [404]


async def test_a_project_caller_submits_to_its_projects_sources_only(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant, sourceId="alpha-src", projectId="alpha")
    await factory.source(client, tenant, sourceId="beta-src", projectId="beta")
    headers = _submitter(factory, tenant, project="beta")
    refused = await client.post(JOBS, json={"jobType": "demo.noop", "sourceId": "alpha-src"}, headers=headers)
    accepted = await client.post(JOBS, json={"jobType": "demo.noop", "sourceId": "beta-src"}, headers=headers)
    assert (refused.status_code, accepted.status_code) == (404, 201)
    assert accepted.json()["projectId"] == "beta"
    counts = {s[0]: s[1] for s in (await snapshot(runtime, tenant))["sources"]}
    assert counts == {"alpha-src": 0, "beta-src": 1}
    assert [a.result_status for a in await audit_rows(runtime, tenant, "job.submit")] == [404, 201]

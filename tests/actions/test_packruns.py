"""Pack-run cancel (orch:operate) and retry (orch:backfill), without a worker: the transitions
a worker would make are applied with the engine's own functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.engine import outcomes
from app.engine.dispatcher import claim
from app.storage.models import Job, OperationRun
from tests.engine.rows import audit_rows, snapshot, tenant_id

PACKS = "/jobengine/pack-runs"


async def _pack(client, factory, tenant, steps=2):
    source = await factory.source(client, tenant)
    body = {"packName": "nightly", "packVersion": "2.0.0", "sourceId": source["sourceId"],
            "steps": [{"jobType": "demo.noop", "payload": {"n": i}} for i in range(steps)]}
    response = await client.post(PACKS, json=body, headers=factory.headers(tenant, reason=None))
    assert response.status_code == 201, response.text
    return response.json()


async def _jobs(runtime, tenant, pack_run_id):
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        stmt = select(Job).where(Job.tenant_id == tid, Job.pack_run_id == pack_run_id).order_by(Job.step_index)
        return list((await session.execute(stmt)).scalars())


async def _operation(runtime, run_id):
    async with runtime.sessions() as session:
        return await session.get(OperationRun, run_id)


async def _start_first_step(runtime, tenant):
    """What a worker does when it takes the first step: claim and start it."""
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        claimed = await claim(session, worker_id="test-worker", job_types=["demo.noop"], limit=1, lease_seconds=60,
                              now=datetime.now(UTC), tenants=(tid,))
        assert len(claimed) == 1
        await outcomes.start(session, "test-worker", claimed, datetime.now(UTC))
    return claimed[0]


async def _cancel(client, factory, tenant, pack_run_id, **headers):
    return await client.post(f"{PACKS}/{pack_run_id}/cancel", headers=factory.headers(tenant, **headers))


async def _retry(client, factory, tenant, pack_run_id):
    return await client.post(f"{PACKS}/{pack_run_id}/retry", headers=factory.headers(tenant))


async def test_cancel_of_a_queued_run_cancels_it_and_its_jobs_at_once(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant)
    response = await _cancel(client, factory, tenant, pack["packRunId"], ticket="OPS-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "canceled" and body["cancelRequestedAt"] and body["finishedAt"]
    assert {j.status for j in await _jobs(runtime, tenant, pack["packRunId"])} == {"canceled"}
    operation = await _operation(runtime, pack["operationRunId"])
    assert (operation.status, operation.outcome, operation.failure_summary[0]["code"]) == (
        "completed", "failed", "run.canceled")
    [audit] = await audit_rows(runtime, tenant, "packrun.cancel")
    assert (audit.result_status, audit.target, audit.reason, audit.ticket) == (200, pack["packRunId"], "test run", "OPS-1")


async def test_cancel_of_a_running_run_asks_its_running_step_to_stop(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant)
    step = await _start_first_step(runtime, tenant)
    response = await _cancel(client, factory, tenant, pack["packRunId"])
    assert response.status_code == 202 and response.json()["status"] == "cancel_requested"
    running, waiting = await _jobs(runtime, tenant, pack["packRunId"])
    assert (running.status, running.cancel_requested) == ("cancel_requested", True)
    assert waiting.status == "canceled"
    again = await _cancel(client, factory, tenant, pack["packRunId"])
    assert again.status_code == 202 and again.json()["cancelRequestedAt"] == response.json()["cancelRequestedAt"]
    # the worker sees the request at its next heartbeat and ends the step: the run is canceled
    async with runtime.sessions() as session:
        held = await outcomes.heartbeat(session, "test-worker", [step], 60)
        assert held == {(step.tenant_id, step.job_id): True}
        assert await outcomes.cancel(session, "test-worker", step)
    read = await client.get(f"{PACKS}/{pack['packRunId']}", headers=factory.headers(tenant))
    assert read.json()["status"] == "canceled"
    assert (await _operation(runtime, pack["operationRunId"])).status == "completed"
    assert [a.result_status for a in await audit_rows(runtime, tenant, "packrun.cancel")] == [202, 202]


async def test_cancel_of_a_terminal_run_is_409_run_not_active(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant)
    assert (await _cancel(client, factory, tenant, pack["packRunId"])).status_code == 200
    before = await snapshot(runtime, tenant)
    response = await _cancel(client, factory, tenant, pack["packRunId"])
    assert response.status_code == 409 and response.json()["code"] == "run_not_active"
    assert await snapshot(runtime, tenant) == before
    assert [a.result_status for a in await audit_rows(runtime, tenant, "packrun.cancel")] == [200, 409]


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_another_tenants_pack_run_is_404_and_untouched(client, factory, runtime, action):
    tenant, other = await factory.tenant(), await factory.tenant()
    pack = await _pack(client, factory, other)
    if action == "retry":
        assert (await _cancel(client, factory, other, pack["packRunId"])).status_code == 200
    theirs = await snapshot(runtime, other)
    response = await client.post(f"{PACKS}/{pack['packRunId']}/{action}", headers=factory.headers(tenant))
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert await snapshot(runtime, other) == theirs
    assert [a.result_status for a in await audit_rows(runtime, tenant)] == [404]


async def test_cancel_and_retry_need_their_scopes(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant)
    cancel = await client.post(f"{PACKS}/{pack['packRunId']}/cancel",
                               headers=factory.headers(tenant, scope="orch:read orch:backfill"))
    retry = await client.post(f"{PACKS}/{pack['packRunId']}/retry",
                              headers=factory.headers(tenant, scope="orch:read orch:operate"))
    assert cancel.status_code == retry.status_code == 403
    assert (await snapshot(runtime, tenant))["pack_run_statuses"] == [(pack["packRunId"], "queued")]


async def test_retry_creates_a_new_run_of_the_same_steps_with_its_own_operation_run(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant, steps=3)
    assert (await _cancel(client, factory, tenant, pack["packRunId"])).status_code == 200
    response = await _retry(client, factory, tenant, pack["packRunId"])
    assert response.status_code == 201, response.text
    retry = response.json()
    assert response.headers["location"].endswith(f"/jobengine/pack-runs/{retry['packRunId']}")
    assert (retry["retryOf"], retry["status"], retry["packName"], retry["stepCounts"]["total"]) == (
        pack["packRunId"], "queued", "nightly", 3)
    assert retry["operationRunId"] != pack["operationRunId"]
    operation = await _operation(runtime, retry["operationRunId"])
    assert (operation.type, operation.status, operation.context["retry_of"]) == ("pack_run.retry", "queued",
                                                                                 pack["packRunId"])
    old_jobs, new_jobs = await _jobs(runtime, tenant, pack["packRunId"]), await _jobs(runtime, tenant, retry["packRunId"])
    assert [(j.job_type, j.payload, j.step_index) for j in new_jobs] == [
        (j.job_type, j.payload, j.step_index) for j in old_jobs]
    assert {j.status for j in new_jobs} == {"pending"}
    [audit] = await audit_rows(runtime, tenant, "packrun.retry")
    assert (audit.result_status, audit.target) == (201, pack["packRunId"])


async def test_second_retry_while_the_first_is_active_answers_the_first(client, factory, runtime):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant)
    assert (await _cancel(client, factory, tenant, pack["packRunId"])).status_code == 200
    first = await _retry(client, factory, tenant, pack["packRunId"])
    before = await snapshot(runtime, tenant)
    second = await _retry(client, factory, tenant, pack["packRunId"])
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["packRunId"] == first.json()["packRunId"]
    assert await snapshot(runtime, tenant) == before
    # once the first retry is over, a new retry is a new run
    assert (await _cancel(client, factory, tenant, first.json()["packRunId"])).status_code == 200
    third = await _retry(client, factory, tenant, pack["packRunId"])
    assert third.status_code == 201 and third.json()["packRunId"] != first.json()["packRunId"]
    assert [a.result_status for a in await audit_rows(runtime, tenant, "packrun.retry")] == [201, 200, 201]


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
async def test_retry_of_a_run_that_is_not_failed_canceled_or_blocked_is_409(client, factory, runtime, state):
    tenant = await factory.tenant()
    pack = await _pack(client, factory, tenant, steps=1)
    if state != "queued":
        step = await _start_first_step(runtime, tenant)
        if state == "succeeded":
            async with runtime.sessions() as session:
                assert await outcomes.succeed(session, "test-worker", step)
    before = await snapshot(runtime, tenant)
    response = await _retry(client, factory, tenant, pack["packRunId"])
    assert response.status_code == 409 and response.json()["code"] == "run_not_retryable"
    assert await snapshot(runtime, tenant) == before
    read = await client.get(f"{PACKS}/{pack['packRunId']}", headers=factory.headers(tenant))
    assert read.json()["status"] == state


async def test_bad_pack_run_id_is_404_without_changes(client, factory, runtime):
    tenant = await factory.tenant()
    await _pack(client, factory, tenant)
    before = await snapshot(runtime, tenant)
    for action in ("cancel", "retry"):
        response = await client.post(f"{PACKS}/does-not-exist/{action}", headers=factory.headers(tenant))
        assert response.status_code == 404
    assert await snapshot(runtime, tenant) == before


@pytest.mark.parametrize(
    ("name", "path", "status"),
    [
        ("orchestrator-packrun-cancel.json", "/jobengine/pack-runs/{packRunId}/cancel", "200"),
        ("orchestrator-packrun-retry.json", "/jobengine/pack-runs/{packRunId}/retry", "201"),
    ],
)
def test_captured_sample_validates_against_the_contract(name, path, status):
    import json

    import jsonschema_rs
    import yaml

    from tests.conftest import ROOT

    contract = yaml.safe_load((ROOT / "contracts" / "jobengine-gateway.openapi.yaml").read_text())
    schema = contract["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]
    sample = json.loads((ROOT / "samples" / name).read_text())
    jsonschema_rs.validate({**schema, "components": contract["components"]}, sample)
    assert sample["status"] == ("canceled" if "cancel" in name else "queued")
    assert (sample["retryOf"] is not None) == ("retry" in name)

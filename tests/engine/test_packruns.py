"""Pack runs through real workers: steps in order, failure, cancel and retry."""

from __future__ import annotations

import itertools
import time

from sqlalchemy import select

from app.storage.models import OperationRun
from tests.engine.conftest import eventually
from tests.engine.handlers import read_log
from tests.engine.support import jobs_of, pack_run, submit_pack


async def _operation(runtime, run_id):
    async with runtime.sessions() as session:
        return (await session.execute(select(OperationRun).where(OperationRun.id == run_id))).scalar_one()


async def _status_is(runtime, tenant, pack_run_id, *statuses):
    run = await pack_run(runtime, tenant, pack_run_id)
    return run if run.status in statuses else None


async def test_steps_run_in_order_and_the_run_and_its_operation_succeed(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    step = {"jobType": "test.record", "payload": {"log": log_path, "seconds": 0.1}}
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [step, step, step])
    workers(tenant, concurrency=4)
    workers(tenant, concurrency=4)
    run = await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "succeeded"))
    jobs = sorted(await jobs_of(runtime, tenant), key=lambda j: j.step_index)
    rows = read_log(log_path)
    order = [job_id for kind, job_id, *_ in rows if kind == "start"]
    assert order == [j.job_id for j in jobs]
    ends = {job_id: moment for kind, job_id, _, moment, _ in rows if kind == "end"}
    starts = {job_id: moment for kind, job_id, _, moment, _ in rows if kind == "start"}
    assert all(starts[b.job_id] >= ends[a.job_id] for a, b in itertools.pairwise(jobs))
    assert (run.steps_total, run.steps_succeeded, run.steps_failed) == (3, 3, 0)
    assert run.started_at is not None and run.finished_at is not None
    operation = await _operation(runtime, run.operation_run_id)
    assert (operation.status, operation.outcome) == ("completed", "succeeded")
    assert operation.summary_counts == {"total": 3, "succeeded": 3, "failed": 0}


async def test_a_dead_lettered_step_ends_the_run_partially_succeeded(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    fail = {"errorCode": "artifact.missing", "category": "not_found", "message": "gone", "retryable": False}
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [
        {"jobType": "demo.noop"}, {"jobType": "demo.fail", "payload": fail}, {"jobType": "demo.noop"},
    ])
    workers(tenant)
    run = await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "partially_succeeded", "failed"))
    assert run.status == "partially_succeeded" and (run.steps_succeeded, run.steps_failed) == (1, 1)
    statuses = [j.status for j in sorted(await jobs_of(runtime, tenant), key=lambda j: j.step_index)]
    assert statuses == ["succeeded", "failed", "canceled"]
    operation = await _operation(runtime, run.operation_run_id)
    assert (operation.status, operation.outcome) == ("completed", "partially_succeeded")


async def test_cancel_of_a_running_pack_run_stops_it_within_one_heartbeat(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [
        {"jobType": "test.record", "payload": {"log": log_path, "seconds": 60}},
        {"jobType": "test.record", "payload": {"log": log_path}},
    ])
    workers(tenant)
    await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "running"))
    await eventually(lambda: _has_start(log_path))
    asked = time.monotonic()
    response = await client.post(f"/jobengine/pack-runs/{pack['packRunId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancel_requested" and response.json()["cancelRequestedAt"]
    run = await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "canceled"), interval=0.02)
    assert time.monotonic() - asked < 5
    steps = sorted(await jobs_of(runtime, tenant), key=lambda j: j.step_index)
    assert [j.status for j in steps] == ["canceled"] * 2
    # the running step ended at the worker's next heartbeat (every 0.3 s) after the request
    stopped_after = (steps[0].finished_at - run.cancel_requested_at).total_seconds()
    assert 0 <= stopped_after < 0.3 + 0.3
    assert run.finished_at == steps[0].finished_at
    assert [r[0] for r in read_log(log_path)] == ["start"]  # the first step stopped, the second never ran
    operation = await _operation(runtime, run.operation_run_id)
    assert (operation.status, operation.outcome) == ("completed", "failed")
    assert operation.failure_summary[0]["code"] == "run.canceled"


async def _has_start(path):
    return any(r[0] == "start" for r in read_log(path))


async def test_cancel_of_a_queued_pack_run_runs_none_of_its_jobs(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    step = {"jobType": "test.record", "payload": {"log": log_path}}
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [step, step])
    response = await client.post(f"/jobengine/pack-runs/{pack['packRunId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    marker = await submit_pack(client, factory, tenant, source["sourceId"], [{"jobType": "demo.noop"}])
    workers(tenant)
    await eventually(lambda: _status_is(runtime, tenant, marker["packRunId"], "succeeded"))
    assert read_log(log_path) == []
    assert {j.status for j in await jobs_of(runtime, tenant) if j.pack_run_id == pack["packRunId"]} == {"canceled"}


async def test_retry_of_a_failed_run_runs_its_steps_again_as_a_new_linked_run(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    flaky = {"errorCode": "upstream.timeout", "category": "transient", "message": "slow",
             "failUntil": "2000-01-01T00:00:00Z"}
    fail = {"errorCode": "payload.invalid", "category": "validation", "message": "bad", "retryable": False}
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [
        {"jobType": "demo.fail", "payload": fail}, {"jobType": "demo.flaky", "payload": flaky},
    ])
    workers(tenant)
    await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "failed"))
    response = await client.post(f"/jobengine/pack-runs/{pack['packRunId']}/retry", headers=factory.headers(tenant))
    assert response.status_code == 201, response.text
    retry = response.json()
    assert retry["retryOf"] == pack["packRunId"] and retry["packRunId"] != pack["packRunId"]
    done = await eventually(lambda: _status_is(runtime, tenant, retry["packRunId"], "failed", "succeeded"))
    # the same steps again: the first still fails, so the retry fails too, on its own operation run
    assert done.status == "failed"
    operation = await _operation(runtime, done.operation_run_id)
    assert operation.type == "pack_run.retry" and operation.context["retry_of"] == pack["packRunId"]
    retried_jobs = sorted((j for j in await jobs_of(runtime, tenant) if j.pack_run_id == retry["packRunId"]),
                          key=lambda j: j.step_index)
    assert [(j.job_type, j.payload) for j in retried_jobs] == [("demo.fail", fail), ("demo.flaky", flaky)]


async def test_a_step_whose_source_was_disabled_blocks_the_run(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    pack = await submit_pack(client, factory, tenant, source["sourceId"], [{"jobType": "demo.noop"}] * 2)
    replaced = await client.put(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(tenant), json={
        "name": source["name"], "sourceType": source["sourceType"], "enabled": False, "projectId": None,
        "description": None})
    assert replaced.status_code == 200, replaced.text
    workers(tenant)
    run = await eventually(lambda: _status_is(runtime, tenant, pack["packRunId"], "blocked"))
    assert {j.status for j in await jobs_of(runtime, tenant)} == {"canceled"}
    operation = await _operation(runtime, run.operation_run_id)
    assert (operation.status, operation.outcome) == ("completed", "blocked")
    assert "disabled" in operation.failure_summary[0]["message"]

"""Job cancel (orch:operate), without a worker process: the transitions a worker makes are applied
with the engine's own functions. Waiting jobs end at once (200), held jobs become
``cancel_requested`` (202) and end at the worker's next heartbeat or, past the grace period, by the
reconciler; ended jobs are 409 ``job_not_active``; foreign ids 404; every request is audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.engine import outcomes
from app.engine.dispatcher import claim
from app.engine.reconciler import CANCEL_GRACE_SECONDS, force_overdue_job_cancels
from app.storage.models import Job, PackRun, Tenant
from tests.actions.test_replay import assert_problem, dead_letters
from tests.engine.rows import audit_rows, snapshot, tenant_id

WORKER = "test-worker"


def cancel_path(job_id: str) -> str:
    return f"/jobengine/jobs/{job_id}/cancel"


async def submit(client, factory, tenant, source_id, job_type="demo.noop", **body):
    response = await client.post(
        "/jobengine/jobs",
        json={"jobType": job_type, "sourceId": source_id, **body},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def stored(runtime, tenant, job_id) -> Job:
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        return (await session.execute(select(Job).where(Job.tenant_id == tid, Job.job_id == job_id))).scalar_one()


async def take(runtime, tenant, job_type="demo.noop", *, start=True):
    """What a worker does: claim one job of the tenant (and start it)."""
    tid = await tenant_id(runtime, tenant)
    now = datetime.now(UTC)
    async with runtime.sessions() as session:
        [claimed] = await claim(session, worker_id=WORKER, job_types=[job_type], limit=1, lease_seconds=60, now=now,
                                tenants=(tid,))
        if start:
            assert await outcomes.start(session, WORKER, [claimed], now) == [claimed]
    return claimed


async def set_status(runtime, tenant, job_id, status):
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions.begin() as session:
        await session.execute(update(Job).where(Job.tenant_id == tid, Job.job_id == job_id).values(status=status))


@pytest.fixture
async def source(client, factory):
    tenant = await factory.tenant()
    return tenant, (await factory.source(client, tenant))["sourceId"]


@pytest.mark.parametrize("run_after", [None, "2999-01-01T00:00:00Z"])
async def test_cancel_of_a_waiting_job_cancels_it_at_once(client, factory, runtime, source, run_after):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id, **({"runAfter": run_after} if run_after else {}))
    assert job["status"] == ("scheduled" if run_after else "pending")
    response = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant, ticket="OPS-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["waitingReason"], body["deadLetterEntryId"]) == ("canceled", None, None)
    assert body["finishedAt"] and body["cancelRequestedAt"]
    row = await stored(runtime, tenant, job["jobId"])
    assert (row.status, row.cancel_requested, row.lease_owner) == ("canceled", True, None)
    [audit] = await audit_rows(runtime, tenant, "job.cancel")
    assert (audit.result_status, audit.target, audit.reason, audit.ticket) == (200, job["jobId"], "test run", "OPS-7")
    # nothing claims it any more
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        assert await claim(session, worker_id=WORKER, job_types=["demo.noop"], limit=5, lease_seconds=60,
                           now=datetime.now(UTC) + timedelta(days=2000), tenants=(tid,)) == []


async def test_cancel_of_a_running_job_asks_its_worker_to_stop_and_it_ends_canceled(client, factory, runtime, source):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    running = await take(runtime, tenant)
    response = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["waitingReason"]) == ("cancel_requested", None) and body["cancelRequestedAt"]
    again = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
    assert again.status_code == 202 and again.json()["cancelRequestedAt"] == body["cancelRequestedAt"]
    # the job still holds its quota slot and lease until its worker stops it
    row = await stored(runtime, tenant, job["jobId"])
    assert (row.status, row.lease_owner) == ("cancel_requested", WORKER)
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    assert summary["overall"]["cancelRequested"] == 1 and summary["overall"]["total"] == 1
    async with runtime.sessions() as session:
        held = await outcomes.heartbeat(session, WORKER, [running], 60)
        assert held == {(running.tenant_id, running.job_id): True}  # the heartbeat tells it to stop
        assert await outcomes.cancel(session, WORKER, running)
    row = await stored(runtime, tenant, job["jobId"])
    assert (row.status, row.lease_owner, row.finished_at is not None) == ("canceled", None, True)
    assert [a.result_status for a in await audit_rows(runtime, tenant, "job.cancel")] == [202, 202]
    assert_problem(await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant)), 409, "job_not_active")


async def test_a_worker_stopping_after_a_cancel_request_ends_the_job_canceled_not_pending(
    client, factory, runtime, source
):
    """A worker that shuts down gives its jobs back (pending again), but not one whose cancel was
    requested: given back, no worker would claim it and no cancel would end it."""
    tenant, source_id = source
    asked = await submit(client, factory, tenant, source_id)
    other = await submit(client, factory, tenant, source_id)
    running = [await take(runtime, tenant), await take(runtime, tenant)]
    response = await client.post(cancel_path(asked["jobId"]), headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    async with runtime.sessions() as session:
        assert await outcomes.release(session, WORKER, running) == 2
    ended = await stored(runtime, tenant, asked["jobId"])
    given_back = await stored(runtime, tenant, other["jobId"])
    assert (ended.status, ended.lease_owner, ended.finished_at is not None) == ("canceled", None, True)
    assert (given_back.status, given_back.lease_owner, given_back.cancel_requested) == ("pending", None, False)


async def test_canceling_a_replay_job_returns_its_entry_to_pending(client, factory, runtime, backend):
    """A canceled replay did not happen: its entry is pending again, to be replayed or discarded
    (whichever path canceled the job: here the route, and a worker's heartbeat)."""
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 2, error_code="E_CANCELED_REPLAY")
    replays = []
    for entry in entries:
        replayed = await client.post(f"/jobengine/deadletter/{entry.entry_id}/replay", headers=factory.headers(tenant))
        assert replayed.status_code == 202, replayed.text
        replays.append(replayed.json()["jobId"])
    # the first: canceled while it waits
    assert (await client.post(cancel_path(replays[0]), headers=factory.headers(tenant))).status_code == 200
    # the second: running, canceled at its worker's heartbeat
    running = await take(runtime, tenant, job_type=entries[1].job_type)
    assert running.job_id == replays[1]
    assert (await client.post(cancel_path(replays[1]), headers=factory.headers(tenant))).status_code == 202
    async with runtime.sessions() as session:
        assert await outcomes.cancel(session, WORKER, running)
    for entry in entries:
        read = await client.get(f"/jobengine/deadletter/{entry.entry_id}", headers=factory.headers(tenant))
        assert read.json()["status"] == "pending", read.text
        discarded = await client.post(f"/jobengine/deadletter/{entry.entry_id}/discard", headers=factory.headers(tenant))
        assert (discarded.status_code, discarded.json()["status"]) == (200, "discarded"), discarded.text
    stats = (await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant))).json()
    assert stats["byStatus"]["replaying"] == 0 and stats["byStatus"]["discarded"] == 2


async def test_cancel_of_a_leased_job_ends_it_when_its_worker_would_start_it(client, factory, runtime, source):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    leased = await take(runtime, tenant, start=False)
    response = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
    assert response.status_code == 202 and response.json()["status"] == "cancel_requested"
    async with runtime.sessions() as session:
        assert await outcomes.start(session, WORKER, [leased], datetime.now(UTC)) == []  # not started
    assert (await stored(runtime, tenant, job["jobId"])).status == "canceled"


@pytest.mark.parametrize("retryable", [True, False])
async def test_a_failure_after_the_cancel_request_ends_the_job_canceled_neither_retried_nor_dead_lettered(
    client, factory, runtime, source, retryable
):
    from app.engine.handlers import JobFailure

    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    running = await take(runtime, tenant)
    assert (await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))).status_code == 202
    failure = JobFailure("x.y", "transient", "stopped", retryable=retryable)
    async with runtime.sessions() as session:
        status = await outcomes.fail(session, WORKER, running, failure, backoff_base=0, backoff_max=0)
    assert status == "canceled"
    assert (await stored(runtime, tenant, job["jobId"])).status == "canceled"
    detail = (await client.get(f"/jobengine/jobs/{job['jobId']}", headers=factory.headers(tenant))).json()
    assert detail["deadLetterEntryId"] is None


async def test_the_reconciler_forces_a_cancel_no_worker_carried_out_after_the_grace_period(
    client, factory, runtime, source
):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    running = await take(runtime, tenant)
    response = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
    asked = datetime.fromisoformat(response.json()["cancelRequestedAt"])
    async with runtime.sessions() as session:
        workspace = (await session.execute(select(Tenant.workspace_id).where(Tenant.key == tenant))).scalar_one()
    within = asked + timedelta(seconds=CANCEL_GRACE_SECONDS - 1)
    assert await force_overdue_job_cancels(runtime, within, CANCEL_GRACE_SECONDS, [workspace]) == 0
    assert (await stored(runtime, tenant, job["jobId"])).status == "cancel_requested"
    past = asked + timedelta(seconds=CANCEL_GRACE_SECONDS)
    assert await force_overdue_job_cancels(runtime, past, CANCEL_GRACE_SECONDS, [workspace]) == 1
    row = await stored(runtime, tenant, job["jobId"])
    assert (row.status, row.lease_owner, row.last_error_code) == ("canceled", None, "job.cancel_forced")
    async with runtime.sessions() as session:  # the worker's late outcome changes nothing
        assert not await outcomes.succeed(session, WORKER, running)
    assert (await stored(runtime, tenant, job["jobId"])).status == "canceled"


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled", "timed_out"])
async def test_cancel_of_a_job_that_ended_is_409_and_changes_nothing(client, factory, runtime, source, status):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    await set_status(runtime, tenant, job["jobId"], status)
    before = await snapshot(runtime, tenant)
    problem = assert_problem(await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant)), 409,
                             "job_not_active")
    assert status in problem["detail"]
    assert await snapshot(runtime, tenant) == before
    [audit] = await audit_rows(runtime, tenant, "job.cancel")
    assert audit.result_status == 409


async def test_cancel_of_another_tenants_or_projects_job_is_404_and_leaves_it_waiting(client, factory, runtime):
    owner, other = await factory.tenant(), await factory.tenant()
    source = await factory.source(client, owner, projectId="billing")
    job = await submit(client, factory, owner, source["sourceId"])
    for tenant, project in ((other, None), (owner, "scanner")):
        response = await client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant, project=project))
        assert_problem(response, 404, "not_found")
    assert_problem(await client.post(cancel_path("no-such-job"), headers=factory.headers(owner)), 404, "not_found")
    assert (await stored(runtime, owner, job["jobId"])).status == "pending"


async def test_cancel_needs_the_operate_scope_and_a_reason(client, factory, runtime, source):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    path = cancel_path(job["jobId"])
    assert_problem(await client.post(path, headers=factory.headers(tenant, scope="orch:read orch:submit")), 403,
                   "insufficient_scope")
    assert_problem(await client.post(path, headers=factory.headers(tenant, reason=None)), 400, "operator_reason_required")
    assert (await stored(runtime, tenant, job["jobId"])).status == "pending"


async def test_idempotency_key_answers_the_first_cancel_again(client, factory, runtime, source):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    headers = {**factory.headers(tenant), "Idempotency-Key": "cancel-once"}
    first = await client.post(cancel_path(job["jobId"]), headers=headers)
    second = await client.post(cancel_path(job["jobId"]), headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()


async def test_two_concurrent_cancels_of_a_waiting_job_one_cancels_the_other_is_409(client, factory, runtime, source):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    answers = await asyncio.gather(*(client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
                                     for _ in range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert (await stored(runtime, tenant, job["jobId"])).status == "canceled"


async def test_two_concurrent_cancels_of_a_running_job_both_answer_202_with_one_request(
    client, factory, runtime, source
):
    tenant, source_id = source
    job = await submit(client, factory, tenant, source_id)
    await take(runtime, tenant)
    answers = await asyncio.gather(*(client.post(cancel_path(job["jobId"]), headers=factory.headers(tenant))
                                     for _ in range(2)))
    assert [a.status_code for a in answers] == [202, 202]
    assert len({a.json()["cancelRequestedAt"] for a in answers}) == 1
    assert (await stored(runtime, tenant, job["jobId"])).status == "cancel_requested"


async def test_cancel_of_a_pack_step_ends_its_pack_run(client, factory, runtime, source):
    tenant, source_id = source
    body = {"packName": "nightly", "packVersion": "1.0.0", "sourceId": source_id,
            "steps": [{"jobType": "demo.noop"}, {"jobType": "demo.noop"}]}
    pack = (await client.post("/jobengine/pack-runs", json=body, headers=factory.headers(tenant, reason=None))).json()
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        steps = list((await session.execute(
            select(Job).where(Job.tenant_id == tid, Job.pack_run_id == pack["packRunId"]).order_by(Job.step_index)
        )).scalars())
    response = await client.post(cancel_path(steps[0].job_id), headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    async with runtime.sessions() as session:
        run = (await session.execute(select(PackRun).where(PackRun.pack_run_id == pack["packRunId"]))).scalar_one()
        statuses = [s for (s,) in await session.execute(
            select(Job.status).where(Job.tenant_id == tid, Job.pack_run_id == pack["packRunId"]).order_by(Job.step_index)
        )]
    assert (run.status, statuses) == ("canceled", ["canceled", "canceled"])

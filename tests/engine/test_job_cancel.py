"""Job cancel, workers and waiting reasons through real worker processes on PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from app.engine.reconciler import CANCEL_GRACE_SECONDS, reconcile_once
from app.storage.models import Tenant
from tests.engine.conftest import FAST, eventually
from tests.engine.handlers import read_log
from tests.engine.support import job, submit

HEARTBEAT = float(FAST["JOBGATE_WORKER_HEARTBEAT_SECONDS"])


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def status_of(runtime, tenant, job_id, *wanted):
    row = await job(runtime, tenant, job_id)
    return row if row.status in wanted else None


async def listed_workers(client, factory, tenant) -> list[str]:
    response = await client.get("/jobengine/workers", headers=factory.headers(tenant, scope="orch:operate"))
    assert response.status_code == 200, response.text
    return [w["workerId"] for w in response.json()["items"]]


async def test_cancel_of_a_running_sleep_stops_it_within_one_heartbeat(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    sleeping = await submit(client, factory, tenant, source["sourceId"], "demo.sleep", payload={"seconds": 60})
    worker = workers(tenant)
    await eventually(lambda: status_of(runtime, tenant, sleeping["jobId"], "running"))
    response = await client.post(f"/jobengine/jobs/{sleeping['jobId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancel_requested"
    done = await eventually(lambda: status_of(runtime, tenant, sleeping["jobId"], "canceled"), interval=0.02)
    # stopped at the worker's next heartbeat after the request
    assert 0 <= (done.finished_at - instant(response.json()["cancelRequestedAt"])).total_seconds() < 2 * HEARTBEAT
    assert (done.lease_owner, done.attempt) == (None, 1)
    # the worker is unharmed and runs the next job
    after = await submit(client, factory, tenant, source["sourceId"], "demo.noop")
    await eventually(lambda: status_of(runtime, tenant, after["jobId"], "succeeded"))
    assert worker.process.poll() is None


async def test_the_running_handler_is_cancelled_not_left_to_finish(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    recorded = await submit(client, factory, tenant, source["sourceId"], "test.record",
                            payload={"log": log_path, "seconds": 60})
    workers(tenant)
    await eventually(lambda: _started(log_path))
    response = await client.post(f"/jobengine/jobs/{recorded['jobId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 202
    await eventually(lambda: status_of(runtime, tenant, recorded["jobId"], "canceled"))
    assert [r[0] for r in read_log(log_path)] == ["start"]  # it never reached its end


async def _started(path):
    return any(r[0] == "start" for r in read_log(path))


async def test_a_cancel_the_killed_worker_never_carried_out_is_forced_by_the_reconciler(
    client, factory, runtime, workers, log_path
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    recorded = await submit(client, factory, tenant, source["sourceId"], "test.record",
                            payload={"log": log_path, "seconds": 60})
    worker = workers(tenant, JOBGATE_WORKER_LEASE_SECONDS="600")
    await eventually(lambda: status_of(runtime, tenant, recorded["jobId"], "running"))
    worker.kill()
    response = await client.post(f"/jobengine/jobs/{recorded['jobId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 202
    asked = instant(response.json()["cancelRequestedAt"])
    async with runtime.sessions() as session:
        workspace = (await session.execute(select(Tenant.workspace_id).where(Tenant.key == tenant))).scalar_one()
    early = await reconcile_once(runtime, asked + timedelta(seconds=CANCEL_GRACE_SECONDS - 1), workspace_ids=[workspace])
    assert early["canceled_jobs"] == 0
    assert (await job(runtime, tenant, recorded["jobId"])).status == "cancel_requested"
    forced = await reconcile_once(runtime, asked + timedelta(seconds=CANCEL_GRACE_SECONDS), workspace_ids=[workspace])
    assert forced["canceled_jobs"] == 1
    row = await job(runtime, tenant, recorded["jobId"])
    assert (row.status, row.lease_owner, row.last_error_code) == ("canceled", None, "job.cancel_forced")


async def test_workers_lists_a_running_worker_until_it_stops_or_misses_three_heartbeats(
    client, factory, runtime, workers
):
    tenant = await factory.tenant()
    stopping, killed = workers(tenant, concurrency=3), workers(tenant, concurrency=2)
    await stopping.ready()
    await killed.ready()
    listed = await eventually(lambda: _both(client, factory, tenant, stopping.worker_id, killed.worker_id))
    first = next(w for w in listed if w["workerId"] == stopping.worker_id)
    assert first["concurrency"] == 3 and {"demo.noop", "demo.sleep", "test.record"} <= set(first["jobTypes"])
    assert first["pid"] == stopping.process.pid
    assert [w["workerId"] for w in listed] == sorted(w["workerId"] for w in listed)
    # another tenant sees neither: they claim only this tenant's jobs
    other = await factory.tenant()
    assert not {stopping.worker_id, killed.worker_id} & set(await listed_workers(client, factory, other))

    assert stopping.terminate() == 0  # a graceful stop deregisters at once
    assert stopping.worker_id not in await listed_workers(client, factory, tenant)
    killed.kill()  # no deregistration: gone after three missed heartbeats
    await eventually(lambda: _absent(client, factory, tenant, killed.worker_id), timeout=3 * HEARTBEAT + 5)


async def _both(client, factory, tenant, *ids):
    response = await client.get("/jobengine/workers", headers=factory.headers(tenant, scope="orch:operate"))
    items = [w for w in response.json()["items"] if w["workerId"] in ids]
    return items if len(items) == len(ids) else None


async def _absent(client, factory, tenant, worker_id):
    return worker_id not in await listed_workers(client, factory, tenant)


async def test_a_job_waits_for_a_worker_once_the_only_worker_of_its_type_was_killed(client, factory, runtime, workers):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    before = await submit(client, factory, tenant, source["sourceId"], "demo.noop")
    assert before["waitingReason"] == "no_worker_for_job_type"  # (the warning looks back an hour: other tests' workers)
    worker = workers(tenant)
    await eventually(lambda: status_of(runtime, tenant, before["jobId"], "succeeded"))
    worker.kill()
    waiting = await submit(client, factory, tenant, source["sourceId"], "demo.noop")
    assert waiting["warnings"] == []  # a worker served the type within the hour

    async def reason():
        response = await client.get(f"/jobengine/jobs/{waiting['jobId']}", headers=factory.headers(tenant))
        return response.json()["waitingReason"] == "no_worker_for_job_type"

    await eventually(reason, timeout=3 * HEARTBEAT + 5)
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    [noop] = [t for t in summary["byJobType"] if t["jobType"] == "demo.noop"]
    assert (noop["waiting"]["jobs"], noop["waiting"]["reason"]) == (1, "no_worker_for_job_type")

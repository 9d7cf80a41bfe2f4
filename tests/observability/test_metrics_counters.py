"""The counters and gauges behind /metrics move where the work happens: refused credentials,
the rate limit, dead-lettering, worker outcomes, the replay runner, the reconciler, and the job
gauges read from the database."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from prometheus_client import REGISTRY

from app.domain.jobs.service import live_counts
from app.engine.config import load_worker_config
from app.engine.handlers import load_handlers
from app.engine.reconciler import reconcile_once
from app.engine.replays import advance_replays
from app.engine.worker import Worker
from app.metrics import MAX_JOB_TYPE_LABELS, JobGauges, open_label
from app.storage.models import DeadLetterEntry, OperationRun
from app.thresholds import DEFAULTS
from tests.conftest import make_app, serving
from tests.observability.support import samples
from tests.operations.support import add_run, tenant_of

SOURCES = "/jobengine/sources"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_refused_credentials_are_counted_by_reason(client, factory, keys):
    tenant = await factory.tenant()
    before = {reason: value("jobgate_auth_failures_total", reason=reason) for reason in ("missing", "malformed")}
    await client.get(SOURCES, headers={"X-Stella-Tenant": tenant})
    await client.get(SOURCES, headers={"X-Stella-Tenant": tenant, "Authorization": "Basic abc"})
    await client.get(SOURCES, headers={"X-Stella-Tenant": tenant, "Authorization": "Basic abc"})
    after = {reason: value("jobgate_auth_failures_total", reason=reason) for reason in before}
    assert {reason: after[reason] - before[reason] for reason in before} == {"missing": 1, "malformed": 2}


async def test_requests_refused_by_the_rate_limit_are_counted(gateway_env, factory):
    tenant = await factory.tenant()
    before = value("jobgate_rate_limited_total")
    async with serving(make_app(gateway_env, JOBGATE_RATE_LIMIT="2/hour")) as limited:
        statuses = [(await limited.get(SOURCES, headers=factory.headers(tenant))).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    assert value("jobgate_rate_limited_total") - before == 3


async def test_request_metrics_are_labelled_by_route_template_on_the_metrics_page(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    await client.get(f"{SOURCES}/{source['sourceId']}", headers=factory.headers(tenant))
    page = (await client.get("/metrics")).text
    routes = {dict(labels)["route"] for labels in samples(page, "jobgate_requests_total")}
    assert f"{SOURCES}/{{sourceId}}" in routes
    assert source["sourceId"] not in page and tenant not in page


async def _run_worker_until(runtime, tenant: str, done) -> None:  # type: ignore[no-untyped-def]
    config = load_worker_config({"JOBGATE_WORKER_POLL_SECONDS": "0.05", "JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS": "1"})
    worker = Worker(runtime, config, load_handlers(()), concurrency=2, tenants=(tenant,), steps=[])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 20
    try:
        while not await done():
            assert time.monotonic() < deadline, "the worker did not get there in 20 s"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running


async def _entries(runtime, tenant: str) -> list[DeadLetterEntry]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    info = await tenant_of(runtime, tenant)
    async with runtime.sessions() as session:
        rows = await session.execute(select(DeadLetterEntry).where(DeadLetterEntry.tenant_id == info.id))
        return list(rows.scalars())


async def test_dead_lettered_job_counts_the_inflow_and_the_workers_outcome(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    category = f"obs-{uuid.uuid4().hex[:8]}"  # a label of this test's own
    response = await client.post(
        "/jobengine/jobs",
        json={"jobType": "demo.fail", "sourceId": source["sourceId"], "maxAttempts": 1,
              "payload": {"errorCode": "obs.failed", "category": category, "retryable": False}},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    failed_before = value("jobgate_worker_jobs_total", job_type="demo.fail", outcome="failed")

    async def dead_lettered() -> bool:
        return bool(await _entries(runtime, tenant))

    await _run_worker_until(runtime, tenant, dead_lettered)
    assert value("jobgate_deadletter_entries_total", job_type="demo.fail", category=category) == 1
    assert value("jobgate_worker_jobs_total", job_type="demo.fail", outcome="failed") - failed_before == 1


async def test_replay_runner_counts_the_entries_it_replays(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    submitted = await client.post(
        "/jobengine/jobs",
        json={"jobType": "demo.fail", "sourceId": source["sourceId"], "maxAttempts": 1,
              "payload": {"category": "obs", "retryable": False}},
        headers=factory.headers(tenant, reason=None),
    )
    assert submitted.status_code == 201

    async def dead_lettered() -> bool:
        return bool(await _entries(runtime, tenant))

    await _run_worker_until(runtime, tenant, dead_lettered)
    before = value("jobgate_replay_entries_total", outcome="replayed")
    started = await client.post(
        "/jobengine/deadletter/replay/pending",
        json={"filter": {"jobType": "demo.fail"}, "ratePerSecond": 100_000},
        headers=factory.headers(tenant),
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["operationRunId"]
    deadline = time.monotonic() + 20
    while True:
        await advance_replays(runtime)
        async with runtime.sessions() as session:
            run = await session.get(OperationRun, run_id)
        if run.status == "completed":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert run.summary_counts["replayed"] == 1
    # the runner serves every tenant's runs: at least this one was counted
    assert value("jobgate_replay_entries_total", outcome="replayed") - before >= 1


async def test_reconciler_actions_are_counted_as_its_summary_reports_them(factory, runtime):
    tenant = await tenant_of(runtime, await factory.tenant())
    stale = DEFAULTS["pack_run.execute"].reconcile_after_seconds + 60
    await add_run(runtime, tenant, status="running", age=stale, heartbeat_age=stale)
    before = value("jobgate_reconciler_actions_total", action="reconciled_run")
    summary = await reconcile_once(runtime, workspace_ids=[tenant.workspace_id])
    assert summary["reconciled_runs"] == 1
    assert value("jobgate_reconciler_actions_total", action="reconciled_run") - before == 1


async def test_job_gauges_count_queued_and_running_jobs_per_type_and_are_cached(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    job_type = f"obs.gauge-{uuid.uuid4().hex[:8]}"  # no worker runs this type

    async def submit() -> None:
        response = await client.post(
            "/jobengine/jobs",
            json={"jobType": job_type, "sourceId": source["sourceId"]},
            headers=factory.headers(tenant, reason=None),
        )
        assert response.status_code == 201

    for _ in range(3):
        await submit()
    def live() -> Any:
        return live_counts(runtime.read_sessions)

    cached = JobGauges(ttl_seconds=3600)
    await cached.refresh(live)
    assert (cached.queued.get(job_type), cached.running.get(job_type)) == (3, None)
    await submit()
    await cached.refresh(live)  # within the cache time: no new query
    assert cached.queued[job_type] == 3
    fresh = JobGauges(ttl_seconds=0)
    await fresh.refresh(live)
    assert fresh.queued[job_type] == 4
    page = (await client.get("/metrics")).text
    assert "jobgate_jobs_queued" in page and "jobgate_jobs_running" in page


def test_open_label_values_beyond_the_bound_count_as_other():
    """Job types and error categories come from submitters and handlers: a process names the first
    MAX_JOB_TYPE_LABELS distinct values it sees and counts every later one as ``other``."""
    kind = f"kind-{uuid.uuid4().hex}"
    names = [f"type.{n}" for n in range(MAX_JOB_TYPE_LABELS)]
    assert [open_label(kind, name) for name in names] == names
    assert open_label(kind, "type.late") == "other"
    assert open_label(kind, names[7]) == names[7]  # a value already seen keeps its name
    assert open_label(f"{kind}-other-kind", "type.late") == "type.late"  # each kind is bounded alone

"""The workers registry as the tenant sees it (``GET /jobengine/workers``), why each job waits
(``waitingReason`` on the job list and detail, per-type counts in the job and quota summaries),
``deadLetterEntryId`` and the submission warnings. Worker rows are written through the registry the
worker processes use; each test's job types are its own, so no other test's workers serve them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from app.domain.jobs import waiting
from app.domain.workers import registry
from app.storage.models import Worker
from tests.actions.test_replay import assert_problem
from tests.api.rows import ago, tenant_rows, walk


def kind() -> str:
    return f"t{uuid.uuid4().hex[:10]}.work"


async def add_worker(runtime: Any, job_types: list[str], *, tenants: tuple[int, ...] | None, concurrency: int = 4,
                     running: int = 0, worker_id: str | None = None, heartbeat: float = 60.0) -> str:
    worker_id = worker_id or f"w-{uuid.uuid4().hex[:10]}"
    me = registry.Identity(worker_id, tuple(job_types), tenants, concurrency, heartbeat)
    async with runtime.sessions() as session:
        await registry.register(session, me)
        if running:
            await registry.beat(session, me, running)
    return worker_id


async def expire(runtime: Any, worker_id: str, *, seconds_ago: float) -> None:
    """The worker missed its heartbeats: it was last seen long enough ago to count as gone."""
    seen = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(Worker).where(Worker.worker_id == worker_id).values(last_seen_at=seen, expires_at=seen + timedelta(seconds=3))
        )


async def job_views(client: Any, factory: Any, tenant: str) -> dict[str, dict[str, Any]]:
    items = await walk(client, "/jobengine/jobs", factory.headers(tenant, reason=None))
    return {item["jobId"]: item for item in items}


# -- workers -------------------------------------------------------------------------------------


async def test_workers_lists_the_live_workers_that_may_run_the_tenants_jobs_ordered_by_id(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    other, other_rows = await tenant_rows(runtime, factory)
    types = [kind(), kind()]
    mine = [await add_worker(runtime, types, tenants=(rows.tenant_id,), worker_id=f"w-{tenant}-{n}", running=n)
            for n in (2, 1, 3)]
    theirs = await add_worker(runtime, types, tenants=(other_rows.tenant_id,), worker_id=f"w-{other}-1")
    gone = await add_worker(runtime, types, tenants=(rows.tenant_id,), worker_id=f"w-{tenant}-0")
    await expire(runtime, gone, seconds_ago=200)
    headers = factory.headers(tenant, scope="orch:operate")
    response = await client.get("/jobengine/workers", headers=headers)
    assert response.status_code == 200, response.text
    listed = [w for w in response.json()["items"] if w["workerId"].startswith(f"w-{tenant}")]
    assert [w["workerId"] for w in listed] == sorted(mine)
    first = listed[0]
    assert set(first) == {"workerId", "host", "pid", "jobTypes", "concurrency", "running", "startedAt", "lastSeenAt"}
    assert (first["jobTypes"], first["concurrency"], first["running"]) == (sorted(types), 4, 1)  # w-…-1
    assert first["pid"] > 0 and first["host"] and first["lastSeenAt"] >= first["startedAt"]
    everything = [w["workerId"] for w in response.json()["items"]]
    assert theirs not in everything and gone not in everything
    assert everything == sorted(everything)
    # paged in the same order
    assert [w["workerId"] for w in await walk(client, "/jobengine/workers", headers, limit=1)] == everything


async def test_a_worker_stopped_gracefully_is_gone_at_once(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    worker = await add_worker(runtime, [kind()], tenants=(rows.tenant_id,))
    headers = factory.headers(tenant, scope="orch:operate")
    assert worker in [w["workerId"] for w in (await client.get("/jobengine/workers", headers=headers)).json()["items"]]
    async with runtime.sessions() as session:
        await registry.deregister(session, worker)
    assert worker not in [w["workerId"] for w in (await client.get("/jobengine/workers", headers=headers)).json()["items"]]


async def test_a_worker_is_live_until_it_misses_three_heartbeats(client, factory, runtime):
    _, rows = await tenant_rows(runtime, factory)
    worker = await add_worker(runtime, [kind()], tenants=(rows.tenant_id,), heartbeat=2.0)
    async with runtime.sessions() as session:
        live = await registry.live(session, rows.tenant_id, datetime.now(UTC) + timedelta(seconds=5.9))
        gone = await registry.live(session, rows.tenant_id, datetime.now(UTC) + timedelta(seconds=6.1))
    assert worker in [w.worker_id for w in live] and worker not in [w.worker_id for w in gone]


async def test_workers_needs_the_operate_scope(client, factory):
    tenant = await factory.tenant()
    response = await client.get("/jobengine/workers", headers=factory.headers(tenant, scope="orch:read orch:quota"))
    assert_problem(response, 403, "insufficient_scope")


async def test_a_foreign_continuation_token_on_workers_is_400(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    other = await factory.tenant()
    for n in range(2):
        await add_worker(runtime, [kind()], tenants=(rows.tenant_id,), worker_id=f"w-{tenant}-{n}")
    first = (await client.get("/jobengine/workers", params={"limit": 1},
                              headers=factory.headers(tenant, scope="orch:operate"))).json()
    assert first["continuationToken"]
    response = await client.get("/jobengine/workers", params={"continuationToken": first["continuationToken"]},
                                headers=factory.headers(other, scope="orch:operate"))
    assert_problem(response, 400, "invalid_continuation_token")


# -- why a job waits ----------------------------------------------------------------------------


async def test_each_waiting_reason_is_reported_on_the_list_and_the_detail(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    served, capacity, paused, full, rated, free, unserved = (kind() for _ in range(7))
    await add_worker(runtime, [served, paused, full, rated, free], tenants=(rows.tenant_id,), concurrency=8, running=2)
    await add_worker(runtime, [capacity], tenants=(rows.tenant_id,), concurrency=2, running=2)
    enabled, disabled = rows.source(), rows.source(enabled=False)
    due = ago(seconds=30)
    pack = rows.pack_run(source_id=enabled.source_id)
    jobs = {
        "scheduled": rows.job(job_type=served, source_id=enabled.source_id, status="scheduled",
                              run_after=datetime.now(UTC) + timedelta(hours=1)),
        "pack_step_waiting": rows.job(job_type=served, source_id=enabled.source_id, pack_run_id=pack.pack_run_id,
                                      step_index=1, run_after=due),
        "first_step": rows.job(job_type=served, source_id=enabled.source_id, pack_run_id=pack.pack_run_id,
                               step_index=0, run_after=due, status="running"),
        "source_disabled": rows.job(job_type=served, source_id=disabled.source_id, run_after=due),
        "no_worker_for_job_type": rows.job(job_type=unserved, source_id=enabled.source_id, run_after=due),
        "quota_paused": rows.job(job_type=paused, source_id=enabled.source_id, run_after=due),
        "quota_max_active": rows.job(job_type=full, source_id=enabled.source_id, run_after=due),
        "full_running": rows.job(job_type=full, source_id=enabled.source_id, run_after=due, status="running"),
        "quota_rate": rows.job(job_type=rated, source_id=enabled.source_id, run_after=due),
        "rated_started": rows.job(job_type=rated, source_id=enabled.source_id, run_after=due, status="succeeded",
                                  started_at=ago(seconds=10)),
        "worker_capacity": rows.job(job_type=capacity, source_id=enabled.source_id, run_after=due),
        "nothing": rows.job(job_type=free, source_id=enabled.source_id, run_after=due),
        "failed": rows.job(job_type=free, source_id=enabled.source_id, status="failed"),
    }
    entry = rows.entry(job_id=jobs["failed"].job_id, job_type=free, source_id=enabled.source_id)
    await rows.add(
        enabled, disabled, pack, entry, *jobs.values(),
        rows.quota(paused, paused=True), rows.quota(full, max_active=1), rows.quota(rated, max_per_hour=1, burst=1),
    )
    expected = {
        "scheduled": "scheduled", "pack_step_waiting": "pack_step_waiting", "first_step": None,
        "source_disabled": "source_disabled", "no_worker_for_job_type": "no_worker_for_job_type",
        "quota_paused": "quota_paused", "quota_max_active": "quota_max_active", "full_running": None,
        "quota_rate": "quota_rate", "rated_started": None, "worker_capacity": "worker_capacity", "nothing": None,
        "failed": None,
    }
    listed = await job_views(client, factory, tenant)
    assert {name: listed[job.job_id]["waitingReason"] for name, job in jobs.items()} == expected
    for name, job in jobs.items():
        detail = (await client.get(f"/jobengine/jobs/{job.job_id}", headers=factory.headers(tenant))).json()
        assert detail["waitingReason"] == expected[name], name
        assert detail["deadLetterEntryId"] == (entry.entry_id if name == "failed" else None), name
    assert listed[jobs["failed"].job_id]["deadLetterEntryId"] == entry.entry_id

    # the summaries count the same reasons per job type
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    waiting = {t["jobType"]: t["waiting"] for t in summary["byJobType"]}
    assert (waiting[served]["jobs"], waiting[served]["reason"]) == (3, "scheduled")  # ties: the earlier reason
    assert {r: n for r, n in waiting[served]["byReason"].items() if n} == {
        "scheduled": 1, "pack_step_waiting": 1, "source_disabled": 1}
    for name in ("no_worker_for_job_type", "quota_paused", "quota_max_active", "quota_rate", "worker_capacity"):
        job_type = jobs[name].job_type
        assert (waiting[job_type]["jobs"], waiting[job_type]["reason"]) == (1, name)
    assert (waiting[free]["jobs"], waiting[free]["reason"], sum(waiting[free]["byReason"].values())) == (1, None, 0)
    quotas = (await client.get("/jobengine/quotas/summary", headers=factory.headers(tenant))).json()["items"]
    by_type = {q["jobType"]: q for q in quotas}
    for name in ("quota_paused", "quota_max_active", "quota_rate"):
        item = by_type[jobs[name].job_type]
        assert (item["waiting"]["jobs"], item["waiting"]["reason"]) == (1, name)
        assert item["backpressure"] != "none"


async def test_a_submissions_answer_says_why_the_job_waits_as_a_read_of_it_does(client, factory, runtime):
    """The answer to a submission derives its waitingReason and warning from fewer statements than a
    read: without Idempotency-Key the submission's one statement carries its type's facts (only a
    quota's counts are read after it), with one they are read in one statement after the insert.
    Both must say what a read of the job says, in every case the rule tells apart (on SQLite both
    requests take the second path)."""
    tenant, rows = await tenant_rows(runtime, factory)
    _, other_rows = await tenant_rows(runtime, factory)
    served, capacity, paused, full, rated, roomy, unserved, recent, stale, everyone, theirs = (
        kind() for _ in range(11))
    await add_worker(runtime, [served, paused, full, rated, roomy], tenants=(rows.tenant_id,), concurrency=8,
                     running=2)
    await add_worker(runtime, [capacity], tenants=(rows.tenant_id,), concurrency=2, running=2)
    await expire(runtime, await add_worker(runtime, [recent], tenants=(rows.tenant_id,)), seconds_ago=600)
    await expire(runtime, await add_worker(runtime, [stale], tenants=(rows.tenant_id,)), seconds_ago=2 * 3600)
    await add_worker(runtime, [theirs], tenants=(other_rows.tenant_id,))
    source, billing = rows.source(), rows.source(project_id="billing")
    await rows.add(
        source, billing,
        rows.job(job_type=full, source_id=source.source_id, status="running"),
        rows.job(job_type=rated, source_id=source.source_id, status="succeeded", started_at=ago(seconds=10)),
        rows.quota(paused, paused=True), rows.quota(full, max_active=1), rows.quota(rated, max_per_hour=1, burst=1),
        rows.quota(roomy, max_active=5),
    )
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    warned = ["no_worker_for_job_type"]
    cases = {  # (job type, runAfter, project): (waitingReason, warnings)
        (served, None, None): (None, []),  # a live worker with free slots
        (served, None, "billing"): (None, []),  # the same, for a project's caller
        (served, later, None): ("scheduled", []),
        (unserved, later, None): ("scheduled", warned),
        (capacity, None, None): ("worker_capacity", []),  # its one worker is full
        (paused, None, None): ("quota_paused", []),
        (full, None, None): ("quota_max_active", []),
        (rated, None, None): ("quota_rate", []),
        (roomy, None, None): (None, []),  # a quota with room: ranked below what it lets start
        (unserved, None, None): ("no_worker_for_job_type", warned),
        (recent, None, None): ("no_worker_for_job_type", []),  # seen within the hour, not live
        (stale, None, None): ("no_worker_for_job_type", warned),  # last seen two hours ago
        (everyone, None, None): (None, []),  # a worker that claims every tenant's jobs
        (theirs, None, None): ("no_worker_for_job_type", warned),  # only another tenant's worker
    }
    at_once = runtime.engine.dialect.name == "postgresql"
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    anyones = await add_worker(runtime, [everyone], tenants=None)  # every tenant sees it: stopped at the end
    event.listen(runtime.engine.sync_engine, "before_cursor_execute", record)
    try:
        for keyed in (False, True):
            for (job_type, run_after, project), (reason, warnings) in cases.items():
                body: dict[str, Any] = {"jobType": job_type, "sourceId": (billing if project else source).source_id}
                if run_after:
                    body["runAfter"] = run_after
                headers = factory.headers(tenant, reason=None, project=project)
                if keyed:
                    headers["Idempotency-Key"] = str(uuid.uuid4())
                statements.clear()
                answer = await client.post("/jobengine/jobs", json=body, headers=headers)
                assert answer.status_code == 201, answer.text
                [facts] = [s for s in statements if "FROM workers" in s]  # one read of the workers
                assert ("INSERT INTO jobs" in facts) is (at_once and not keyed), (job_type, keyed)
                submitted = answer.json()
                assert (submitted["waitingReason"], submitted["warnings"]) == (reason, warnings), (job_type, keyed)
                read = (await client.get(f"/jobengine/jobs/{submitted['jobId']}",
                                         headers=factory.headers(tenant))).json()
                assert read["waitingReason"] == submitted["waitingReason"], (job_type, keyed)
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", record)
        async with runtime.sessions() as session:
            await registry.deregister(session, anyones)


async def test_a_quota_with_room_for_some_holds_the_later_ranks_in_dispatch_order(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    job_type = kind()
    await add_worker(runtime, [job_type], tenants=(rows.tenant_id,), concurrency=50)
    source = rows.source()
    # max_active 3 with one running: two start, the other three wait on the concurrency limit
    jobs = [rows.job(job_type=job_type, source_id=source.source_id, priority=p, run_after=ago(minutes=5 - p))
            for p in range(5)]
    running = rows.job(job_type=job_type, source_id=source.source_id, status="running")
    await rows.add(source, *jobs, running, rows.quota(job_type, max_active=3))
    listed = await job_views(client, factory, tenant)
    # dispatch order: priority desc, so the last two built start first
    assert [listed[j.job_id]["waitingReason"] for j in jobs] == ["quota_max_active"] * 3 + [None, None]
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    [typed] = [t for t in summary["byJobType"] if t["jobType"] == job_type]
    assert (typed["waiting"]["jobs"], typed["waiting"]["reason"], typed["waiting"]["byReason"]["quota_max_active"]) == (
        5, "quota_max_active", 3)


async def test_past_the_head_of_a_queue_the_summaries_count_the_waiting_jobs_without_a_reason(
    client, factory, runtime, monkeypatch
):
    """The summaries read why the first ``waiting.HEAD`` due waiting jobs of a type wait (here 3), in
    dispatch order; the due jobs after them are counted in ``jobs`` and ``unattributed`` only."""
    monkeypatch.setattr(waiting, "HEAD", 3)
    tenant, rows = await tenant_rows(runtime, factory)
    job_type = kind()
    await add_worker(runtime, [job_type], tenants=(rows.tenant_id,), concurrency=50)
    enabled, disabled = rows.source(), rows.source(enabled=False)
    # dispatch order by priority: one starts (max_active 1), two wait on the quota — the head; then a
    # job of a disabled source and three more the quota holds; one job is not due yet
    due = [
        rows.job(job_type=job_type, source_id=(disabled if p == 6 else enabled).source_id, priority=p,
                 run_after=ago(minutes=1))
        for p in range(9, 2, -1)
    ]
    later = rows.job(job_type=job_type, source_id=enabled.source_id, status="scheduled",
                     run_after=datetime.now(UTC) + timedelta(hours=1))
    await rows.add(enabled, disabled, *due, later, rows.quota(job_type, max_active=1))
    # each job's own reason is read whole, whatever its place
    listed = await job_views(client, factory, tenant)
    assert [listed[j.job_id]["waitingReason"] for j in due] == [None] + ["quota_max_active"] * 2 + [
        "source_disabled"] + ["quota_max_active"] * 3
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    [typed] = summary["byJobType"]
    expected = {"jobs": 8, "reason": "quota_max_active", "unattributed": 4}
    assert {k: typed["waiting"][k] for k in expected} == expected
    assert {r: n for r, n in typed["waiting"]["byReason"].items() if n} == {"quota_max_active": 2, "scheduled": 1}
    quotas = (await client.get("/jobengine/quotas/summary", headers=factory.headers(tenant))).json()["items"]
    [item] = [q for q in quotas if q["jobType"] == job_type]
    assert item["waiting"] == typed["waiting"]
    assert item["backpressure"] != "none"
    # narrowed to the disabled source: its one job is past the head, so it is counted, not attributed
    narrowed = (await client.get("/jobengine/jobs/summary", params={"sourceId": disabled.source_id},
                                 headers=factory.headers(tenant))).json()
    [typed] = narrowed["byJobType"]
    assert (typed["waiting"]["jobs"], typed["waiting"]["reason"], typed["waiting"]["unattributed"]) == (1, None, 1)
    assert sum(typed["waiting"]["byReason"].values()) == 0
    # with the head long enough, the same summary attributes every job
    monkeypatch.setattr(waiting, "HEAD", 500)
    summary = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    [typed] = summary["byJobType"]
    assert (typed["waiting"]["jobs"], typed["waiting"]["unattributed"]) == (8, 0)
    assert {r: n for r, n in typed["waiting"]["byReason"].items() if n} == {
        "quota_max_active": 5, "source_disabled": 1, "scheduled": 1}


async def test_a_killed_worker_leaves_its_job_types_without_a_worker_after_its_heartbeat_window(
    client, factory, runtime
):
    tenant, rows = await tenant_rows(runtime, factory)
    job_type = kind()
    worker = await add_worker(runtime, [job_type], tenants=(rows.tenant_id,), heartbeat=1.0)
    source = rows.source()
    job = rows.job(job_type=job_type, source_id=source.source_id, run_after=ago(seconds=1))
    await rows.add(source, job)
    assert (await job_views(client, factory, tenant))[job.job_id]["waitingReason"] is None
    await expire(runtime, worker, seconds_ago=3.5)  # three heartbeats (1 s each) missed
    assert (await job_views(client, factory, tenant))[job.job_id]["waitingReason"] == "no_worker_for_job_type"


async def test_a_worker_of_another_tenant_does_not_serve_this_tenants_jobs(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    _, other_rows = await tenant_rows(runtime, factory)
    job_type = kind()
    await add_worker(runtime, [job_type], tenants=(other_rows.tenant_id,))
    source = rows.source()
    job = rows.job(job_type=job_type, source_id=source.source_id, run_after=ago(seconds=1))
    await rows.add(source, job)
    assert (await job_views(client, factory, tenant))[job.job_id]["waitingReason"] == "no_worker_for_job_type"


# -- submission warnings -----------------------------------------------------------------------


async def test_submitting_a_job_type_no_worker_served_in_the_last_hour_warns_but_queues_it(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    source = await factory.source(client, tenant)
    served, stale, unserved = kind(), kind(), kind()
    await add_worker(runtime, [served], tenants=(rows.tenant_id,))
    gone = await add_worker(runtime, [stale], tenants=(rows.tenant_id,))
    await expire(runtime, gone, seconds_ago=2 * 3600)

    async def submit(job_type: str) -> dict[str, Any]:
        response = await client.post("/jobengine/jobs", json={"jobType": job_type, "sourceId": source["sourceId"]},
                                     headers=factory.headers(tenant, reason=None))
        assert response.status_code == 201, response.text
        return response.json()

    assert (await submit(served))["warnings"] == []
    for job_type in (stale, unserved):
        body = await submit(job_type)
        assert (body["warnings"], body["status"], body["waitingReason"]) == (
            ["no_worker_for_job_type"], "pending", "no_worker_for_job_type")
    # a worker seen within the hour still counts, even once it is gone
    recent = await add_worker(runtime, [stale], tenants=(rows.tenant_id,))
    await expire(runtime, recent, seconds_ago=600)
    assert (await submit(stale))["warnings"] == []
    # the reads carry no warnings
    detail = (await client.get(f"/jobengine/jobs/{(await submit(served))['jobId']}", headers=factory.headers(tenant)))
    assert "warnings" not in detail.json()


@pytest.mark.parametrize("path", ["/jobengine/jobs/{id}", "/jobengine/jobs/{id}/cancel"])
async def test_other_tenants_job_is_404_on_the_job_routes(client, factory, runtime, path):
    owner, rows = await tenant_rows(runtime, factory)
    other = await factory.tenant()
    source = rows.source()
    job = rows.job(source_id=source.source_id)
    await rows.add(source, job)
    url = path.format(id=job.job_id)
    call = client.post if path.endswith("cancel") else client.get
    assert_problem(await call(url, headers=factory.headers(other)), 404, "not_found")
    assert (await call(url, headers=factory.headers(owner))).status_code in (200, 202)


async def test_a_projects_waiting_counts_rank_its_jobs_among_the_whole_tenants(client, factory, runtime):
    """Quotas are the tenant's: a project's jobs are held by their rank among all the tenant's jobs."""
    tenant, rows = await tenant_rows(runtime, factory)
    job_type = kind()
    await add_worker(runtime, [job_type], tenants=(rows.tenant_id,), concurrency=50)
    billing, scanner = rows.source(project_id="billing"), rows.source(project_id="scanner")
    # dispatch order by priority: billing (rank 0), scanner (1), billing (2), scanner (3); two may start
    jobs = [
        rows.job(job_type=job_type, source_id=source.source_id, project_id=source.project_id, priority=10 - rank)
        for rank, source in enumerate((billing, scanner, billing, scanner))
    ]
    await rows.add(billing, scanner, *jobs, rows.quota(job_type, max_active=2))
    headers = factory.headers(tenant, project="billing")
    summary = (await client.get("/jobengine/jobs/summary", headers=headers)).json()
    [typed] = summary["byJobType"]
    assert (typed["waiting"]["jobs"], typed["waiting"]["reason"]) == (2, "quota_max_active")
    assert {r: n for r, n in typed["waiting"]["byReason"].items() if n} == {"quota_max_active": 1}
    listed = {j["jobId"]: j["waitingReason"] for j in await walk(client, "/jobengine/jobs", headers)}
    assert listed == {jobs[0].job_id: None, jobs[2].job_id: "quota_max_active"}

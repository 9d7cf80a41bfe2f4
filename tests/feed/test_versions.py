"""Every write path advances the tenant's versions of the collections it touches, in its own
transaction: triggers on the collection tables (migration 0011) write the sequence, the kinds'
versions and one event per changed object, whatever wrote the row."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import inspect, text

from app.engine.config import load_worker_config
from app.engine.handlers import load_handlers
from app.engine.reconciler import reconcile_once
from app.engine.worker import Worker
from app.storage.feed import KINDS, changes_after, versions_of
from tests.actions.test_replay import dead_letters
from tests.actions.test_replay_runs import cancel_path, run_path, slow_run
from tests.api.rows import Rows
from tests.operations.support import add_run

# Tables a tenant's views do not show (bookkeeping of the gateway itself), or kept by triggers from
# a watched table (the dead-letter aggregates follow dead_letter_entries).
NOT_COLLECTIONS = {"tenants", "idempotency_records", "feed_versions", "feed_events", "feed_pending", "dead_letter_counts",
                   "dead_letter_clusters", "dead_letter_groups", "job_counts", "workspaces", "alembic_version"}


async def versions(runtime: Any, tenant: str) -> dict[str, int]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        return await versions_of(session, info.id)


def advanced(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {kind for kind, version in after.items() if version > before.get(kind, 0)}


async def test_every_table_with_a_tenant_has_the_feed_triggers(client, runtime, backend):
    async with runtime.engine.connect() as connection:
        tables = await connection.run_sync(
            lambda sync: {
                name: {c["name"] for c in inspect(sync).get_columns(name)} for name in inspect(sync).get_table_names()
            }
        )
        if backend == "postgresql":
            rows = await connection.execute(
                text("SELECT event_object_table, tgname FROM pg_trigger t JOIN information_schema.triggers i "
                     "ON i.trigger_name = t.tgname WHERE tgname LIKE 'feed_%'")
            )
        else:
            rows = await connection.execute(text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' "
                                                 "AND name LIKE 'feed_%'"))
        triggers: dict[str, set[str]] = {}
        for table, name in rows:
            triggers.setdefault(table, set()).add(name.rsplit("_", 1)[1])
    collections = {name for name, columns in tables.items() if "tenant_id" in columns} - NOT_COLLECTIONS
    assert collections >= {"sources", "quotas", "jobs", "dead_letter_entries", "pack_runs", "operation_runs",
                           "audit_log"}
    missing = {table: {"insert", "update", "delete"} - triggers.get(table, set()) for table in collections}
    missing["audit_log"] -= {"update", "delete"}  # append-only: refused by its own triggers
    # the workers belong to no tenant: their triggers announce a change to every tenant that sees it
    missing["workers"] = {"insert", "update", "delete"} - triggers.get("workers", set())
    assert {table: events for table, events in missing.items() if events} == {}


# -- every mutating route --------------------------------------------------------------------------

Recipe = Callable[[Any, Any, Any, str], Awaitable[tuple[str, str, Any]]]


async def _source(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return (await factory.source(client, tenant))["sourceId"]


async def _quota(client, factory, tenant, job_type: str = "scan") -> str:  # type: ignore[no-untyped-def]
    body = {"jobType": job_type, "maxActive": 5, "maxPerHour": 100, "burst": 10}
    response = await client.post("/jobengine/quotas", json=body, headers=factory.headers(tenant))
    assert response.status_code == 201, response.text
    return response.json()["quotaId"]


async def _entry(runtime, tenant) -> str:  # type: ignore[no-untyped-def]
    (entry,) = await dead_letters(runtime, tenant, 1, job_type="scan", error_code="E_WALK", project_id=None)
    return entry.entry_id


async def _pack(client, factory, runtime, tenant) -> str:  # type: ignore[no-untyped-def]
    source_id = await _source(client, factory, runtime, tenant)
    response = await client.post(
        "/jobengine/pack-runs",
        json={"packName": "p", "packVersion": "1", "sourceId": source_id, "steps": [{"jobType": "demo.noop"}]},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    return response.json()["packRunId"]


async def r_source_create(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", "/jobengine/sources", {"name": "n", "sourceType": "scanner"}


async def r_source_replace(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "PUT", f"/jobengine/sources/{await _source(client, factory, runtime, tenant)}", {
        "name": "renamed", "sourceType": "scanner"}


async def r_quota_create(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", "/jobengine/quotas", {"jobType": "walk", "maxActive": 1, "maxPerHour": 10, "burst": 1}


async def r_quota_replace(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "PUT", f"/jobengine/quotas/{await _quota(client, factory, tenant)}", {
        "maxActive": 2, "maxPerHour": 10, "burst": 1}


async def r_quota_delete(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "DELETE", f"/jobengine/quotas/{await _quota(client, factory, tenant)}", None


async def r_quota_pause(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", f"/jobengine/quotas/{await _quota(client, factory, tenant)}/pause", None


async def r_quota_resume(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    quota_id = await _quota(client, factory, tenant)
    response = await client.post(f"/jobengine/quotas/{quota_id}/pause", headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    return "POST", f"/jobengine/quotas/{quota_id}/resume", None


async def r_job_submit(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", "/jobengine/jobs", {"jobType": "demo.noop", "sourceId": await _source(client, factory, runtime, tenant)}


async def r_replay(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", f"/jobengine/deadletter/{await _entry(runtime, tenant)}/replay", None


async def r_replay_batch(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", "/jobengine/deadletter/replay/batch", {"entryIds": [await _entry(runtime, tenant)]}


async def r_replay_pending(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    await _entry(runtime, tenant)
    return "POST", "/jobengine/deadletter/replay/pending", {"filter": {"errorCode": "E_WALK"}}


async def r_discard(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", f"/jobengine/deadletter/{await _entry(runtime, tenant)}/discard", None


async def r_restore(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    entry_id = await _entry(runtime, tenant)
    response = await client.post(f"/jobengine/deadletter/{entry_id}/discard", headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    return "POST", f"/jobengine/deadletter/{entry_id}/restore", None


async def r_discard_batch(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", "/jobengine/deadletter/discard/batch", {"entryIds": [await _entry(runtime, tenant)]}


async def r_discard_pending(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    await _entry(runtime, tenant)
    return "POST", "/jobengine/deadletter/discard/pending", {"filter": {"errorCode": "E_WALK"}}


async def r_pack_submit(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    source_id = await _source(client, factory, runtime, tenant)
    return "POST", "/jobengine/pack-runs", {
        "packName": "p", "packVersion": "1", "sourceId": source_id, "steps": [{"jobType": "demo.noop"}]}


async def r_pack_cancel(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", f"/jobengine/pack-runs/{await _pack(client, factory, runtime, tenant)}/cancel", None


async def r_pack_retry(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    pack_run_id = await _pack(client, factory, runtime, tenant)
    response = await client.post(f"/jobengine/pack-runs/{pack_run_id}/cancel", headers=factory.headers(tenant))
    assert response.status_code in (200, 202), response.text
    return "POST", f"/jobengine/pack-runs/{pack_run_id}/retry", None


async def r_job_batch(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    source_id = await _source(client, factory, runtime, tenant)
    return "POST", "/jobengine/jobs/batch", {"jobs": [{"jobType": "demo.noop", "sourceId": source_id}] * 2}


async def r_job_cancel(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    body = {"jobType": "demo.noop", "sourceId": await _source(client, factory, runtime, tenant),
            "runAfter": "2999-01-01T00:00:00Z"}  # scheduled: no worker takes it first
    response = await client.post("/jobengine/jobs", json=body, headers=factory.headers(tenant, reason=None))
    assert response.status_code == 201, response.text
    return "POST", f"/jobengine/jobs/{response.json()['jobId']}/cancel", None


async def r_replay_run_cancel(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "POST", cancel_path(await slow_run(client, factory, runtime, tenant, 5)), None


async def r_replay_run_rate(client, factory, runtime, tenant):  # type: ignore[no-untyped-def]
    return "PATCH", run_path(await slow_run(client, factory, runtime, tenant, 5)), {"ratePerSecond": 2}


# (method, route) -> (how to call it, the kinds it must advance besides audit)
RECIPES: dict[tuple[str, str], tuple[Recipe, set[str]]] = {
    ("POST", "/jobengine/sources"): (r_source_create, {"source"}),
    ("PUT", "/jobengine/sources/{sourceId:str}"): (r_source_replace, {"source"}),
    ("POST", "/jobengine/quotas"): (r_quota_create, {"quota"}),
    ("PUT", "/jobengine/quotas/{quotaId:str}"): (r_quota_replace, {"quota"}),
    ("DELETE", "/jobengine/quotas/{quotaId:str}"): (r_quota_delete, {"quota"}),
    ("POST", "/jobengine/quotas/{quotaId:str}/pause"): (r_quota_pause, {"quota"}),
    ("POST", "/jobengine/quotas/{quotaId:str}/resume"): (r_quota_resume, {"quota"}),
    ("POST", "/jobengine/jobs"): (r_job_submit, {"job", "source"}),
    ("POST", "/jobengine/jobs/batch"): (r_job_batch, {"job", "source"}),
    ("POST", "/jobengine/jobs/{jobId:str}/cancel"): (r_job_cancel, {"job"}),
    ("POST", "/jobengine/deadletter/replays/{operationRunId:int}/cancel"): (r_replay_run_cancel, {"operation"}),
    ("PATCH", "/jobengine/deadletter/replays/{operationRunId:int}"): (r_replay_run_rate, {"operation"}),
    ("POST", "/jobengine/deadletter/{entryId:str}/replay"): (r_replay, {"deadletter", "job"}),
    ("POST", "/jobengine/deadletter/replay/batch"): (r_replay_batch, {"deadletter", "job", "operation"}),
    ("POST", "/jobengine/deadletter/replay/pending"): (r_replay_pending, {"operation"}),
    ("POST", "/jobengine/deadletter/{entryId:str}/discard"): (r_discard, {"deadletter"}),
    ("POST", "/jobengine/deadletter/{entryId:str}/restore"): (r_restore, {"deadletter"}),
    ("POST", "/jobengine/deadletter/discard/batch"): (r_discard_batch, {"deadletter"}),
    ("POST", "/jobengine/deadletter/discard/pending"): (r_discard_pending, {"deadletter", "operation"}),
    ("POST", "/jobengine/pack-runs"): (r_pack_submit, {"packrun", "job", "operation"}),
    ("POST", "/jobengine/pack-runs/{packRunId:str}/cancel"): (r_pack_cancel, {"packrun"}),
    ("POST", "/jobengine/pack-runs/{packRunId:str}/retry"): (r_pack_retry, {"packrun", "operation"}),
}


def mutating_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.opt.get("action")
        for method in handler.http_methods
    }


def test_every_mutating_route_has_a_walk_recipe(app):
    # A new mutating route needs a recipe below, so that the walk covers it too.
    assert mutating_routes(app) - set(RECIPES) == set()


@pytest.mark.parametrize("route", sorted(RECIPES), ids=lambda route: f"{route[0]} {route[1]}")
async def test_each_mutating_route_advances_the_versions_it_changes(client, factory, runtime, route):
    tenant = await factory.tenant()
    recipe, kinds = RECIPES[route]
    method, path, body = await recipe(client, factory, runtime, tenant)
    headers = factory.headers(tenant, reason=None if route in {("POST", "/jobengine/jobs"),
                                                                 ("POST", "/jobengine/pack-runs")} else "walk")
    before = await versions(runtime, tenant)
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code < 300, response.text
    after = await versions(runtime, tenant)
    assert advanced(before, after) >= kinds | {"", "audit"}
    # one event per changed object and statement, numbered by the tenant's sequence without a gap
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        changes = await changes_after(session, info.id, before.get("", 0))
    assert [c.seq for c in changes] == list(range(before.get("", 0) + 1, after[""] + 1))
    assert {c.kind for c in changes} >= kinds
    assert {c.kind for c in changes} <= set(KINDS)


async def test_a_refused_mutation_advances_only_the_audit(client, factory, runtime):
    tenant = await factory.tenant()
    before = await versions(runtime, tenant)
    response = await client.put("/jobengine/quotas/nope", json={"maxActive": 1, "maxPerHour": 1, "burst": 1},
                                headers=factory.headers(tenant))
    assert response.status_code == 404
    assert advanced(before, await versions(runtime, tenant)) == {"", "audit"}


async def test_a_rolled_back_write_advances_nothing(factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    before = await versions(runtime, tenant)
    async with runtime.sessions() as session:
        session.add(rows.source())
        await session.flush()
        await session.rollback()
    assert await versions(runtime, tenant) == before


# -- the engine: worker outcomes, the reconciler; and any other writer ----------------------------


async def test_worker_outcomes_advance_the_job_version(client, factory, runtime):
    tenant = await factory.tenant()
    source_id = (await factory.source(client, tenant))["sourceId"]
    submitted = await client.post("/jobengine/jobs", json={"jobType": "demo.noop", "sourceId": source_id},
                                  headers=factory.headers(tenant, reason=None))
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["jobId"]
    before = await versions(runtime, tenant)
    config = load_worker_config({"JOBGATE_WORKER_POLL_SECONDS": "0.05", "JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS": "1"})
    worker = Worker(runtime, config, load_handlers(()), concurrency=1, tenants=(tenant,), steps=[])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 20
    try:
        while True:
            job = (await client.get(f"/jobengine/jobs/{job_id}", headers=factory.headers(tenant))).json()
            if job["status"] == "succeeded":
                break
            assert time.monotonic() < deadline, "the worker did not finish the job in 20 s"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    after = await versions(runtime, tenant)
    assert {"job", "worker"} <= advanced(before, after)  # the worker registered and stopped, for this tenant
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        changes = await changes_after(session, info.id, before[""])
    assert {("job", job_id), ("worker", worker.worker_id)} <= {(c.kind, c.object_id) for c in changes}


async def test_the_reconciler_advances_the_operation_version_of_the_tenant_and_its_workspace(factory, runtime):
    tenant = await factory.tenant()
    info = await runtime.tenants.get(tenant)
    run_id = await add_run(runtime, info, status="running", age=86400 * 3, heartbeat_age=86400 * 3)
    before = await versions(runtime, tenant)
    summary = await reconcile_once(runtime, workspace_ids=[info.workspace_id])
    assert summary["reconciled_runs"] == 1
    after = await versions(runtime, tenant)
    assert "operation" in advanced(before, after)
    async with runtime.sessions() as session:
        changes = await changes_after(session, info.id, before[""])
    ids = {c.object_id for c in changes if c.kind == "operation"}
    assert str(run_id) in ids
    assert len(ids) >= 2  # and the workspace's housekeeping run, shown to each of its tenants


async def test_a_workspace_scoped_run_is_a_change_for_every_tenant_of_its_workspace(factory, runtime):
    workspace = f"ws-{uuid.uuid4().hex[:8]}"
    first, second = await factory.tenant(workspace), await factory.tenant(workspace)
    before = [await versions(runtime, first), await versions(runtime, second)]
    await add_run(runtime, await runtime.tenants.get(first), workspace_scoped=True)
    assert "operation" in advanced(before[0], await versions(runtime, first))
    assert "operation" in advanced(before[1], await versions(runtime, second))


async def test_rows_written_outside_the_gateway_advance_the_versions_too(factory, runtime):
    # the seed, a migration's data step or hand-written SQL: the triggers see every statement
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    before = await versions(runtime, tenant)
    await rows.add(rows.source(), rows.quota(job_type="x"))
    assert advanced(before, await versions(runtime, tenant)) == {"", "source", "quota"}
    before = await versions(runtime, tenant)
    async with runtime.sessions.begin() as session:
        await session.execute(text("UPDATE sources SET enabled = false WHERE tenant_id = :t"), {"t": rows.tenant_id})
        await session.execute(text("DELETE FROM quotas WHERE tenant_id = :t"), {"t": rows.tenant_id})
    assert advanced(before, await versions(runtime, tenant)) == {"", "source", "quota"}


async def test_the_reconciler_announces_a_run_that_became_stale_without_any_write(factory, runtime):
    from datetime import UTC, datetime

    from app.thresholds import DEFAULTS

    tenant = await factory.tenant()
    info = await runtime.tenants.get(tenant)
    heartbeat = DEFAULTS["pack_run.execute"].heartbeat_seconds
    now = datetime.now(UTC)
    just_stale = await add_run(runtime, info, status="running", age=heartbeat + 20, heartbeat_age=heartbeat + 10,
                               now=now)
    long_stale = await add_run(runtime, info, status="running", age=heartbeat + 900, heartbeat_age=heartbeat + 600,
                               now=now)
    fresh = await add_run(runtime, info, status="running", age=5, heartbeat_age=1, now=now)
    before = await versions(runtime, tenant)
    await reconcile_once(runtime, now, workspace_ids=[info.workspace_id])
    async with runtime.sessions() as session:
        changes = await changes_after(session, info.id, before[""])
    announced = {c.object_id for c in changes if c.kind == "operation"}
    assert str(just_stale) in announced
    assert str(long_stale) not in announced and str(fresh) not in announced

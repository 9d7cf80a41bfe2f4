"""Demo data (spec §9): repeatable, complete for every tenant, and faithful to the lifecycle of §7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.domain.deadletter.templates import error_template, template_hash
from app.domain.operations.ledger import PACK_RUN_TO_OPERATION
from app.seed import (
    DEMO_SLEEP_SECONDS,
    SOURCES,
    TENANTS,
    WORKSPACES,
    demo_id,
    seed_demo,
    seed_demo_if_empty,
)
from app.storage.db import session_factory
from app.storage.migrate import upgrade
from app.storage.models import (
    AuditRecord,
    DeadLetterEntry,
    Job,
    OperationRun,
    PackRun,
    Quota,
    Source,
    Tenant,
    Workspace,
)

DEMO_KEYS = [t.key for t in TENANTS]
JOB_STATUSES = {
    "pending", "scheduled", "leased", "running", "cancel_requested", "succeeded", "failed", "canceled", "timed_out"
}
PACK_RUN_STATUSES = {
    "queued", "running", "cancel_requested", "succeeded", "partially_succeeded", "failed", "canceled", "blocked"
}
ENTRY_STATUSES = {"pending", "replaying", "replayed", "discarded"}
RUN_PAIRS = {
    ("queued", "pending"),
    ("running", "pending"),
    ("completed", "succeeded"),
    ("completed", "partially_succeeded"),
    ("completed", "failed"),
    ("completed", "blocked"),
}
TENANT_TABLES = {
    "sources": (Source, Source.source_id),
    "quotas": (Quota, Quota.quota_id),
    "jobs": (Job, Job.job_id),
    "dead_letter_entries": (DeadLetterEntry, DeadLetterEntry.entry_id),
    "pack_runs": (PackRun, PackRun.pack_run_id),
}


# --- helpers ------------------------------------------------------------------------------------


async def demo_scope(session: AsyncSession) -> tuple[dict[str, int], list[int]]:
    tenants = {t.key: t.id for t in (await session.execute(select(Tenant).where(Tenant.key.in_(DEMO_KEYS)))).scalars()}
    workspaces = list((await session.execute(select(Workspace.id).where(Workspace.key.in_(list(WORKSPACES))))).scalars())
    return tenants, workspaces


def demo_runs(tenant_ids: list[int], workspace_ids: list[int]):  # type: ignore[no-untyped-def]
    return or_(
        OperationRun.tenant_id.in_(tenant_ids),
        and_(OperationRun.tenant_id.is_(None), OperationRun.workspace_id.in_(workspace_ids)),
    )


async def snapshot(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Sorted ids per table (and per-table row counts) of the demo tenants and workspaces."""
    async with sessions() as session:
        tenants, workspaces = await demo_scope(session)
        ids: dict[str, Any] = {"tenants": sorted(tenants.items()), "workspaces": sorted(workspaces)}
        for table, (model, column) in TENANT_TABLES.items():
            rows = await session.execute(select(model.tenant_id, column).where(model.tenant_id.in_(tenants.values())))
            ids[table] = sorted(rows.all())
        runs = await session.execute(
            select(OperationRun.id).where(demo_runs(list(tenants.values()), workspaces)).order_by(OperationRun.id)
        )
        ids["operation_runs"] = list(runs.scalars())
        ids["pack_run_links"] = sorted(
            (await session.execute(
                select(PackRun.pack_run_id, PackRun.operation_run_id).where(PackRun.tenant_id.in_(tenants.values()))
            )).all()
        )
        ids["external_ids"] = sorted(
            (await session.execute(select(Tenant.key, Tenant.external_id).where(Tenant.key.in_(DEMO_KEYS)))).all()
        )
    return ids


async def load_tenant(sessions: async_sessionmaker[AsyncSession], key: str) -> dict[str, list[Any]]:
    async with sessions() as session:
        tenant = (await session.execute(select(Tenant).where(Tenant.key == key))).scalar_one()
        loaded: dict[str, list[Any]] = {}
        for table, (model, _) in TENANT_TABLES.items():
            loaded[table] = list((await session.execute(select(model).where(model.tenant_id == tenant.id))).scalars())
        loaded["operation_runs"] = list(
            (await session.execute(select(OperationRun).where(OperationRun.tenant_id == tenant.id))).scalars()
        )
        loaded["tenant"] = [tenant]
    return loaded


async def count_rows(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        tenants, workspaces = await demo_scope(session)
        counts = {"tenants": len(tenants), "workspaces": len(workspaces)}
        for table, (model, _) in TENANT_TABLES.items():
            counts[table] = (
                await session.execute(select(func.count()).select_from(model).where(model.tenant_id.in_(tenants.values())))
            ).scalar_one()
        counts["operation_runs"] = (
            await session.execute(
                select(func.count()).select_from(OperationRun).where(demo_runs(list(tenants.values()), workspaces))
            )
        ).scalar_one()
    return counts


# --- the seeded data on PostgreSQL ------------------------------------------------------------------


async def test_reseeding_gives_the_same_ids_and_counts(runtime):
    first_counts = await seed_demo(runtime.sessions)
    first = await snapshot(runtime.sessions)
    second_counts = await seed_demo(runtime.sessions)
    second = await snapshot(runtime.sessions)
    assert first == second
    assert first_counts == second_counts
    assert all(first[table] for table in TENANT_TABLES)
    assert len(first["operation_runs"]) == first_counts["operation_runs"]


async def test_returned_counts_equal_the_rows_in_the_database(runtime):
    counts = await seed_demo(runtime.sessions)
    assert counts == await count_rows(runtime.sessions)
    assert counts["workspaces"] == 2 and counts["tenants"] == 3


async def test_demo_ids_are_derived_from_names(runtime):
    await seed_demo(runtime.sessions)
    acme = await load_tenant(runtime.sessions, "acme")
    assert {s.source_id for s in acme["sources"]} == {demo_id("acme", "source", s.slug) for s in SOURCES}


async def test_tenants_sit_in_their_workspaces_with_stable_uuid4_external_ids(runtime):
    await seed_demo(runtime.sessions)
    async with runtime.sessions() as session:
        rows = (
            await session.execute(
                select(Tenant, Workspace.key).join(Workspace, Workspace.id == Tenant.workspace_id)
                .where(Tenant.key.in_(DEMO_KEYS))
            )
        ).all()
    placed = {tenant.key: workspace for tenant, workspace in rows}
    assert placed == {"acme": "eu-prod", "globex": "eu-prod", "initech": "us-prod"}
    for tenant, _ in rows:
        assert uuid.UUID(tenant.external_id).version == 4
        assert str(uuid.UUID(tenant.external_id)) == tenant.external_id
        assert tenant.display_name


async def test_every_tenant_has_every_status_of_jobs_pack_runs_entries_and_runs(runtime):
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        data = await load_tenant(runtime.sessions, key)
        assert {j.status for j in data["jobs"]} == JOB_STATUSES, key
        assert {p.status for p in data["pack_runs"]} == PACK_RUN_STATUSES, key
        assert {e.status for e in data["dead_letter_entries"]} == ENTRY_STATUSES, key
        assert {(r.status, r.outcome) for r in data["operation_runs"]} == RUN_PAIRS, key
        types = {r.type for r in data["operation_runs"]}
        assert {"pack_run.execute", "pack_run.retry", "deadletter.replay_pending", "deadletter.replay_batch"} <= types


async def test_every_tenant_has_several_source_types_some_disabled_and_a_paused_and_a_saturated_quota(runtime):
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        data = await load_tenant(runtime.sessions, key)
        sources = data["sources"]
        assert len({s.source_type for s in sources}) >= 4
        assert any(not s.enabled for s in sources) and any(s.enabled for s in sources)
        paused = [q for q in data["quotas"] if q.paused]
        assert len(paused) == 1 and paused[0].paused_by and paused[0].paused_reason and paused[0].paused_at
        active = Counter(j.job_type for j in data["jobs"] if j.status in ("leased", "running", "cancel_requested"))
        saturated = [q for q in data["quotas"] if not q.paused and active[q.job_type] == q.max_active]
        assert len(saturated) == 1 and saturated[0].max_active > 0
        for source in sources:
            jobs = [j for j in data["jobs"] if j.source_id == source.source_id]
            assert source.jobs_submitted == len(jobs)


async def test_acme_has_the_billing_and_scanner_projects(runtime):
    await seed_demo(runtime.sessions)
    acme = await load_tenant(runtime.sessions, "acme")
    for table in ("sources", "jobs", "pack_runs", "dead_letter_entries"):
        assert {row.project_id for row in acme[table]} == {"billing", "scanner"}, table
    globex = await load_tenant(runtime.sessions, "globex")
    assert {s.project_id for s in globex["sources"]} == {None}


async def test_each_pack_run_has_its_operation_run_mapped_as_in_the_lifecycle(runtime):
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        data = await load_tenant(runtime.sessions, key)
        runs = {r.id: r for r in data["operation_runs"]}
        for pack_run in data["pack_runs"]:
            run = runs[pack_run.operation_run_id]
            assert (run.status, run.outcome) == PACK_RUN_TO_OPERATION[pack_run.status][:2], pack_run.status
            assert run.context["pack_run_id"] == pack_run.pack_run_id
            assert run.type == ("pack_run.retry" if pack_run.retry_of else "pack_run.execute")
            if pack_run.status in ("failed", "canceled"):
                assert run.failure_summary and run.failure_summary[0]["code"].startswith("run.")
        canceled = next(p for p in data["pack_runs"] if p.status == "canceled")
        assert runs[canceled.operation_run_id].failure_summary[0]["code"] == "run.canceled"
        assert any(p.retry_of == canceled.pack_run_id for p in data["pack_runs"])


async def test_active_runs_have_distinct_identities_within_a_tenant(runtime):
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        runs = (await load_tenant(runtime.sessions, key))["operation_runs"]
        active = [r.run_identity_hash for r in runs if r.status in ("queued", "running")]
        assert len(active) == len(set(active)) >= 4
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in active)


async def test_workspace_scoped_housekeeping_runs_have_no_tenant(runtime):
    await seed_demo(runtime.sessions)
    async with runtime.sessions() as session:
        _, workspace_ids = await demo_scope(session)
        runs = list(
            (
                await session.execute(
                    select(OperationRun).where(
                        OperationRun.workspace_id.in_(workspace_ids), OperationRun.type == "ops.reconcile"
                    )
                )
            ).scalars()
        )
    assert sorted(r.workspace_id for r in runs) == sorted(workspace_ids)
    assert all(r.tenant_id is None and (r.status, r.outcome) == ("completed", "succeeded") for r in runs)


async def test_stale_runs_are_older_than_fresh_runs_right_after_seeding(runtime):
    now = datetime.now(UTC)
    await seed_demo(runtime.sessions, now=now)
    for key in DEMO_KEYS:
        runs = (await load_tenant(runtime.sessions, key))["operation_runs"]
        running = [r for r in runs if r.status == "running"]
        fresh = [r for r in running if now - r.heartbeat_at < timedelta(minutes=5)]
        stale = [r for r in running if now - r.heartbeat_at > timedelta(hours=1)]
        assert fresh and stale and len(fresh) + len(stale) == len(running)
        assert max(r.heartbeat_at for r in stale) < min(r.heartbeat_at for r in fresh)
        queued = [r for r in runs if r.status == "queued"]
        assert any(now - r.created_at <= timedelta(minutes=2) for r in queued)
        assert any(now - r.created_at > timedelta(hours=1) and r.started_at is None for r in queued)
        reconciled = [r for r in runs if r.reconciled_at is not None]
        assert len(reconciled) == 1
        record = reconciled[0].reconciliation
        assert (reconciled[0].status, reconciled[0].outcome) == ("completed", "failed")
        assert record["source"] == "scheduled_reconciler" and record["reason_code"] == "run.stale_no_heartbeat"
        assert record["evidence"]["threshold_seconds"] > 0 and record["evidence"]["last_heartbeat_at"]


async def test_timestamps_are_placed_relative_to_the_moment_of_seeding(runtime):
    now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    await seed_demo(runtime.sessions, now=now)
    data = await load_tenant(runtime.sessions, "globex")
    queued = next(r for r in data["operation_runs"] if r.status == "queued" and r.type == "pack_run.execute")
    assert queued.created_at == now - timedelta(minutes=1)
    moments = [row.updated_at for table in TENANT_TABLES for row in data[table]]
    assert max(moments) <= now and min(moments) > now - timedelta(days=120)
    await seed_demo(runtime.sessions)  # leave fresh demo data for whoever looks next


async def test_clustered_entries_share_one_template_and_differ_in_message(runtime):
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        entries = (await load_tenant(runtime.sessions, key))["dead_letter_entries"]
        clusters: dict[str, list[DeadLetterEntry]] = defaultdict(list)
        for entry in entries:
            clusters[entry.error_code].append(entry)
        assert len({e.category for e in entries}) >= 4 and len(clusters) >= 5
        for code, members in clusters.items():
            assert len({e.error_template for e in members}) == 1, code
            assert len({e.template_hash for e in members}) == 1, code
            assert len({e.message for e in members}) == len(members) >= 2, code
            for entry in members:
                assert entry.error_template == error_template(entry.message)
                assert entry.template_hash == template_hash(code, entry.error_template)


async def test_replayed_entries_point_at_their_replay_jobs(runtime):
    await seed_demo(runtime.sessions)
    data = await load_tenant(runtime.sessions, "initech")
    jobs = {j.job_id: j for j in data["jobs"]}
    for entry in data["dead_letter_entries"]:
        assert jobs[entry.job_id].status in ("failed", "timed_out")
        if entry.replay_count:
            replay = jobs[entry.last_replay_job_id]
            assert replay.replay_of_entry_id == entry.entry_id
            expected = {"replayed": {"succeeded"}, "replaying": {"pending", "running"}, "pending": {"failed"}}
            assert replay.status in expected[entry.status]


async def test_reseeding_leaves_other_tenants_and_audit_rows_alone(runtime, factory):
    await seed_demo(runtime.sessions)
    neighbour = await factory.tenant(workspace="eu-prod")
    now = datetime.now(UTC)
    async with runtime.sessions.begin() as session:
        neighbour_id = (await session.execute(select(Tenant.id).where(Tenant.key == neighbour))).scalar_one()
        acme_id = (await session.execute(select(Tenant.id).where(Tenant.key == "acme"))).scalar_one()
        session.add(Source(tenant_id=neighbour_id, source_id="kept", name="Kept", source_type="manual", enabled=True,
                           created_at=now, updated_at=now, jobs_submitted=0, jobs_active=0, jobs_failed=0))
        session.add(AuditRecord(occurred_at=now, tenant_id=acme_id, subject="tester", action="source.create",
                                method="POST", route="/jobengine/sources", trace_id="seed-test", result_status=201))
    async with runtime.sessions() as session:
        audit_before = (await session.execute(select(func.count()).select_from(AuditRecord))).scalar_one()
    await seed_demo(runtime.sessions)
    async with runtime.sessions() as session:
        kept = (await session.execute(select(Source).where(Source.tenant_id == neighbour_id))).scalars().all()
        audit_after = (await session.execute(select(func.count()).select_from(AuditRecord))).scalar_one()
    assert [s.source_id for s in kept] == ["kept"]
    assert audit_after == audit_before


# --- the embedded default's database -------------------------------------------------------------


async def test_seed_works_on_sqlite_and_is_repeatable(tmp_path: Path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{(tmp_path / 'demo.db').as_posix()}")
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        first_counts = await seed_demo(sessions)
        first = await snapshot(sessions)
        second_counts = await seed_demo(sessions)
        assert await snapshot(sessions) == first
        assert first_counts == second_counts == await count_rows(sessions)
        assert first["operation_runs"] == list(range(1, first_counts["operation_runs"] + 1))
        acme = await load_tenant(sessions, "acme")
        assert {p.status for p in acme["pack_runs"]} == PACK_RUN_STATUSES
        assert all(r.created_at.tzinfo is not None for r in acme["operation_runs"])
    finally:
        await engine.dispose()


# --- seeding keeps the user's work: only an empty database, or --reset --------------------------


async def test_seeding_if_empty_leaves_a_database_with_tenants_alone(runtime, factory):
    await seed_demo(runtime.sessions)
    before = await snapshot(runtime.sessions)
    assert await seed_demo_if_empty(runtime.sessions) is None
    assert await snapshot(runtime.sessions) == before


async def test_no_demo_job_sleeps_for_long(runtime):
    """A worker that runs the demo's jobs (the embedded one) is never held for more than seconds."""
    await seed_demo(runtime.sessions)
    for key in DEMO_KEYS:
        data = await load_tenant(runtime.sessions, key)
        sleeps = [j.payload for j in data["jobs"] if j.job_type == "demo.sleep"]
        sleeps += [e.payload for e in data["dead_letter_entries"] if e.job_type == "demo.sleep"]
        assert sleeps and all(0 < p["seconds"] <= DEMO_SLEEP_SECONDS <= 5 for p in sleeps), key


def _jobgate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env={**env, "JOBGATE_DATA_DIR": str(data_dir)},
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
    )


async def _acme_sources(data_dir: Path) -> set[str]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{(data_dir / 'jobgate.db').as_posix()}")
    try:
        async with session_factory(engine)() as session:
            acme = (await session.execute(select(Tenant.id).where(Tenant.key == "acme"))).scalar_one()
            return set((await session.execute(select(Source.source_id).where(Source.tenant_id == acme))).scalars())
    finally:
        await engine.dispose()


async def test_seed_command_keeps_existing_data_and_reset_starts_the_demo_over(tmp_path: Path):
    first = _jobgate(tmp_path, "seed", "--demo")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["tenants"] == 3
    demo_sources = await _acme_sources(tmp_path)
    assert demo_sources == {demo_id("acme", "source", s.slug) for s in SOURCES}
    engine = create_async_engine(f"sqlite+aiosqlite:///{(tmp_path / 'jobgate.db').as_posix()}")
    try:
        async with session_factory(engine).begin() as session:
            acme = (await session.execute(select(Tenant.id).where(Tenant.key == "acme"))).scalar_one()
            now = datetime.now(UTC)
            session.add(Source(tenant_id=acme, source_id="users-own", name="Mine", source_type="manual", enabled=True,
                               created_at=now, updated_at=now, jobs_submitted=0, jobs_active=0, jobs_failed=0))
    finally:
        await engine.dispose()

    again = _jobgate(tmp_path, "seed", "--demo")  # what a restart with --demo does
    assert again.returncode == 0, again.stderr
    assert "already has tenants" in again.stderr and "--reset" in again.stderr
    assert await _acme_sources(tmp_path) == demo_sources | {"users-own"}

    reset = _jobgate(tmp_path, "seed", "--demo", "--reset")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout) == json.loads(first.stdout)
    assert await _acme_sources(tmp_path) == demo_sources

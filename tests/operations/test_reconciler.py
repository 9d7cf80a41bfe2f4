"""The stale-run reconciler, driven with an injected clock and limited to the test's workspace."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from app.domain.operations import ledger
from app.engine.reconciler import CANCEL_GRACE_SECONDS, reconcile_once
from app.engine.steps import background_steps
from app.storage.models import Job, OperationRun, PackRun, Source, Workspace
from app.thresholds import DEFAULTS
from tests.conftest import ROOT
from tests.operations.support import add_run, get_json, tenant_of

PACK = DEFAULTS["pack_run.execute"]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def _pack_run(runtime, tenant, *, status="running", heartbeat_age=0.0, cancel_requested_at=None):  # type: ignore[no-untyped-def]
    """A pack run with its operation run, a source and jobs in four statuses."""
    pack_run_id, source_id = uuid.uuid4().hex, uuid.uuid4().hex
    run_id = await add_run(
        runtime,
        tenant,
        status="running",
        age=heartbeat_age + 60,
        heartbeat_age=heartbeat_age,
        now=T0,
        context={"pack_run_id": pack_run_id},
    )
    async with runtime.sessions.begin() as session:
        session.add(
            Source(
                tenant_id=tenant.id,
                source_id=source_id,
                name="s",
                source_type="scanner",
                enabled=True,
                created_at=T0,
                updated_at=T0,
                jobs_submitted=4,
                jobs_active=3,
                jobs_failed=0,
            )
        )
        session.add(
            PackRun(
                tenant_id=tenant.id,
                pack_run_id=pack_run_id,
                pack_name="p",
                pack_version="1",
                status=status,
                operation_run_id=run_id,
                steps_total=4,
                cancel_requested_at=cancel_requested_at,
                created_at=T0,
                updated_at=T0,
                started_at=T0,
            )
        )
        for status_ in ("running", "pending", "scheduled", "succeeded"):
            session.add(
                Job(
                    tenant_id=tenant.id,
                    job_id=uuid.uuid4().hex,
                    source_id=source_id,
                    job_type="demo.sleep",
                    payload={},
                    status=status_,
                    run_after=T0,
                    pack_run_id=pack_run_id,
                    created_at=T0,
                    updated_at=T0,
                )
            )
    return run_id, pack_run_id, source_id


async def _state(runtime, tenant, run_id, pack_run_id, source_id):  # type: ignore[no-untyped-def]
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, run_id)
        pack = await session.get(PackRun, (tenant.id, pack_run_id))
        jobs = (
            (await session.execute(select(Job.status).where(Job.pack_run_id == pack_run_id))).scalars().all()
        )
        source = await session.get(Source, (tenant.id, source_id))
        return run, pack, sorted(jobs), source


async def _retire(runtime, tenant) -> None:  # type: ignore[no-untyped-def]
    """Leave no due jobs or active runs behind for the workers of other tests."""
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(Job).where(Job.tenant_id == tenant.id, Job.status != "succeeded").values(status="canceled")
        )
        await session.execute(
            update(OperationRun)
            .where(OperationRun.tenant_id == tenant.id, OperationRun.status != "completed")
            .values(status="completed", outcome="failed")
        )


async def _housekeeping_runs(runtime, workspace_id):  # type: ignore[no-untyped-def]
    async with runtime.sessions() as session:
        stmt = select(OperationRun).where(
            OperationRun.workspace_id == workspace_id,
            OperationRun.tenant_id.is_(None),
            OperationRun.type == "ops.reconcile",
        )
        return (await session.execute(stmt)).scalars().all()


async def test_stale_running_run_becomes_reconciled_failed_with_the_full_record(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    run_id, pack_run_id, source_id = await _pack_run(runtime, tenant)
    now = T0 + timedelta(seconds=PACK.reconcile_after_seconds)
    summary = await reconcile_once(runtime, now, workspace_ids=[tenant.workspace_id])
    assert summary["reconciled_runs"] == 1 and summary["canceled_jobs"] == 3 and summary["workspaces"] == 1

    run, pack, jobs, source = await _state(runtime, tenant, run_id, pack_run_id, source_id)
    assert (run.status, run.outcome, run.reconciled_at, run.completed_at) == ("completed", "failed", now, now)
    record = run.reconciliation
    assert record["source"] == "scheduled_reconciler" and record["reason_code"] == "run.stale_no_heartbeat"
    assert record["reason_message"] and record["reconciled_at"] == "2026-03-01T09:30:00Z"
    assert record["evidence"]["last_heartbeat_at"] == "2026-03-01T09:00:00Z"
    assert record["evidence"]["threshold_seconds"] == PACK.reconcile_after_seconds
    assert record["evidence"]["housekeeping_run_id"] == summary["housekeeping_run_ids"][0]
    assert run.failure_summary == [{"code": "run.stale_no_heartbeat", "message": record["reason_message"]}]
    assert pack.status == "failed" and pack.finished_at == now
    assert jobs == ["canceled", "canceled", "canceled", "succeeded"]  # canceled jobs hold no quota slot
    assert source.jobs_active == 0

    [housekeeping] = await _housekeeping_runs(runtime, tenant.workspace_id)
    assert (housekeeping.status, housekeeping.outcome) == ("completed", "succeeded")
    assert housekeeping.summary_counts["reconciled"] == 1

    headers = factory.headers(key, scope="orch:read")
    body = await get_json(client, "detail", f"/api/admin/operations/{run_id}", headers)
    assert (
        body["freshness_state"] == "reconciled_failed"
        and body["reconciliation"]["reason_code"] == "run.stale_no_heartbeat"
    )
    detail = await get_json(client, "canonical_detail", f"/admin/operations/{run_id}", headers)
    assert detail["active_state"]["problem_class"] == "terminal_follow_up"


async def test_fresh_and_not_yet_due_runs_are_untouched(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    fresh = await _pack_run(runtime, tenant, heartbeat_age=0)
    now = T0 + timedelta(seconds=PACK.reconcile_after_seconds - 1)  # stale on the surfaces, not yet due
    summary = await reconcile_once(runtime, now, workspace_ids=[tenant.workspace_id])
    assert summary["reconciled_runs"] == 0 and summary["idle_workspaces"] == 1
    assert await _housekeeping_runs(runtime, tenant.workspace_id) == []  # an idle pass leaves no trace
    run, pack, jobs, source = await _state(runtime, tenant, *fresh)
    assert (run.status, run.reconciled_at, pack.status, source.jobs_active) == ("running", None, "running", 3)
    assert jobs == ["pending", "running", "scheduled", "succeeded"]
    await _retire(runtime, tenant)


async def test_two_reconcilers_started_at_once_make_one_housekeeping_run(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    run_id = await add_run(runtime, tenant, status="running", age=9000, heartbeat_age=8000, now=T0)
    results = await asyncio.gather(
        *(reconcile_once(runtime, T0, workspace_ids=[tenant.workspace_id]) for _ in range(2))
    )
    # one works on the workspace; the other either finds its housekeeping run active (skips) or,
    # if the scheduler let the first finish before the second looked, finds nothing due
    worked = [r for r in results if r["workspaces"] == 1]
    others = [r for r in results if r["workspaces"] == 0]
    assert len(worked) == 1 and len(others) == 1
    assert others[0]["skipped_workspaces"] + others[0]["idle_workspaces"] == 1
    assert sum(r["reconciled_runs"] for r in results) == 1
    assert len(await _housekeeping_runs(runtime, tenant.workspace_id)) == 1
    async with runtime.sessions() as session:
        assert (await session.get(OperationRun, run_id)).outcome == "failed"


async def test_an_active_housekeeping_run_makes_the_reconciler_skip_the_workspace(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    async with runtime.sessions.begin() as session:
        workspace = await session.get(Workspace, tenant.workspace_id)
        await ledger.open_run(
            session,
            run_type="ops.reconcile",
            workspace_id=tenant.workspace_id,
            tenant_id=None,
            identity={"workspace": workspace.key},
            status="running",
            now=T0,
        )
    stale = await add_run(runtime, tenant, status="running", age=9000, heartbeat_age=8000, now=T0)
    summary = await reconcile_once(runtime, T0 + timedelta(seconds=1), workspace_ids=[tenant.workspace_id])
    assert summary["skipped_workspaces"] == 1 and summary["reconciled_runs"] == 0
    # once that housekeeping run is itself long stale (its process died), it no longer blocks
    later = T0 + timedelta(seconds=DEFAULTS["ops.reconcile"].reconcile_after_seconds)
    summary = await reconcile_once(runtime, later, workspace_ids=[tenant.workspace_id])
    assert summary["workspaces"] == 1 and summary["reconciled_runs"] == 1
    runs = await _housekeeping_runs(runtime, tenant.workspace_id)
    assert sorted((r.outcome, r.reconciled_at is not None) for r in runs) == [
        ("failed", True),
        ("succeeded", False),
    ]
    async with runtime.sessions() as session:
        assert (await session.get(OperationRun, stale)).reconciled_at == later


async def test_a_late_worker_report_does_not_flip_the_reconciled_outcome(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    run_id = await add_run(runtime, tenant, status="running", age=9000, heartbeat_age=8000, now=T0)
    await reconcile_once(runtime, T0, workspace_ids=[tenant.workspace_id])
    async with runtime.sessions.begin() as session:
        run = await session.get(OperationRun, run_id)
        completed = ledger.report(
            session,
            run,
            "succeeded",
            counts={"total": 2, "succeeded": 2},
            message="done, token=abc.def.ghi",
            now=T0 + timedelta(seconds=5),
        )
    assert completed is False
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    [late] = run.reconciliation["evidence"]["late_reports"]
    assert late["outcome"] == "succeeded" and late["counts"] == {"total": 2, "succeeded": 2}
    assert late["received_at"] == "2026-03-01T09:00:05Z"
    body = await get_json(
        client, "detail", f"/api/admin/operations/{run_id}", factory.headers(key, scope="orch:read")
    )
    assert body["freshness_state"] == "reconciled_failed"
    assert body["reconciliation"]["evidence"]["late_reports"][0]["outcome"] == "succeeded"


async def test_cancel_requested_pack_run_past_the_grace_period_is_canceled(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    overdue = await _pack_run(
        runtime,
        tenant,
        status="cancel_requested",
        cancel_requested_at=T0 - timedelta(seconds=CANCEL_GRACE_SECONDS),
    )
    within = await _pack_run(
        runtime,
        tenant,
        status="cancel_requested",
        cancel_requested_at=T0 - timedelta(seconds=CANCEL_GRACE_SECONDS - 1),
    )
    summary = await reconcile_once(runtime, T0, workspace_ids=[tenant.workspace_id])
    assert summary["canceled_pack_runs"] == 1
    run, pack, jobs, _ = await _state(runtime, tenant, *overdue)
    assert pack.status == "canceled" and jobs == ["canceled", "canceled", "canceled", "succeeded"]
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.failure_summary[0]["code"] == "run.canceled"
    assert run.reconciliation["reason_code"] == "run.cancel_grace_expired"
    run, pack, jobs, _ = await _state(runtime, tenant, *within)
    assert (pack.status, run.status) == ("cancel_requested", "running")
    await _retire(runtime, tenant)


def test_the_worker_runs_the_reconciler_periodically() -> None:
    step = next(s for s in background_steps() if s.name == "reconcile")
    assert step.interval_seconds == 30.0


def test_jobgate_reconcile_refuses_invalid_thresholds_in_one_line(gateway_env) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, **gateway_env, "JOBGATE_LIFECYCLE_THRESHOLDS": "[1]"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "reconcile"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "jobgate: invalid setting: JOBGATE_LIFECYCLE_THRESHOLDS must be a JSON object of type -> thresholds"
    ]

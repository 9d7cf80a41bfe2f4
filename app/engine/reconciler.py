"""The stale-run reconciler: fails active runs that stopped making progress, so their jobs and
quota slots are released and every surface shows them as ``reconciled_failed``.

One pass per workspace, under the workspace's own housekeeping run (``ops.reconcile``,
``tenant_id`` null, identity deterministic per workspace): the partial unique index admits one
active housekeeping run per workspace, so two reconcilers never work on the same workspace at
once; the one that does not create the run skips the workspace. A housekeeping run that is
itself long stale (its process died) is reconciled first, so a crash never blocks the reconciler.
A workspace with nothing due gets no housekeeping run (an idle pass every 30 s leaves no rows).

For each run due (``lifecycle.reconcile_due``): the run is completed as ``failed`` with a
reconciliation record (``source: scheduled_reconciler``, reason code, message, evidence with
the last heartbeat and the threshold), the remaining jobs of its pack run are canceled (canceled
jobs hold no quota slot), and the pack run ends ``failed`` (``canceled`` when a cancel was
requested). Pack runs left in ``cancel_requested`` for longer than :data:`CANCEL_GRACE_SECONDS`
are forced to ``canceled`` the same way.

After the workspaces, jobs left in ``cancel_requested`` (``app/domain/jobs/cancel.py``) for longer
than the same grace — their worker died, hung, or its handler ignores cancellation — are forced to
``canceled`` (lease cleared, so a late outcome of that worker changes nothing), one transaction per
job, locking its pack run first.

Each pass then marks the workers whose heartbeat is overdue as lapsed (``registry.mark_lapsed``),
so that the change feed announces their going to the tenants that saw them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.domain.operations import ledger, queries
from app.domain.operations.lifecycle import RunFacts, evidence_time, reconcile_due, threshold_of
from app.domain.packruns import progress
from app.domain.workers import registry
from app.instants import iso_or_none
from app.sanitize import sanitize
from app.storage.models import Job, OperationRun, PackRun, Source, Tenant, Workspace
from app.thresholds import Thresholds

if TYPE_CHECKING:
    from app.engine.context import EngineContext

log = logging.getLogger("jobgate.reconciler")

SOURCE = "scheduled_reconciler"
HOUSEKEEPING_TYPE = "ops.reconcile"
CANCEL_GRACE_SECONDS = 300
BATCH = 200
REMAINING_JOB_STATUSES = ("pending", "scheduled", "leased", "running", "cancel_requested")
PACK_TERMINAL = ("succeeded", "partially_succeeded", "failed", "canceled", "blocked", "timed_out")




async def reconcile_once(
    context: EngineContext,
    now: datetime | None = None,
    *,
    thresholds: Thresholds | None = None,
    cancel_grace_seconds: int = CANCEL_GRACE_SECONDS,
    workspace_ids: list[int] | None = None,
) -> dict[str, Any]:
    """One pass over every workspace (or over ``workspace_ids``); returns what it did."""
    now = now or datetime.now(UTC)
    thresholds = thresholds or context.settings.lifecycle_thresholds
    summary: dict[str, Any] = {
        "workspaces": 0,
        "idle_workspaces": 0,
        "skipped_workspaces": 0,
        "reconciled_runs": 0,
        "canceled_pack_runs": 0,
        "canceled_jobs": 0,
        "housekeeping_run_ids": [],
    }
    async with context.sessions() as session:
        # two queries find the workspaces with anything due, however many workspaces there are
        busy = await _workspaces_with_work(session, now, thresholds, cancel_grace_seconds, workspace_ids)
        stmt = select(Workspace.id, Workspace.key).where(Workspace.id.in_(busy)).order_by(Workspace.id)
        workspaces = (await session.execute(stmt)).all()
        total = select(func.count()).select_from(Workspace)
        if workspace_ids is not None:
            total = total.where(Workspace.id.in_(workspace_ids))
        summary["idle_workspaces"] = (await session.execute(total)).scalar_one() - len(workspaces)
    for workspace_id, workspace_key in workspaces:
        done = await _workspace(context, workspace_id, workspace_key, now, thresholds, cancel_grace_seconds)
        if done is None:
            summary["skipped_workspaces"] += 1
            continue
        if not done:
            summary["idle_workspaces"] += 1
            continue
        summary["workspaces"] += 1
        summary["housekeeping_run_ids"].append(done.pop("housekeeping_run_id"))
        for key, value in done.items():
            summary[key] += value
    summary["canceled_jobs"] += await force_overdue_job_cancels(context, now, cancel_grace_seconds, workspace_ids)
    metrics.count_reconciled(summary)
    await _announce_newly_stale(context, now, thresholds, workspace_ids)
    summary["lapsed_workers"] = await _mark_lapsed_workers(context, now)
    return summary


async def force_overdue_job_cancels(
    context: EngineContext, now: datetime, grace: int, workspace_ids: list[int] | None = None
) -> int:
    """End the jobs whose cancel was requested over ``grace`` seconds ago; returns how many."""
    overdue = (Job.status == "cancel_requested") & (Job.cancel_requested_at <= now - timedelta(seconds=grace))
    stmt = select(Job.tenant_id, Job.job_id, Job.pack_run_id).where(overdue)
    if workspace_ids is not None:
        stmt = stmt.join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.workspace_id.in_(workspace_ids))
    async with context.sessions() as session:
        candidates = (await session.execute(stmt.order_by(Job.cancel_requested_at).limit(BATCH))).all()
    forced = 0
    for tenant_id, job_id, pack_run_id in candidates:
        async with context.sessions() as session:
            if pack_run_id is not None:
                await progress.lock(session, tenant_id, pack_run_id)
            ended = await session.execute(
                update(Job)
                .where(Job.tenant_id == tenant_id, Job.job_id == job_id, overdue)
                .values(
                    status="canceled",
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                    last_error_code="job.cancel_forced",
                    last_error_category="canceled",
                    last_error_message=f"The cancel was requested over {grace}s ago and the job never stopped; "
                    "the reconciler canceled it.",
                )
                .execution_options(synchronize_session=False)
            )
            if not ended.rowcount:
                await session.rollback()  # it stopped meanwhile
                continue
            if pack_run_id is not None:
                await progress.settle(session, tenant_id, pack_run_id, now=now)
            await session.commit()
            forced += 1
    return forced


# Twice the pass interval of the workers' reconcile step (app/engine/steps.py): a run that crossed
# its threshold between two passes is announced by one of them (at worst by two).
NEWLY_STALE_SECONDS = 60


async def _announce_newly_stale(
    context: EngineContext, now: datetime, thresholds: Thresholds, workspace_ids: list[int] | None
) -> None:
    """Runs that became ``likely_stale`` since the last pass changed without any write: they are
    touched (an update that changes no value), so the change feed's triggers announce them to every
    stream and revalidation as an operation change, like any write would."""
    since = now - timedelta(seconds=NEWLY_STALE_SECONDS)
    stmt = (
        update(OperationRun)
        .where(
            OperationRun.status.in_(("queued", "running")),
            queries.stale(now, thresholds),
            ~queries.stale(since, thresholds),
        )
        .values(updated_at=OperationRun.updated_at)
        .execution_options(synchronize_session=False)
    )
    if workspace_ids is not None:
        stmt = stmt.where(OperationRun.workspace_id.in_(workspace_ids))
    try:
        async with context.sessions.begin() as session:
            touched = (await session.execute(stmt)).rowcount
    except Exception as exc:  # noqa: BLE001 - the next pass tries again; streams re-read at heartbeats
        log.warning("could not announce newly stale runs (%s)", type(exc).__name__)
        return
    if touched:
        log.info("announced %d newly stale operation run(s)", touched)


async def _mark_lapsed_workers(context: EngineContext, now: datetime) -> int:
    """A worker's lapse changes no row by itself; marking it makes the feed's triggers announce it
    (workers belong to no workspace: every pass marks them all)."""
    try:
        async with context.sessions.begin() as session:
            lapsed = await registry.mark_lapsed(session, now)
    except Exception as exc:  # noqa: BLE001 - the next pass tries again
        log.warning("could not mark lapsed workers (%s)", type(exc).__name__)
        return 0
    if lapsed:
        log.info("marked %d lapsed worker(s)", lapsed)
    return lapsed


async def reconcile_step(context: EngineContext) -> None:
    """The worker's periodic step (see app/engine/steps.py)."""
    await reconcile_once(context)


async def _open_housekeeping(
    session: AsyncSession, workspace_id: int, workspace_key: str, now: datetime, thresholds: Thresholds
) -> OperationRun | None:
    kwargs: dict[str, Any] = {
        "run_type": HOUSEKEEPING_TYPE,
        "workspace_id": workspace_id,
        "tenant_id": None,
        "identity": {"workspace": workspace_key},
        "initiator": SOURCE,
        "context": {"workspace": workspace_key, "trigger": "schedule"},
        "status": "running",
        "now": now,
        "retry_on_race": False,
    }
    try:
        opened = await ledger.open_run(session, **kwargs)
        if opened.created:
            return opened.run
        if not reconcile_due(RunFacts.of(opened.run), now, thresholds):
            return None  # another reconciler is working on this workspace
        _fail(opened.run, now, thresholds, housekeeping_id=None)
        await session.flush()
        opened = await ledger.open_run(session, **kwargs)
        return opened.run if opened.created else None
    except IntegrityError:
        return None  # another reconciler held the workspace a moment ago (and has just finished)


async def _workspace(
    context: EngineContext, workspace_id: int, workspace_key: str, now: datetime, thresholds: Thresholds, grace: int
) -> dict[str, Any] | None:
    """What the pass did in one workspace: ``{}`` when nothing was due, None when another
    reconciler holds the workspace."""
    async with context.sessions() as session:
        if not await _has_work(session, workspace_id, now, thresholds, grace):
            return {}  # nothing due: no housekeeping run, so an idle pass leaves no trace in the ledger
        housekeeping = await _open_housekeeping(session, workspace_id, workspace_key, now, thresholds)
        if housekeeping is None:
            await session.rollback()
            return None
        await session.commit()  # visible at once: a second reconciler now skips this workspace
        housekeeping_id = housekeeping.id
    counts = {"reconciled_runs": 0, "canceled_pack_runs": 0, "canceled_jobs": 0}
    try:
        async with context.sessions() as session:
            candidates = (
                await session.execute(
                    select(OperationRun.id, OperationRun.tenant_id, OperationRun.context)
                    .where(
                        OperationRun.workspace_id == workspace_id,
                        OperationRun.id != housekeeping_id,
                        _due_runs(now, thresholds),
                    )
                    .order_by(OperationRun.id)
                    .limit(BATCH)
                )
            ).all()
        for run_id, tenant_id, run_context in candidates:
            # One transaction per run, locking in the engine's order (pack run, then operation
            # run, then jobs), so the reconciler never deadlocks with a worker settling a step.
            async with context.sessions() as session:
                pack = await _pack_run_of(session, run_id, tenant_id, run_context)
                run = (
                    await session.execute(
                        select(OperationRun)
                        .where(OperationRun.id == run_id)
                        .with_for_update(skip_locked=True)
                    )
                ).scalar_one_or_none()
                if run is None or not reconcile_due(RunFacts.of(run), now, thresholds):
                    await session.rollback()  # taken, or it made progress meanwhile
                    continue
                _fail(run, now, thresholds, housekeeping_id=housekeeping_id)
                counts["reconciled_runs"] += 1
                if pack is not None and pack.status not in PACK_TERMINAL:
                    pack_status = "canceled" if pack.status == "cancel_requested" else "failed"
                    counts["canceled_jobs"] += await _end_pack_run(session, pack, pack_status, now)
                await session.commit()
        async with context.sessions() as session:
            for pack in await _overdue_cancels(session, workspace_id, now, grace):
                run = await _operation_run_of(session, pack)
                counts["canceled_jobs"] += await _end_pack_run(session, pack, "canceled", now)
                counts["canceled_pack_runs"] += 1
                if run is not None and run.status in ("queued", "running"):
                    _fail(
                        run,
                        now,
                        thresholds,
                        housekeeping_id=housekeeping_id,
                        reason_code="run.cancel_grace_expired",
                        message=f"The cancel was requested over {grace}s ago and its running steps never "
                        "stopped; the reconciler canceled the run.",
                        failure_code="run.canceled",
                        extra={
                            "cancel_requested_at": iso_or_none(pack.cancel_requested_at),
                            "threshold_seconds": grace,
                        },
                    )
                    counts["reconciled_runs"] += 1
            await session.commit()
    except Exception as exc:
        log.exception("reconciler pass failed in workspace %s", workspace_key)
        async with context.sessions() as session:
            run = await session.get(OperationRun, housekeeping_id)
            if run is not None:
                ledger.complete(
                    run, "failed", failures=[ledger.failure_item("reconcile.error", str(exc))], now=now
                )
                await session.commit()
        raise
    async with context.sessions() as session:
        run = await session.get(OperationRun, housekeeping_id)
        assert run is not None
        total = counts["reconciled_runs"]
        ledger.complete(
            run,
            "succeeded",
            counts={"checked": total, "reconciled": total, "canceled": counts["canceled_pack_runs"]},
            message=f"Reconciled {total} stale run(s).",
            now=now,
        )
        await session.commit()
    return {**counts, "housekeeping_run_id": housekeeping_id}


def _due_runs(now: datetime, thresholds: Thresholds) -> Any:
    return OperationRun.status.in_(("queued", "running")) & queries.reconcile_due(now, thresholds)


def _overdue_cancel(now: datetime, grace: int) -> Any:
    return (PackRun.status == "cancel_requested") & (
        PackRun.cancel_requested_at <= now - timedelta(seconds=grace)
    )


async def _workspaces_with_work(
    session: AsyncSession, now: datetime, thresholds: Thresholds, grace: int, only: list[int] | None
) -> set[int]:
    runs = select(OperationRun.workspace_id).where(_due_runs(now, thresholds)).distinct()
    cancels = (
        select(Tenant.workspace_id)
        .join(PackRun, PackRun.tenant_id == Tenant.id)
        .where(_overdue_cancel(now, grace))
        .distinct()
    )
    if only is not None:
        runs = runs.where(OperationRun.workspace_id.in_(only))
        cancels = cancels.where(Tenant.workspace_id.in_(only))
    return set((await session.execute(runs)).scalars()) | set((await session.execute(cancels)).scalars())


async def _has_work(
    session: AsyncSession, workspace_id: int, now: datetime, thresholds: Thresholds, grace: int
) -> bool:
    """The same question for one workspace, asked again just before the pass (another
    reconciler may have finished it meanwhile)."""
    due = select(OperationRun.id).where(OperationRun.workspace_id == workspace_id, _due_runs(now, thresholds))
    overdue = (
        select(PackRun.pack_run_id)
        .join(Tenant, Tenant.id == PackRun.tenant_id)
        .where(Tenant.workspace_id == workspace_id, _overdue_cancel(now, grace))
    )
    for stmt in (due, overdue):
        if (await session.execute(stmt.limit(1))).first() is not None:
            return True
    return False


def _fail(
    run: OperationRun,
    now: datetime,
    thresholds: Thresholds,
    *,
    housekeeping_id: int | None,
    reason_code: str | None = None,
    message: str | None = None,
    failure_code: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    facts = RunFacts.of(run)
    limit = thresholds.of(run.type).reconcile_after_seconds
    if reason_code is None:
        if run.status == "queued":
            reason_code = "run.stale_never_started"
            message = f"Queued for more than {limit}s without starting; the reconciler marked the run failed."
        else:
            reason_code = "run.stale_no_heartbeat"
            message = f"No heartbeat for more than {limit}s; the reconciler marked the run failed."
    message = sanitize(message or "")[:500]
    evidence: dict[str, Any] = {
        "last_heartbeat_at": iso_or_none(run.heartbeat_at),
        "started_at": iso_or_none(run.started_at),
        "created_at": iso_or_none(run.created_at),
        "status_before": run.status,
        "threshold_seconds": limit,
        "stale_threshold_seconds": threshold_of(facts, thresholds),
        "evidence_at": iso_or_none(evidence_time(facts) or run.created_at),
        "observed_at": iso_or_none(now),
        "housekeeping_run_id": housekeeping_id,
        **(extra or {}),
    }
    ledger.complete(
        run,
        "failed",
        failures=[ledger.failure_item(failure_code or reason_code, message)],
        message=message,
        now=now,
    )
    run.reconciled_at = now
    run.reconciliation = {
        "reconciled_at": iso_or_none(now),
        "source": SOURCE,
        "reason_code": reason_code,
        "reason_message": message,
        "evidence": evidence,
    }


async def _pack_run_of(
    session: AsyncSession, run_id: int, tenant_id: int | None, context: dict[str, Any] | None
) -> PackRun | None:
    """The run's pack run, locked (``context.pack_run_id``, else ``pack_runs.operation_run_id``)."""
    if tenant_id is None:
        return None
    pack_run_id = (context or {}).get("pack_run_id")
    stmt = select(PackRun).where(PackRun.tenant_id == tenant_id)
    if isinstance(pack_run_id, str):
        stmt = stmt.where(PackRun.pack_run_id == pack_run_id)
    else:
        stmt = stmt.where(PackRun.operation_run_id == run_id)
    return (await session.execute(stmt.with_for_update())).scalars().first()


async def _operation_run_of(session: AsyncSession, pack: PackRun) -> OperationRun | None:
    if pack.operation_run_id is None:
        return None
    stmt = select(OperationRun).where(OperationRun.id == pack.operation_run_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def _overdue_cancels(
    session: AsyncSession, workspace_id: int, now: datetime, grace: int
) -> list[PackRun]:
    stmt = (
        select(PackRun)
        .join(Tenant, Tenant.id == PackRun.tenant_id)
        .where(
            Tenant.workspace_id == workspace_id,
            PackRun.status == "cancel_requested",
            PackRun.cancel_requested_at <= now - timedelta(seconds=grace),
        )
        .limit(BATCH)
        .with_for_update(of=PackRun, skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


async def _end_pack_run(session: AsyncSession, pack: PackRun, status: str, now: datetime) -> int:
    """End the pack run and cancel its remaining jobs; returns how many jobs were canceled."""
    pack.status = status
    pack.finished_at = pack.finished_at or now
    pack.updated_at = now
    canceled = (
        (
            await session.execute(
                update(Job)
                .where(
                    Job.tenant_id == pack.tenant_id,
                    Job.pack_run_id == pack.pack_run_id,
                    Job.status.in_(REMAINING_JOB_STATUSES),
                )
                .values(
                    status="canceled",
                    cancel_requested=True,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                    last_error_code="run.reconciled",
                    last_error_category="canceled",
                    last_error_message="Canceled by the reconciler: the pack run stopped making progress.",
                )
                .returning(Job.source_id)
                .execution_options(synchronize_session=False)
            )
        )
        .scalars()
        .all()
    )
    per_source: dict[str, int] = {}
    for source_id in canceled:
        per_source[source_id] = per_source.get(source_id, 0) + 1
    for source_id, n in per_source.items():
        await session.execute(
            update(Source)
            .where(Source.tenant_id == pack.tenant_id, Source.source_id == source_id)
            .values(jobs_active=case((Source.jobs_active > n, Source.jobs_active - n), else_=0))
            .execution_options(synchronize_session=False)
        )
    return len(canceled)

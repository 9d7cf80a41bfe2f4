"""How a pack run follows its step jobs: one function, called in the transaction of every change
to a step job (start, finish, cancel) and of every operator action on the run.

Steps run in order: every step job is created ``pending`` at submission and the dispatcher only
claims step *i* once step *i - 1* has succeeded.

Derivation (the pack run's row is locked first):

- a step dead-lettered → the waiting steps are canceled and the run is ``partially_succeeded``
  when some step had succeeded, else ``failed``;
- ``blocked`` (a step cannot start: its source was disabled) → waiting steps canceled, run
  ``blocked`` once no step is active;
- cancel requested, or a step canceled (a job cancel of one step: the later steps can never
  run) → waiting steps canceled; ``canceled`` once no step job is leased, running or
  ``cancel_requested``;
- every step succeeded → ``succeeded``;
- a step started while the run was ``queued`` → ``running``.

A queued run whose first step is held by its quota (paused, no free slot, no rate budget) stays
``queued`` until the step starts. The run's operation run follows every status change
(``ledger.follow_pack_run``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.operations import ledger
from app.storage.models import Job, OperationRun, PackRun

TERMINAL = frozenset({"succeeded", "partially_succeeded", "failed", "canceled", "blocked"})
ACTIVE = frozenset({"queued", "running", "cancel_requested"})
ACTIVE_JOB = ("leased", "running", "cancel_requested")
QUEUED_JOB = ("pending", "scheduled")
FAILED_JOB = ("failed", "timed_out")


async def cancel_waiting_steps(session: AsyncSession, run: PackRun, now: datetime) -> int:
    result = await session.execute(
        update(Job)
        .where(Job.tenant_id == run.tenant_id, Job.pack_run_id == run.pack_run_id, Job.status.in_(QUEUED_JOB))
        .values(status="canceled", cancel_requested=True, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


async def lock(session: AsyncSession, tenant_id: int, pack_run_id: str) -> PackRun | None:
    stmt = select(PackRun).where(PackRun.tenant_id == tenant_id, PackRun.pack_run_id == pack_run_id)
    return (await session.execute(stmt.with_for_update())).scalar_one_or_none()


async def set_status(
    session: AsyncSession, run: PackRun, status: str, *, now: datetime, message: str | None = None
) -> None:
    if run.status == status:
        return
    run.status = status
    run.updated_at = now
    if status == "running" and run.started_at is None:
        run.started_at = now
    if status in TERMINAL:
        run.finished_at = now
    if run.operation_run_id is not None:
        operation = await session.get(OperationRun, run.operation_run_id, with_for_update=True)
        if operation is not None:
            ledger.follow_pack_run(operation, status, message=message, now=now)
            operation.summary_counts = ledger.normalise_counts(
                {"total": run.steps_total, "succeeded": run.steps_succeeded, "failed": run.steps_failed}
            )


async def settle(
    session: AsyncSession,
    tenant_id: int,
    pack_run_id: str,
    *,
    now: datetime | None = None,
    blocked: str | None = None,
) -> PackRun | None:
    """Bring the pack run's status and step counts in line with its step jobs."""
    now = now or datetime.now(UTC)
    run = await lock(session, tenant_id, pack_run_id)
    if run is None or run.status in TERMINAL:
        return run
    counts: dict[str, int] = {}
    failed_step: tuple[int | None, str | None] | None = None
    rows = await session.execute(
        select(Job.status, func.count(), func.min(Job.step_index), func.min(Job.last_error_code))
        .where(Job.tenant_id == tenant_id, Job.pack_run_id == pack_run_id)
        .group_by(Job.status)
    )
    for status, count, step, code in rows:
        counts[status] = int(count)
        if status in FAILED_JOB:
            failed_step = (step, code)
    succeeded = counts.get("succeeded", 0)
    failed = sum(counts.get(s, 0) for s in FAILED_JOB)
    active = sum(counts.get(s, 0) for s in ACTIVE_JOB)
    run.steps_succeeded, run.steps_failed = succeeded, failed
    run.updated_at = now
    total = run.steps_total

    status, message = run.status, None
    if failed:
        await cancel_waiting_steps(session, run, now)
        step, code = failed_step or (None, None)
        status = "partially_succeeded" if succeeded else "failed"
        message = f"Step {(step or 0) + 1} of {total} failed ({code or 'error'}); remaining steps skipped."
    elif blocked is not None:
        await cancel_waiting_steps(session, run, now)
        if active == 0:
            status, message = "blocked", blocked
    elif total and succeeded == total:
        status = "succeeded"
        message = f"All {total} steps succeeded."
    elif run.status == "cancel_requested" or counts.get("canceled", 0):
        await cancel_waiting_steps(session, run, now)
        if active == 0:
            status, message = "canceled", "Canceled by an operator before completion."
    elif run.status == "queued" and (active or succeeded):
        status = "running"
    await set_status(session, run, status, now=now, message=message)
    if run.operation_run_id is not None and status == run.status and status not in TERMINAL:
        operation = await session.get(OperationRun, run.operation_run_id)
        if operation is not None and operation.status != "completed":
            ledger.heartbeat(
                operation, {"total": total, "succeeded": succeeded, "failed": failed}, now=now
            )
    return run

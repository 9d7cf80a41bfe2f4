"""Pack-run actions: submission, cancel and retry.

Every new pack run creates its operation run first (``pack_run.execute``, or ``pack_run.retry``
for a retry), then the pack-run row pointing at it, then one job per step (``step_index`` 0..n-1,
all ``pending``; the dispatcher claims a step only after the previous one succeeded). A step whose
job type has no registered handler makes the whole run ``blocked`` at once (its jobs are created
``canceled`` so none runs).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.domain.jobs.cancel import request_cancel
from app.domain.jobs.submission import check_payload, new_job, take_source
from app.domain.operations import ledger
from app.domain.packruns import progress, service
from app.domain.packruns.schemas import PackRunSubmit
from app.engine.handlers import known_job_types
from app.storage.models import Job, PackRun

RETRYABLE = frozenset({"failed", "canceled", "blocked"})


@dataclass(frozen=True)
class Step:
    job_type: str
    payload: dict[str, Any]
    max_attempts: int


async def create_pack_run(
    session: AsyncSession,
    caller: Caller,
    *,
    pack_name: str,
    pack_version: str,
    source_id: str,
    steps: list[Step],
    retry_of: str | None = None,
    handled: frozenset[str] | None = None,
) -> PackRun:
    now = datetime.now(UTC)
    source = await take_source(session, caller, source_id, len(steps), now)
    pack_run_id = str(uuid.uuid4())
    context: dict[str, Any] = {
        "pack_run_id": pack_run_id,
        "pack_name": pack_name,
        "pack_version": pack_version,
        "source_id": source.source_id,
    }
    if retry_of:
        context["retry_of"] = retry_of
    opened = await ledger.open_run_for(
        session,
        caller,
        run_type="pack_run.retry" if retry_of else "pack_run.execute",
        identity={"pack_run_id": pack_run_id},
        project_id=source.project_id,
        context=context,
        summary_counts={"total": len(steps), "succeeded": 0, "failed": 0},
        operator_message=f"Pack run {pack_name} {pack_version} is queued.",
        now=now,
    )
    run = PackRun(
        tenant_id=caller.tenant_id,
        pack_run_id=pack_run_id,
        project_id=source.project_id,
        source_id=source.source_id,
        pack_name=pack_name,
        pack_version=pack_version,
        status="queued",
        retry_of=retry_of,
        operation_run_id=opened.run.id,
        steps_total=len(steps),
        steps_succeeded=0,
        steps_failed=0,
        initiated_by=caller.subject,
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    handled = known_job_types() if handled is None else handled
    missing = sorted({s.job_type for s in steps} - handled)
    for index, step in enumerate(steps):
        session.add(
            new_job(
                source,
                job_type=step.job_type,
                payload=step.payload,
                now=now,
                max_attempts=step.max_attempts,
                status="canceled" if missing else "pending",
                pack_run_id=pack_run_id,
                step_index=index,
            )
        )
    await session.flush()
    if missing:
        await progress.set_status(
            session, run, "blocked", now=now, message=f"No handler for job type(s): {', '.join(missing)}."
        )
        await session.flush()
    return run


async def submit(session: AsyncSession, caller: Caller, data: PackRunSubmit) -> PackRun:
    for index, step in enumerate(data.steps):
        check_payload(step.payload, f"steps[{index}].payload")
    return await create_pack_run(
        session,
        caller,
        pack_name=data.pack_name,
        pack_version=data.pack_version,
        source_id=data.source_id,
        steps=[Step(s.job_type, s.payload, s.max_attempts) for s in data.steps],
    )


async def cancel(session: AsyncSession, caller: Caller, pack_run_id: str) -> PackRun:
    """Queued or running → ``cancel_requested``, its step jobs by the two-phase rule of job cancel
    (``app/domain/jobs/cancel.py``): waiting steps are canceled at once, active steps become
    ``cancel_requested`` and stop at their next heartbeat; with no active step the run is
    ``canceled`` in the same transaction. A terminal run is 409 ``run_not_active``."""
    run = await service.load(session, caller, pack_run_id, for_update=True)
    if run.status in progress.TERMINAL:
        raise Problem(409, "run_not_active", f"The pack run is {run.status}; only an active run can be canceled.")
    now = datetime.now(UTC)
    if run.status != "cancel_requested":
        run.cancel_requested_at = now
        await progress.set_status(session, run, "cancel_requested", now=now)
    await request_cancel(session, [Job.tenant_id == run.tenant_id, Job.pack_run_id == run.pack_run_id], now)
    await session.flush()
    settled = await progress.settle(session, run.tenant_id, run.pack_run_id, now=now)
    await session.flush()
    return settled or run


async def active_retry(session: AsyncSession, run: PackRun) -> PackRun | None:
    stmt = (
        select(PackRun)
        .where(
            PackRun.tenant_id == run.tenant_id,
            PackRun.retry_of == run.pack_run_id,
            PackRun.status.in_(progress.ACTIVE),
        )
        .order_by(PackRun.created_at)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def retry(session: AsyncSession, caller: Caller, pack_run_id: str) -> tuple[PackRun, bool]:
    """A new run of the same steps (``retryOf`` = the old run) with its own operation run.

    Returns ``(run, created)``: while an earlier retry of this run is active, that retry."""
    old = await service.load(session, caller, pack_run_id, for_update=True)
    if old.status not in RETRYABLE:
        raise Problem(
            409, "run_not_retryable", f"The pack run is {old.status}; only failed, canceled or blocked runs are retried."
        )
    existing = await active_retry(session, old)
    if existing is not None:
        return existing, False
    jobs = (
        await session.execute(
            select(Job)
            .where(Job.tenant_id == old.tenant_id, Job.pack_run_id == old.pack_run_id, Job.step_index.is_not(None))
            .order_by(Job.step_index, Job.created_at)
        )
    ).scalars()
    steps: dict[int, Step] = {}
    for job in jobs:
        steps.setdefault(job.step_index or 0, Step(job.job_type, dict(job.payload or {}), job.max_attempts))
    if not steps or old.source_id is None:
        raise Problem(409, "run_not_retryable", "The pack run has no recorded steps to run again.")
    run = await create_pack_run(
        session,
        caller,
        pack_name=old.pack_name,
        pack_version=old.pack_version,
        source_id=old.source_id,
        steps=[steps[i] for i in sorted(steps)],
        retry_of=old.pack_run_id,
    )
    return run, True

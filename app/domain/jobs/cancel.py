"""Canceling jobs, in two phases: the one rule behind job cancel and pack-run cancel.

| job status | a cancel makes it |
|---|---|
| ``pending``, ``scheduled`` | ``canceled`` at once (nothing runs it, it holds no quota slot) |
| ``leased``, ``running`` | ``cancel_requested``: the worker holding the lease cancels the handler at its next heartbeat and ends the job ``canceled``; the reconciler forces it ``canceled`` after the grace period when no worker does (``app/engine/reconciler.py``) |
| ``cancel_requested`` | unchanged: the request stands |
| terminal | unchanged (job cancel answers 409 ``job_not_active``) |

Each phase is one guarded statement (``UPDATE … WHERE status IN (…)``), so two cancels of one job,
in any number of processes, make each transition once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.domain.jobs import service
from app.domain.packruns import progress
from app.storage.models import Job

WAITING = ("pending", "scheduled")
HELD = ("leased", "running")
TERMINAL = frozenset({"succeeded", "failed", "canceled", "timed_out"})


@dataclass(frozen=True)
class Requested:
    canceled: int  # waiting jobs canceled at once
    asked: int  # held jobs now cancel_requested


async def request_cancel(session: AsyncSession, where: list[Any], now: datetime) -> Requested:
    """Apply the two-phase rule to the jobs matching ``where`` (the caller locks a pack run first)."""
    canceled = await session.execute(
        update(Job)
        .where(*where, Job.status.in_(WAITING))
        .values(
            status="canceled",
            cancel_requested=True,
            cancel_requested_at=now,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    asked = await session.execute(
        update(Job)
        .where(*where, Job.status.in_(HELD))
        .values(status="cancel_requested", cancel_requested=True, cancel_requested_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return Requested(canceled.rowcount or 0, asked.rowcount or 0)


async def cancel_job(session: AsyncSession, caller: Caller, job_id: str) -> Job:
    """Cancel one job of the caller (404 outside its tenant and project); 409 ``job_not_active``
    when it already ended. A pack step's cancel ends its pack run (the later steps never run)."""
    job = await service.load(session, caller, job_id)
    if job.status in TERMINAL:
        raise _not_active(job.status)
    now = datetime.now(UTC)
    if job.pack_run_id is not None:
        await progress.lock(session, job.tenant_id, job.pack_run_id)  # the lock order of every step change
    done = await request_cancel(session, [Job.tenant_id == job.tenant_id, Job.job_id == job.job_id], now)
    await session.refresh(job)
    if not (done.canceled or done.asked) and job.status in TERMINAL:
        raise _not_active(job.status)  # it ended (or a concurrent cancel ended it) meanwhile
    if job.pack_run_id is not None:
        await progress.settle(session, job.tenant_id, job.pack_run_id, now=now)
        await session.flush()
    return job


def _not_active(status: str) -> Problem:
    return Problem(
        409, "job_not_active", f"The job is {status}; only a job that has not ended can be canceled."
    )

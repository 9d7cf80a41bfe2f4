"""What the dispatcher may claim, in which order: the one SQL definition, used by the dispatcher
(``app/engine/dispatcher.py``) and by the reads that say why a job waits (``app/domain/jobs/why.py``).

A job is claimable when it is ``pending``/``scheduled``, due (``run_after <= now``), no cancel was
requested, it is not a pack step whose previous step has not succeeded, and — for a job outside a
pack run — its source is enabled (a pack step of a disabled source is claimed and then blocks its
run, ``app/engine/outcomes.py``). Order: priority desc, run_after, job_id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, or_
from sqlalchemy.orm import aliased

from app.storage.models import Job, Source

QUEUED = ("pending", "scheduled")
ORDER = (Job.priority.desc(), Job.run_after, Job.job_id)


def previous_step_succeeded() -> Any:
    previous = aliased(Job)
    return or_(
        Job.pack_run_id.is_(None),
        Job.step_index.is_(None),
        Job.step_index == 0,
        exists().where(
            previous.tenant_id == Job.tenant_id,
            previous.pack_run_id == Job.pack_run_id,
            previous.step_index == Job.step_index - 1,
            previous.status == "succeeded",
        ),
    )


def source_disabled() -> Any:
    """A job outside a pack run whose source is disabled."""
    return and_(
        Job.pack_run_id.is_(None),
        exists().where(
            Source.tenant_id == Job.tenant_id, Source.source_id == Job.source_id, Source.enabled.is_(False)
        ),
    )


def due(now: datetime) -> list[Any]:
    return [Job.status.in_(QUEUED), Job.run_after <= now]


def claimable(now: datetime) -> list[Any]:
    return [*due(now), Job.cancel_requested.is_(False), previous_step_succeeded(), ~source_disabled()]


def ahead_of(priority: int, run_after: datetime, job_id: str) -> Any:
    """Jobs before (priority, run_after, job_id) in dispatch order."""
    return or_(
        Job.priority > priority,
        and_(
            Job.priority == priority,
            or_(Job.run_after < run_after, and_(Job.run_after == run_after, Job.job_id < job_id)),
        ),
    )

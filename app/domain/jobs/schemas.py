"""Payloads of the job routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.domain.jobs.waiting import HEAD, WaitingReason

JobStatus = Literal[
    "pending", "scheduled", "leased", "running", "cancel_requested", "succeeded", "failed", "canceled", "timed_out"
]
JOB_STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


class JobView(msgspec.Struct, rename="camel"):
    job_id: str
    job_type: str
    source_id: str
    project_id: str | None
    status: JobStatus
    priority: int
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    pack_run_id: str | None
    replay_of_entry_id: str | None
    last_error_code: str | None
    last_error_category: str | None
    last_error_message: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    waiting_reason: WaitingReason | None
    dead_letter_entry_id: str | None


JOB_COLUMNS = JobView.__struct_fields__[:-2]  # the fields that are the job's own columns


class JobSubmitted(JobView):
    """A submitted job, and what the gateway noticed about it."""

    warnings: list[Literal["no_worker_for_job_type"]]


class JobPage(msgspec.Struct, rename="camel"):
    items: list[JobView]
    continuation_token: str | None


class StatusCounts(msgspec.Struct, rename="camel"):
    pending: int = 0
    scheduled: int = 0
    leased: int = 0
    running: int = 0
    cancel_requested: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    timed_out: int = 0
    total: int = 0


BY_REASON = (
    "The waiting jobs by what holds them: every job not due yet (`scheduled`) and, of the due ones, "
    f"the first {HEAD} of the tenant's type in dispatch order (the next to start; for a view narrowed "
    "to a project or a source, those of the view among them)."
)
UNATTRIBUTED = (
    f"Due waiting jobs past the first {HEAD} of the type in dispatch order: counted in `jobs`, not "
    f"attributed to a reason (0 while at most {HEAD} due jobs of the type wait)."
)


class WaitingReasons(msgspec.Struct):
    """Waiting jobs by reason; each key is the reason's own value (as in ``waitingReason``)."""

    scheduled: int
    pack_step_waiting: int
    source_disabled: int
    no_worker_for_job_type: int
    quota_paused: int
    quota_max_active: int
    quota_rate: int
    worker_capacity: int


class Waiting(msgspec.Struct, rename="camel"):
    """The job type's waiting jobs (``pending`` or ``scheduled``): how many, what holds them
    (``byReason``, over the jobs it attributes; ``jobs - unattributed - sum(byReason)`` are held by
    nothing and start at the next claim), and the reason most of the attributed jobs share
    (``reason``; null when none is held)."""

    jobs: Annotated[int, msgspec.Meta(description="Every waiting job of the type (exact).")]
    reason: WaitingReason | None
    by_reason: Annotated[WaitingReasons, msgspec.Meta(description=BY_REASON)]
    unattributed: Annotated[int, msgspec.Meta(ge=0, description=UNATTRIBUTED)]


NOT_WAITING = Waiting(
    jobs=0, reason=None, by_reason=WaitingReasons(*(0 for _ in WaitingReasons.__struct_fields__)), unattributed=0
)


class JobTypeCounts(msgspec.Struct, rename="camel"):
    job_type: str
    counts: StatusCounts
    waiting: Waiting


class JobSummary(msgspec.Struct, rename="camel"):
    overall: StatusCounts
    by_job_type: list[JobTypeCounts]

"""Payloads of the job routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

JobStatus = Literal["pending", "scheduled", "leased", "running", "succeeded", "failed", "canceled", "timed_out"]
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


class JobPage(msgspec.Struct, rename="camel"):
    items: list[JobView]
    continuation_token: str | None


class StatusCounts(msgspec.Struct, rename="camel"):
    pending: int = 0
    scheduled: int = 0
    leased: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    timed_out: int = 0
    total: int = 0


class JobTypeCounts(msgspec.Struct, rename="camel"):
    job_type: str
    counts: StatusCounts


class JobSummary(msgspec.Struct, rename="camel"):
    overall: StatusCounts
    by_job_type: list[JobTypeCounts]

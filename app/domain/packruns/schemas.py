"""Payloads of the pack-run routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.domain.jobs.schemas import JobStatus
from app.domain.jobs.submission import Payload

PackRunStatus = Literal[
    "queued", "running", "cancel_requested", "succeeded", "partially_succeeded", "failed", "canceled", "blocked"
]


class StepCounts(msgspec.Struct, rename="camel"):
    total: int
    succeeded: int
    failed: int


class PackRunView(msgspec.Struct, rename="camel"):
    pack_run_id: str
    pack_name: str
    pack_version: str
    status: PackRunStatus
    project_id: str | None
    source_id: str | None
    retry_of: str | None
    operation_run_id: int | None
    step_counts: StepCounts
    initiated_by: str | None
    cancel_requested_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PackRunStep(msgspec.Struct, rename="camel"):
    """One step of a pack run: its job, as it stands."""

    index: int  # 0-based, the order the steps run in
    job_type: str
    job_id: str
    status: JobStatus
    attempts: int  # attempts made so far
    last_error_code: str | None
    last_error_message: str | None  # sanitised (secrets, addresses masked), at most 2000 characters


class PackRunDetail(PackRunView):
    """One pack run: its fields, its steps in order, and why it failed."""

    steps: list[PackRunStep]
    # Why the run is failed, partially_succeeded or blocked (one sentence); null in every other status.
    failure_reason: str | None


class PackRunPage(msgspec.Struct, rename="camel"):
    items: list[PackRunView]
    continuation_token: str | None


class StepSubmit(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    job_type: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9._-]{0,127}$", max_length=128)]
    payload: Payload = {}
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3


class PackRunSubmit(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    pack_name: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=200,
            pattern=r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",
            description="Printable text, no leading or trailing white space",
        ),
    ]
    pack_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
    source_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", max_length=64)]
    steps: Annotated[list[StepSubmit], msgspec.Meta(min_length=1, max_length=100, description="Run in this order")]

"""Payloads of the pack-run routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

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
    steps: StepCounts
    initiated_by: str | None
    cancel_requested_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PackRunPage(msgspec.Struct, rename="camel"):
    items: list[PackRunView]
    continuation_token: str | None

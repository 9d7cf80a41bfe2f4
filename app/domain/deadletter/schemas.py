"""Payloads of the dead-letter routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

EntryStatus = Literal["pending", "replaying", "replayed", "discarded"]


class EntryView(msgspec.Struct, rename="camel"):
    entry_id: str
    job_id: str
    job_type: str
    source_id: str
    project_id: str | None
    category: str
    error_code: str
    message: str
    error_template: str
    payload: dict[str, Any]
    attempts: int
    status: EntryStatus
    replay_count: int
    last_replayed_at: datetime | None
    last_replay_job_id: str | None
    first_dead_lettered_at: datetime
    dead_lettered_at: datetime
    updated_at: datetime


class EntryPage(msgspec.Struct, rename="camel"):
    items: list[EntryView]
    continuation_token: str | None


class StatusTotals(msgspec.Struct, rename="camel"):
    pending: int = 0
    replaying: int = 0
    replayed: int = 0
    discarded: int = 0


class CategoryCount(msgspec.Struct, rename="camel"):
    category: str
    count: int
    pending: int


class ErrorCluster(msgspec.Struct, rename="camel"):
    error_code: str
    template: str
    count: int
    pending: int
    sample_entry_ids: list[str]
    first_seen: datetime
    last_seen: datetime


class DeadLetterStats(msgspec.Struct, rename="camel"):
    total: int
    by_status: StatusTotals
    by_category: list[CategoryCount]
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: int | None
    inflow_last_24h: int
    top_clusters: list[ErrorCluster]


class SummaryGroup(msgspec.Struct, rename="camel"):
    category: str
    error_code: str
    total: int
    pending: int
    first_dead_lettered_at: datetime
    last_dead_lettered_at: datetime


class SummaryPage(msgspec.Struct, rename="camel"):
    items: list[SummaryGroup]
    continuation_token: str | None

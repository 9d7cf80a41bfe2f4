"""Payloads of the quota routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Backpressure = Literal["none", "elevated", "saturated", "paused"]


class QuotaView(msgspec.Struct, rename="camel"):
    quota_id: str
    job_type: str
    max_active: int
    max_per_hour: int
    burst: int
    paused: bool
    paused_by: str | None
    paused_reason: str | None
    paused_at: datetime | None
    created_at: datetime
    updated_at: datetime


class QuotaPage(msgspec.Struct, rename="camel"):
    items: list[QuotaView]
    continuation_token: str | None


class QuotaUsage(msgspec.Struct, rename="camel"):
    """Configured limits beside what the job engine observes for one job type."""

    quota_id: str
    job_type: str
    max_active: int
    max_per_hour: int
    burst: int
    paused: bool
    active: int
    queued: int
    throttled: int
    dispatched_last_hour: int
    utilisation: float
    backpressure: Backpressure


class QuotaTotals(msgspec.Struct, rename="camel"):
    quotas: int
    paused: int
    active: int
    queued: int
    throttled: int
    dispatched_last_hour: int


class QuotaSummary(msgspec.Struct, rename="camel"):
    items: list[QuotaUsage]
    totals: QuotaTotals

"""Payloads of the quota routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.domain.jobs.schemas import Waiting

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
    waiting: Waiting


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


JobTypeText = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", max_length=128)]
MaxActive = Annotated[int, msgspec.Meta(ge=1, le=100_000, description="Jobs leased or running at once")]
MaxPerHour = Annotated[int, msgspec.Meta(ge=1, le=10_000_000, description="Starts in any rolling hour")]
Burst = Annotated[
    int, msgspec.Meta(ge=1, le=10_000_000, description="Starts in any rolling minute; at most `maxPerHour`")
]


_CROSS_FIELD = "`burst` must not exceed `maxPerHour` (else 400 `validation_failed`), a rule JSON Schema cannot state."


class QuotaCreate(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    schema_extra: ClassVar[dict[str, Any]] = {"description": "One quota per jobType in the tenant. " + _CROSS_FIELD}

    job_type: JobTypeText
    max_active: MaxActive
    max_per_hour: MaxPerHour
    burst: Burst


class QuotaReplace(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Full replace of the limits; ``jobType`` may be repeated but never changed."""

    schema_extra: ClassVar[dict[str, Any]] = {
        "description": "Full replace of the limits; `jobType` may be repeated but never changed (409 "
        "`job_type_immutable`). " + _CROSS_FIELD
    }

    max_active: MaxActive
    max_per_hour: MaxPerHour
    burst: Burst
    job_type: JobTypeText | None = None

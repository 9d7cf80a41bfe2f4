"""Payloads of the dead-letter routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

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
    # The jobs created by replaying the entry, oldest first (empty when none).
    replay_job_ids: list[str]


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
    inflow_last_24h: int = msgspec.field(name="inflowLast24h")
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


# -- replays ------------------------------------------------------------------------------------

FilterText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
BATCH_MAX = 200
MAX_ENTRIES_DEFAULT = 10_000
MAX_ENTRIES_MAX = 100_000
RATE_DEFAULT = 100
RATE_MAX = 100_000
SAMPLE_SIZE = 10


class ReplayAccepted(msgspec.Struct, rename="camel"):
    """A single replay: the entry is `replaying` and its new job is queued."""

    entry_id: str
    job_id: str
    status: EntryStatus
    replay_count: int
    last_replayed_at: datetime


class BatchReplayRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    # Any string: an id that names no entry of the tenant is reported `not_found`.
    entry_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=BATCH_MAX)]
    dry_run: bool = False


ReplayOutcome = Literal["replayed", "skipped", "not_found"]
SkipReason = Literal["replay_in_progress", "already_replayed", "entry_discarded"]


class EntryOutcome(msgspec.Struct, rename="camel", omit_defaults=True):
    entry_id: str
    outcome: ReplayOutcome
    reason: SkipReason | None = None
    job_id: str | None = None


class BatchReplayResult(msgspec.Struct, rename="camel"):
    dry_run: bool
    operation_run_id: int | None
    total: int
    replayed: int
    skipped: int
    not_found: int
    results: list[EntryOutcome]


class ReplayFilter(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """At least one criterion (an empty filter is 400 `validation_failed`). A criterion is left out,
    never ``null``: ``null`` is refused when decoding (400), as the contract says; a criterion left
    out is None here (msgspec does not check defaults against the type)."""

    schema_extra: ClassVar[dict[str, Any]] = {
        "minProperties": 1,
        "description": "Which pending entries to replay: at least one criterion, each left out rather than "
        "null. `deadLetteredFrom` is inclusive, `deadLetteredTo` exclusive; an empty or reversed range "
        "matches nothing.",
    }

    job_type: FilterText = None  # type: ignore[assignment]
    category: FilterText = None  # type: ignore[assignment]
    error_code: FilterText = None  # type: ignore[assignment]
    source_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = None  # type: ignore[assignment]
    dead_lettered_from: datetime = None  # type: ignore[assignment]
    dead_lettered_to: datetime = None  # type: ignore[assignment]


class ReplayPendingRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    filter: ReplayFilter
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=MAX_ENTRIES_MAX)] = MAX_ENTRIES_DEFAULT
    rate_per_second: Annotated[int, msgspec.Meta(ge=1, le=RATE_MAX)] = RATE_DEFAULT
    dry_run: bool = False


class ReplayPendingPreview(msgspec.Struct, rename="camel"):
    """A dry run: what a replay with this filter would take now; nothing changes."""

    dry_run: bool
    matched: int
    would_replay: int
    sample: list[EntryView]


class ReplayPendingAccepted(msgspec.Struct, rename="camel"):
    operation_run_id: int
    status: str
    deduplicated: bool


# -- discards -----------------------------------------------------------------------------------

DISCARD_MAX_ENTRIES_DEFAULT = 1_000
DISCARD_MAX_ENTRIES_MAX = 10_000  # one transaction: bounded

DiscardOutcome = Literal["discarded", "skipped", "not_found"]
DiscardSkipReason = Literal["replay_in_progress", "entry_not_pending"]


class BatchDiscardRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    # Any string: an id that names no entry of the tenant is reported `not_found`.
    entry_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=BATCH_MAX)]
    dry_run: bool = False


class DiscardEntryOutcome(msgspec.Struct, rename="camel", omit_defaults=True):
    entry_id: str
    outcome: DiscardOutcome
    reason: DiscardSkipReason | None = None


class BatchDiscardResult(msgspec.Struct, rename="camel"):
    dry_run: bool
    total: int
    discarded: int
    skipped: int
    not_found: int
    results: list[DiscardEntryOutcome]


class DiscardPendingRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    filter: ReplayFilter
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=DISCARD_MAX_ENTRIES_MAX)] = DISCARD_MAX_ENTRIES_DEFAULT
    dry_run: bool = False


class DiscardPendingPreview(msgspec.Struct, rename="camel"):
    """A dry run: what a discard with this filter would take now; nothing changes."""

    dry_run: bool
    matched: int
    would_discard: int
    sample: list[str]


class DiscardPendingResult(msgspec.Struct, rename="camel"):
    """A discard by filter, done: its operation run (completed) and its counts."""

    dry_run: bool
    operation_run_id: int
    status: str
    outcome: str
    matched: int
    discarded: int


# -- a running replay by filter: cancel it, change its pace ------------------------------------------


class ReplayRunView(msgspec.Struct, rename="camel"):
    """A replay-by-filter run and its counts: `matched` (entries taken at the start, at most
    maxEntries) = `replayed` + `skipped` + `failed` + `canceled` once the run has ended."""

    operation_run_id: int
    status: Literal["queued", "running", "completed"]
    outcome: Literal["pending", "succeeded", "partially_succeeded", "failed"]
    rate_per_second: int
    max_entries: int
    matched: int
    replayed: int
    skipped: int
    failed: int
    canceled: int


class ReplayRunChange(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    rate_per_second: Annotated[int, msgspec.Meta(ge=1, le=RATE_MAX)]

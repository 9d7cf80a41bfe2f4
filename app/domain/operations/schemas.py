"""Payloads of the lifecycle routes, field for field as the seed contracts 000 and 001 name them
(snake_case, unlike the rest of the gateway). Objects the seeds close are ``forbid_unknown_fields``
Structs, which ``app/http/openapi.py`` turns into ``additionalProperties: false``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

RunStatus = Literal["queued", "running", "completed"]
RunOutcome = Literal["pending", "succeeded", "partially_succeeded", "blocked", "failed"]
# Seed 000 lists four states; a run without evidence (``unknown`` in seed 001) is listed as
# likely_stale while active (see lifecycle.listed_freshness).
ListedFreshness = Literal["fresh_active", "likely_stale", "reconciled_failed", "terminal_normal"]
FreshnessState = Literal["fresh_active", "likely_stale", "reconciled_failed", "terminal_normal", "unknown"]
ProblemClass = Literal["none", "active_stale_attention", "terminal_follow_up"]
SurfaceCategory = Literal[
    "healthy_active", "past_expected_lifecycle", "likely_stale", "no_longer_active", "unknown"
]
ReconciliationSource = Literal["failed_callback", "scheduled_reconciler", "adapter_reconciler"]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


# --- seed 000: /api/admin/operations ---------------------------------------------------------


class FailureSummaryItem(msgspec.Struct):
    code: str
    message: str


# The seed requires none of these fields; the gateway always fills every one.
class ReconciliationRecord(msgspec.Struct):
    reconciled_at: datetime | msgspec.UnsetType = msgspec.UNSET
    source: ReconciliationSource | msgspec.UnsetType = msgspec.UNSET
    reason_code: str | msgspec.UnsetType = msgspec.UNSET
    reason_message: str | msgspec.UnsetType = msgspec.UNSET
    evidence: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Diagnostics(msgspec.Struct):
    threshold_seconds: int | msgspec.UnsetType = msgspec.UNSET
    evidence: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class OperationRunListItem(msgspec.Struct):
    id: int
    type: str
    status: RunStatus
    outcome: RunOutcome
    freshness_state: ListedFreshness
    reconciled: bool
    created_at: datetime
    type_label: str | msgspec.UnsetType = msgspec.UNSET
    tenant_id: int | None = None
    initiator_name: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # The seed types it as a plain string: a run without a message omits it.
    operator_message: str | msgspec.UnsetType = msgspec.UNSET


class OperationRunDetail(OperationRunListItem):
    summary_counts: dict[str, float] = msgspec.field(default_factory=dict)
    failure_summary: list[FailureSummaryItem] = msgspec.field(default_factory=list)
    reconciliation: ReconciliationRecord | None = None
    diagnostics: Diagnostics | None = None


class OperationRunPage(msgspec.Struct):
    data: list[OperationRunListItem]
    continuation_token: str | None = msgspec.field(name="continuationToken", default=None)


# --- seed 001: console surfaces ----------------------------------------------------------------


class OperationRunActiveStateProjection(msgspec.Struct, forbid_unknown_fields=True):
    freshness_state: FreshnessState
    problem_class: ProblemClass
    surface_category: SurfaceCategory
    is_currently_active: bool
    is_reconciled: bool
    show_in_active_progress: bool
    keep_active_polling: bool
    compact_label: str | None = None
    diagnostic_label: str | None = None
    lifecycle_label: str | None = None
    guidance: str | None = None
    stale_lineage_note: str | None = None


class OperationRunSurfaceItem(msgspec.Struct, forbid_unknown_fields=True):
    run_id: PositiveInt
    operation_label: str
    active_state: OperationRunActiveStateProjection
    tenant_id: PositiveInt | None = None
    tenant_label: str | None = None
    status_label: str | None = None
    outcome_label: str | None = None
    detail_url: str | None = None


class TenantActivityOperationsSummary(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: PositiveInt
    items: list[OperationRunSurfaceItem]


class TenantOperationProgressOverlay(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: PositiveInt
    has_visible_active_runs: bool
    poll_interval: Literal["10s"] | None
    items: list[OperationRunSurfaceItem]


class OperationRunCollectionContract(msgspec.Struct, forbid_unknown_fields=True):
    items: list[OperationRunSurfaceItem]
    tenant_filter: PositiveInt | None = None
    active_tab: str | None = None
    problem_class: str | None = None


class OperationRunDetailContract(msgspec.Struct, forbid_unknown_fields=True):
    run_id: PositiveInt
    operation_label: str
    active_state: OperationRunActiveStateProjection
    top_summary: str | None = None
    diagnostics_visible_after_summary: Literal[True] = True

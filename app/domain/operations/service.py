"""Operation runs as the lifecycle surfaces show them: who sees which runs, and the views.

Visibility (spec §7): the runs of the ``X-Stella-Tenant`` tenant and of the other tenants of
its workspace that the token also grants, plus that workspace's workspace-scoped runs
(``tenant_id`` null). ``X-Stella-Project`` narrows to runs of that project, which leaves out
workspace-scoped runs (they belong to no project). Every view goes through
``lifecycle.project``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller, TenantInfo
from app.core.problems import not_found
from app.domain.operations import queries
from app.domain.operations.lifecycle import (
    OUTCOME_LABELS,
    STATUS_LABELS,
    Projection,
    Surface,
    project,
    type_label,
)
from app.domain.operations.schemas import (
    Diagnostics,
    FailureSummaryItem,
    OperationRunDetail,
    OperationRunDetailContract,
    OperationRunListItem,
    OperationRunSurfaceItem,
    ReconciliationRecord,
)
from app.storage.models import OperationRun
from app.thresholds import Thresholds

RECONCILIATION_SOURCES = ("failed_callback", "scheduled_reconciler", "adapter_reconciler")


@dataclass(frozen=True)
class Visibility:
    workspace_id: int
    tenants: Mapping[int, TenantInfo]
    project: str | None

    def condition(self) -> Any:
        return visible_condition(self.workspace_id, list(self.tenants), self.project)

    def select(self) -> Select[Any]:
        return select(OperationRun).where(self.condition())

    def tenant(self, tenant_id: int) -> TenantInfo:
        """A visible tenant, or 404."""
        info = self.tenants.get(tenant_id)
        if info is None:
            raise not_found("Tenant")
        return info

    def label(self, tenant_id: int | None) -> str | None:
        info = self.tenants.get(tenant_id) if tenant_id is not None else None
        return info.key if info else None


def visible_condition(workspace: Any, tenants: Any, project: Any) -> Any:
    """The runs a caller sees (spec §7): of its workspace, of one of ``tenants`` or of none, in a
    lifecycle status, and of ``project`` unless it is None. Values or bound parameters alike."""
    # Every visible tenant is in the workspace, so the workspace condition holds for all
    # visible runs and lets the (workspace_id, created_at, id) index serve the list order.
    scope = or_(OperationRun.tenant_id.in_(tenants), OperationRun.tenant_id.is_(None))
    conditions = [
        OperationRun.workspace_id == workspace,
        OperationRun.status.in_(queries.LIFECYCLE_STATUSES),
        scope,
    ]
    if project is not None:
        conditions.append(OperationRun.project_id == project)
    return and_(*conditions)


async def visibility(caller: Caller, runtime: Any) -> Visibility:
    workspace_id = caller.tenant.workspace_id
    granted = await runtime.tenants.in_workspace(workspace_id, caller.granted_tenants)
    tenants = {t.id: t for t in granted}
    tenants[caller.tenant.id] = caller.tenant
    return Visibility(workspace_id, tenants, caller.project)


async def load(session: AsyncSession, seen: Visibility, run_id: int) -> OperationRun:
    run = (await session.execute(seen.select().where(OperationRun.id == run_id))).scalar_one_or_none()
    if run is None:
        raise not_found("Operation run")
    return run


def now_utc() -> datetime:
    return datetime.now(UTC)


def projection(run: OperationRun, now: datetime, thresholds: Thresholds, surface: Surface = "compact") -> Projection:
    return project(run, now, thresholds, surface=surface)


# --- seed 000 ------------------------------------------------------------------------------------


def list_item(run: OperationRun, freshness: str, reconciled: bool) -> OperationRunListItem:
    """The seed-000 list item, with what it shows of the run's projection (``listed_state``)."""
    r = run
    message = r.operator_message
    return OperationRunListItem(
        id=r.id,
        type=r.type,
        status=r.status,  # type: ignore[arg-type]
        outcome=r.outcome,  # type: ignore[arg-type]
        freshness_state=freshness,  # type: ignore[arg-type]
        reconciled=reconciled,
        created_at=r.created_at,
        type_label=type_label(r.type),
        tenant_id=r.tenant_id,
        initiator_name=r.initiator_name,
        started_at=r.started_at,
        completed_at=r.completed_at,
        operator_message=msgspec.UNSET if message is None else message,
    )


def reconciliation_record(run: OperationRun) -> ReconciliationRecord | None:
    if run.status != "completed" or run.reconciled_at is None:
        return None
    record = dict(run.reconciliation or {})
    source = record.get("source")
    return ReconciliationRecord(
        reconciled_at=run.reconciled_at,
        source=source if source in RECONCILIATION_SOURCES else "scheduled_reconciler",
        reason_code=str(record.get("reason_code") or "run.reconciled"),
        reason_message=str(record.get("reason_message") or ""),
        evidence=dict(record.get("evidence") or {}),
    )


def detail(run: OperationRun, p: Projection) -> OperationRunDetail:
    counts = {
        k: v
        for k, v in (run.summary_counts or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    failures = [
        FailureSummaryItem(code=str(f.get("code", "")), message=str(f.get("message", "")))
        for f in (run.failure_summary or [])
        if isinstance(f, dict)
    ]
    return OperationRunDetail(
        **msgspec.structs.asdict(list_item(run, p.listed_freshness, p.is_reconciled)),
        summary_counts=counts,
        failure_summary=failures,
        reconciliation=reconciliation_record(run),
        diagnostics=Diagnostics(threshold_seconds=p.threshold_seconds, evidence=dict(p.evidence)),
    )


# --- seed 001 ------------------------------------------------------------------------------------


def surface_item(
    run: OperationRun, p: Projection, seen: Visibility, detail_url: str
) -> OperationRunSurfaceItem:
    return OperationRunSurfaceItem(
        run_id=run.id,
        tenant_id=run.tenant_id,
        tenant_label=seen.label(run.tenant_id),
        operation_label=type_label(run.type),
        status_label=STATUS_LABELS.get(run.status),
        outcome_label=OUTCOME_LABELS.get(run.outcome),
        active_state=p.active_state(),
        detail_url=detail_url,
    )


def detail_contract(run: OperationRun, p: Projection) -> OperationRunDetailContract:
    label = type_label(run.type)
    summary = f"{label}: {p.compact_label}"
    if run.operator_message:
        summary += f". {run.operator_message}"
    return OperationRunDetailContract(
        run_id=run.id,
        operation_label=label,
        active_state=p.active_state(),
        top_summary=summary,
        diagnostics_visible_after_summary=True,
    )

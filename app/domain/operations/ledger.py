"""The operation-run ledger (seeds 003 and 004): one row per asynchronous operation, created
before any of its work is dispatched.

Identity: a run's ``run_identity_hash`` is a SHA-256 over its type and identifying context.
While a run is active (``queued`` or ``running``) a partial unique index refuses a second active
run with the same identity in the same tenant (or, for workspace-scoped runs, the same
workspace); :func:`open_run` turns that refusal into "return the existing run".

Identity rules of this product's run types (see docs/operations.md):

- ``deadletter.replay_pending`` — deterministic over the filter: the same filter while its run is
  active returns that run;
- ``ops.reconcile`` — deterministic per workspace: two reconcilers never run at once;
- ``deadletter.replay_batch``, ``deadletter.discard_pending``, ``pack_run.execute``,
  ``pack_run.retry`` — unique per request
  (a nonce), so two requests are two runs (a retry of one pack run is deduplicated by the
  pack-run service, which returns the active retry).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.sanitize import sanitize
from app.storage.models import ACTIVE_RUN_STATUSES, OperationRun

RUN_TYPES = (
    "pack_run.execute",
    "pack_run.retry",
    "deadletter.replay_pending",
    "deadletter.replay_batch",
    "deadletter.discard_pending",
    "ops.reconcile",
)
DETERMINISTIC_TYPES = frozenset({"deadletter.replay_pending", "ops.reconcile"})

# The catalogue of summary_counts keys; anything else is dropped when counts are stored.
SUMMARY_KEYS = frozenset(
    {
        "total",
        "matched",
        "processed",
        "replayed",
        "discarded",
        "skipped",
        "failed",
        "succeeded",
        "canceled",
        "not_found",
        "reconciled",
        "checked",
    }
)

# Pack-run status -> (operation-run status, outcome, failure code) (spec §7).
PACK_RUN_TO_OPERATION: Mapping[str, tuple[str, str, str | None]] = {
    "queued": ("queued", "pending", None),
    "running": ("running", "pending", None),
    "cancel_requested": ("running", "pending", None),
    "succeeded": ("completed", "succeeded", None),
    "partially_succeeded": ("completed", "partially_succeeded", None),
    "failed": ("completed", "failed", "run.failed"),
    "timed_out": ("completed", "failed", "run.timed_out"),
    "canceled": ("completed", "failed", "run.canceled"),
    "blocked": ("completed", "blocked", "run.blocked"),
}


def identity_hash(run_type: str, identity: Mapping[str, Any]) -> str:
    """SHA-256 over the type and the identifying context (canonical JSON)."""
    canonical = json.dumps({"type": run_type, **identity}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def normalise_counts(counts: Mapping[str, Any]) -> dict[str, int]:
    """Keep catalogue keys with non-negative integer values."""
    return {
        key: int(value)
        for key, value in counts.items()
        if key in SUMMARY_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    }


def failure_item(code: str, message: str) -> dict[str, str]:
    """A ``failure_summary`` entry: a stable reason code and a sanitised, bounded message."""
    return {"code": code[:64], "message": sanitize(message)[:500]}


@dataclass(frozen=True)
class Opened:
    run: OperationRun
    created: bool


async def open_run_for(session: AsyncSession, caller: Caller, *, run_type: str, **fields: Any) -> Opened:
    """:func:`open_run` for a run a caller starts: its workspace, tenant, project (unless
    ``project_id`` is given), user and initiator from the caller."""
    fields.setdefault("project_id", caller.project)
    return await open_run(
        session,
        run_type=run_type,
        workspace_id=caller.tenant.workspace_id,
        tenant_id=caller.tenant_id,
        user_id=caller.subject,
        initiator=caller.subject,
        **fields,
    )


async def open_run(
    session: AsyncSession,
    *,
    run_type: str,
    workspace_id: int,
    tenant_id: int | None,
    identity: Mapping[str, Any] | None = None,
    project_id: str | None = None,
    initiator: str | None = None,
    user_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    summary_counts: Mapping[str, Any] | None = None,
    operator_message: str | None = None,
    status: str = "queued",
    now: datetime | None = None,
    retry_on_race: bool = True,
) -> Opened:
    """Create the run row (flushed, not committed), or return the active run of the same identity.

    Deterministic types hash ``identity``; other types add a nonce, so they never deduplicate.
    When the conflicting run completes between the refused insert and the lookup, the insert is
    tried again (``retry_on_race``), or the ``IntegrityError`` is raised (``retry_on_race=False``:
    the caller wants to know that another run of the identity was active a moment ago).
    """
    if run_type not in RUN_TYPES:
        raise ValueError(f"unknown operation type {run_type!r}")
    now = now or datetime.now(UTC)
    scope = {"tenant_id": tenant_id, "workspace_id": workspace_id, **(identity or {})}
    if run_type not in DETERMINISTIC_TYPES:
        scope["nonce"] = uuid.uuid4().hex
    digest = identity_hash(run_type, scope)
    run = OperationRun(
        workspace_id=workspace_id,
        tenant_id=tenant_id,
        project_id=project_id,
        user_id=user_id,
        initiator_name=initiator,
        type=run_type,
        status=status,
        outcome="pending",
        run_identity_hash=digest,
        summary_counts=normalise_counts(summary_counts or {}),
        failure_summary=[],
        context=dict(context or {}),
        operator_message=operator_message,
        heartbeat_at=now if status == "running" else None,
        started_at=now if status == "running" else None,
        created_at=now,
        updated_at=now,
    )
    for attempt in range(3):
        try:
            async with session.begin_nested():
                session.add(run)
                await session.flush()
        except IntegrityError:
            existing = await active_run(session, workspace_id=workspace_id, tenant_id=tenant_id, digest=digest)
            if existing is not None:
                return Opened(existing, False)
            if not retry_on_race or attempt == 2:
                raise
            run = _copy(run)
            continue
        break
    return Opened(run, True)


def _copy(run: OperationRun) -> OperationRun:
    """A fresh, unsaved row with the same values (a refused one cannot be added again)."""
    columns = [c.key for c in OperationRun.__table__.columns if c.key != "id"]
    return OperationRun(**{key: getattr(run, key) for key in columns})


async def active_run(
    session: AsyncSession, *, workspace_id: int, tenant_id: int | None, digest: str
) -> OperationRun | None:
    stmt = select(OperationRun).where(
        OperationRun.run_identity_hash == digest, OperationRun.status.in_(ACTIVE_RUN_STATUSES)
    )
    if tenant_id is None:
        stmt = stmt.where(OperationRun.workspace_id == workspace_id, OperationRun.tenant_id.is_(None))
    else:
        stmt = stmt.where(OperationRun.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


def start(run: OperationRun, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    if run.status == "queued":
        run.status = "running"
        run.started_at = run.started_at or now
    run.heartbeat_at = now
    run.updated_at = now


def heartbeat(run: OperationRun, counts: Mapping[str, Any] | None = None, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    run.heartbeat_at = now
    run.updated_at = now
    if counts is not None:
        run.summary_counts = normalise_counts(counts)


def complete(
    run: OperationRun,
    outcome: str,
    *,
    counts: Mapping[str, Any] | None = None,
    failures: list[dict[str, str]] | None = None,
    message: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Complete an active run; a run already completed (e.g. reconciled) keeps its outcome.

    Returns False when the run was already completed (the caller records the late report)."""
    if run.status == "completed":
        return False
    now = now or datetime.now(UTC)
    run.status = "completed"
    run.outcome = outcome
    run.completed_at = now
    run.updated_at = now
    run.started_at = run.started_at or now
    if counts is not None:
        run.summary_counts = normalise_counts(counts)
    if failures is not None:
        run.failure_summary = [failure_item(f["code"], f["message"]) for f in failures]
    if message is not None:
        run.operator_message = sanitize(message)[:512]
    return True


def follow_pack_run(run: OperationRun, pack_status: str, *, message: str | None = None, now: datetime | None = None) -> None:
    """Keep a pack run's operation run in step with the pack run's status (spec §7)."""
    status, outcome, failure_code = PACK_RUN_TO_OPERATION[pack_status]
    if status == "completed":
        failures = [failure_item(failure_code, message or pack_status.replace("_", " "))] if failure_code else []
        complete(run, outcome, failures=failures, message=message, now=now)
    elif status == "running":
        start(run, now)


LATE_REPORTS_KEPT = 10


def record_late_report(
    session: AsyncSession | None, run: OperationRun, report: Mapping[str, Any], now: datetime | None = None
) -> None:
    """Keep a worker's report that arrived after the run was completed (e.g. reconciled) as
    evidence, without changing the run's status or outcome (no flip-flop).

    A reconciled run keeps it in ``reconciliation.evidence.late_reports``, any other completed run
    in ``context.late_reports`` (the last :data:`LATE_REPORTS_KEPT`). ``report`` may carry
    ``outcome``, ``counts``, ``message`` and ``worker``; messages are sanitised."""
    now = now or datetime.now(UTC)
    entry: dict[str, Any] = {"received_at": now.isoformat().replace("+00:00", "Z")}
    if isinstance(report.get("outcome"), str):
        entry["outcome"] = report["outcome"][:24]
    if isinstance(report.get("counts"), Mapping):
        entry["counts"] = normalise_counts(report["counts"])
    if isinstance(report.get("message"), str):
        entry["message"] = sanitize(report["message"])[:500]
    if isinstance(report.get("worker"), str):
        entry["worker"] = sanitize(report["worker"])[:128]
    # JSON columns are replaced, not mutated, so the change is flushed.
    if run.reconciled_at is not None:
        record = dict(run.reconciliation or {})
        evidence = dict(record.get("evidence") or {})
        evidence["late_reports"] = [*evidence.get("late_reports", []), entry][-LATE_REPORTS_KEPT:]
        record["evidence"] = evidence
        run.reconciliation = record
    else:
        context = dict(run.context or {})
        context["late_reports"] = [*context.get("late_reports", []), entry][-LATE_REPORTS_KEPT:]
        run.context = context
    run.updated_at = now


def report(
    session: AsyncSession | None,
    run: OperationRun,
    outcome: str,
    *,
    counts: Mapping[str, Any] | None = None,
    failures: list[dict[str, str]] | None = None,
    message: str | None = None,
    now: datetime | None = None,
) -> bool:
    """A worker's final report: :func:`complete`, or, when the run was already completed,
    :func:`record_late_report`. Returns whether the report completed the run."""
    if complete(run, outcome, counts=counts, failures=failures, message=message, now=now):
        return True
    record_late_report(session, run, {"outcome": outcome, "counts": counts or {}, "message": message}, now)
    return False

"""Audit rows: one per mutating request, allowed or refused, never updated or deleted."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.sanitize import sanitize
from app.storage.models import AuditRecord


def audit_row(
    caller: Caller,
    *,
    action: str,
    method: str,
    route: str,
    target: str | None,
    status: int,
    code: str | None = None,
    dry_run: bool = False,
) -> AuditRecord:
    return AuditRecord(
        occurred_at=datetime.now(UTC),
        tenant_id=caller.tenant.id,
        project_id=caller.project,
        subject=caller.subject,
        client_id=caller.client_id,
        action=action,
        method=method,
        route=route[:256],
        target=sanitize(target)[:256] if target else None,
        # Rows can never be deleted: a secret or address pasted into a reason must not be kept forever.
        reason=sanitize(caller.reason)[:512] if caller.reason else caller.reason,
        ticket=sanitize(caller.ticket)[:128] if caller.ticket else caller.ticket,
        trace_id=caller.trace_id,
        idempotency_key=caller.idempotency_key,
        result_status=status,
        result_code=code,
        dry_run=dry_run,
    )


def record(session: AsyncSession, caller: Caller, **fields) -> None:  # type: ignore[no-untyped-def]
    """Add the audit row to ``session``: it commits with the change it describes, or not at all."""
    session.add(audit_row(caller, **fields))

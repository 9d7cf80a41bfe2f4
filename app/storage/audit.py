"""Audit rows: one per mutating request, allowed or refused, never updated or deleted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.sanitize import sanitize
from app.storage.models import AuditRecord


def audit_values(
    caller: Caller,
    *,
    action: str,
    method: str,
    route: str,
    target: str | None,
    status: int,
    code: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    return dict(
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


def audit_row(caller: Caller, **fields: Any) -> AuditRecord:
    return AuditRecord(**audit_values(caller, **fields))


INSERT_AUDIT = insert(AuditRecord.__table__)  # Core: a row written once and never read back


async def write_audit(session: AsyncSession, values: dict[str, Any]) -> None:
    """Write the audit row of ``values`` (:func:`audit_values`) in ``session``'s transaction: it
    commits with the change it describes, or not at all."""
    await session.execute(INSERT_AUDIT, values)

"""Reading the audit log of the caller's tenant (and project)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.domain.audit.schemas import AuditPage, AuditView
from app.instants import iso_or_none
from app.storage.models import AuditRecord
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((AuditRecord.occurred_at, AuditRecord.id), descending=True)


def view(row: AuditRecord, tenant: str) -> AuditView:
    r = row
    return AuditView(
        audit_id=r.id,
        occurred_at=r.occurred_at,
        tenant=tenant,
        project_id=r.project_id,
        subject=r.subject,
        client_id=r.client_id,
        action=r.action,
        method=r.method,
        route=r.route,
        target=r.target,
        reason=r.reason,
        ticket=r.ticket,
        trace_id=r.trace_id,
        idempotency_key=r.idempotency_key,
        result_status=r.result_status,
        result_code=r.result_code,
        dry_run=r.dry_run,
    )


FILTERS = (("action", AuditRecord.action), ("subject", AuditRecord.subject), ("target", AuditRecord.target))


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    stmt = select(AuditRecord).where(AuditRecord.tenant_id == bindparam("tenant"))
    return where_present(stmt, present, (("project", AuditRecord.project_id), *FILTERS), within=AuditRecord.occurred_at)


LIST = PageQuery(_list, ORDER)


async def list_audit(
    session: AsyncSession,
    caller: Caller,
    codec: CursorCodec,
    *,
    action: str | None,
    subject: str | None,
    target: str | None,
    occurred_from: datetime | None,
    occurred_to: datetime | None,
    limit: int,
    token: str | None,
) -> AuditPage:
    filters: dict[str, Any] = {"action": action, "subject": subject, "target": target}
    values = {**filters, "tenant": caller.tenant_id, "project": caller.project, "from": occurred_from, "to": occurred_to}
    bound = (*sorted(filters.items()), ("from", iso_or_none(occurred_from)), ("to", iso_or_none(occurred_to)))
    scope = PageScope(caller.tenant.key, caller.project, "audit", bound, ORDER.name)
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return AuditPage(items=[view(r, caller.tenant.key) for r in rows], continuation_token=next_token)

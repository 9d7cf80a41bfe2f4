"""The security envelope as a specification: tenant, scopes, reason/ticket/audit, Idempotency-Key,
rate limit, secrets and trace id. Token and DPoP cryptography are specified elsewhere.

Small helpers shared by these files live here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.storage.models import AuditRecord, Source, Tenant


def without_trace(body: dict[str, Any]) -> dict[str, Any]:
    """A problem body minus its per-request ``traceId``."""
    return {k: v for k, v in body.items() if k != "traceId"}


async def tenant_id(runtime: Any, key: str) -> int:
    async with runtime.sessions() as session:
        return (await session.execute(select(Tenant.id).where(Tenant.key == key))).scalar_one()


async def audit_rows(runtime: Any, tenant: str) -> list[AuditRecord]:
    """Every audit row of ``tenant``, oldest first."""
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(AuditRecord).where(AuditRecord.tenant_id == tid).order_by(AuditRecord.id)
        )
        return list(rows.scalars())


async def source_ids(runtime: Any, tenant: str) -> list[str]:
    """The ids of the sources stored for ``tenant`` (read from the database, not through the API)."""
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Source.source_id).where(Source.tenant_id == tid).order_by(Source.source_id)
        )
        return list(rows.scalars())

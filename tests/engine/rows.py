"""Reading what an action left in the database: audit rows and a snapshot of a tenant's rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.storage.models import AuditRecord, Job, OperationRun, PackRun, Source, Tenant


async def tenant_id(runtime: Any, key: str) -> int:
    async with runtime.sessions() as session:
        return (await session.execute(select(Tenant.id).where(Tenant.key == key))).scalar_one()


async def audit_rows(runtime: Any, key: str, action: str | None = None) -> list[AuditRecord]:
    tid = await tenant_id(runtime, key)
    async with runtime.sessions() as session:
        stmt = select(AuditRecord).where(AuditRecord.tenant_id == tid).order_by(AuditRecord.id)
        if action is not None:
            stmt = stmt.where(AuditRecord.action == action)
        return list((await session.execute(stmt)).scalars())


async def snapshot(runtime: Any, key: str) -> dict[str, Any]:
    """What a refused request must leave unchanged: row counts and source counters of the tenant."""
    tid = await tenant_id(runtime, key)
    async with runtime.sessions() as session:
        counts = {}
        for name, model in (("jobs", Job), ("pack_runs", PackRun), ("operation_runs", OperationRun)):
            counts[name] = (await session.execute(select(func.count()).select_from(model).where(model.tenant_id == tid))).scalar_one()
        statuses = await session.execute(select(Job.job_id, Job.status, Job.cancel_requested).where(Job.tenant_id == tid))
        counts["job_statuses"] = sorted(tuple(r) for r in statuses)
        runs = await session.execute(select(PackRun.pack_run_id, PackRun.status).where(PackRun.tenant_id == tid))
        counts["pack_run_statuses"] = sorted(tuple(r) for r in runs)
        sources = await session.execute(
            select(Source.source_id, Source.jobs_submitted, Source.last_job_at).where(Source.tenant_id == tid)
        )
        counts["sources"] = sorted(tuple(r) for r in sources)
        return counts

"""Shared steps of the engine tests: submit through the gateway, read rows from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.storage.models import DeadLetterEntry, Job, PackRun, Quota, Tenant


async def submit(client: Any, factory: Any, tenant: str, source_id: str, job_type: str, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/jobengine/jobs",
        json={"jobType": job_type, "sourceId": source_id, **body},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def submit_pack(client: Any, factory: Any, tenant: str, source_id: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    response = await client.post(
        "/jobengine/pack-runs",
        json={"packName": "test-pack", "packVersion": "1.0.0", "sourceId": source_id, "steps": steps},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def tenant_id(runtime: Any, key: str) -> int:
    async with runtime.sessions() as session:
        return (await session.execute(select(Tenant.id).where(Tenant.key == key))).scalar_one()


async def jobs_of(runtime: Any, key: str) -> list[Job]:
    async with runtime.sessions() as session:
        stmt = select(Job).join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.key == key).order_by(Job.created_at)
        return list((await session.execute(stmt)).scalars())


async def job(runtime: Any, key: str, job_id: str) -> Job:
    return next(j for j in await jobs_of(runtime, key) if j.job_id == job_id)


async def entries_of(runtime: Any, key: str) -> list[DeadLetterEntry]:
    async with runtime.sessions() as session:
        stmt = select(DeadLetterEntry).join(Tenant, Tenant.id == DeadLetterEntry.tenant_id).where(Tenant.key == key)
        return list((await session.execute(stmt)).scalars())


async def pack_run(runtime: Any, key: str, pack_run_id: str) -> PackRun:
    async with runtime.sessions() as session:
        stmt = select(PackRun).join(Tenant, Tenant.id == PackRun.tenant_id).where(
            Tenant.key == key, PackRun.pack_run_id == pack_run_id
        )
        return (await session.execute(stmt)).scalar_one()


async def add_quota(runtime: Any, key: str, job_type: str, *, max_active: int = 100, max_per_hour: int = 10000,
                    burst: int = 1000, paused: bool = False) -> str:
    import uuid
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    quota_id = str(uuid.uuid4())
    async with runtime.sessions.begin() as session:
        session.add(Quota(tenant_id=await tenant_id(runtime, key), quota_id=quota_id, job_type=job_type,
                          max_active=max_active, max_per_hour=max_per_hour, burst=burst, paused=paused,
                          created_at=now, updated_at=now))
    return quota_id


async def set_paused(runtime: Any, quota_id: str, paused: bool) -> None:
    from sqlalchemy import update

    async with runtime.sessions.begin() as session:
        await session.execute(update(Quota).where(Quota.quota_id == quota_id).values(paused=paused))

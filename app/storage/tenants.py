"""The tenant registry: tenants belong to workspaces; the gateway only serves registered tenants."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import TenantInfo
from app.storage.models import Tenant, Workspace

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


async def add_tenant(session: AsyncSession, key: str, workspace: str, *, external_id: str | None = None) -> Tenant:
    """Register ``key`` in ``workspace`` (created when new). Idempotent for an existing pair."""
    if not KEY_PATTERN.match(key) or not KEY_PATTERN.match(workspace):
        raise ValueError("tenant and workspace keys are 1-64 characters of [A-Za-z0-9._-]")
    now = datetime.now(UTC)
    ws = (await session.execute(select(Workspace).where(Workspace.key == workspace))).scalar_one_or_none()
    if ws is None:
        ws = Workspace(key=workspace, name=workspace, created_at=now)
        session.add(ws)
        await session.flush()
    tenant = (await session.execute(select(Tenant).where(Tenant.key == key))).scalar_one_or_none()
    if tenant is not None:
        if tenant.workspace_id != ws.id:
            raise ValueError(f"tenant {key!r} already belongs to another workspace")
        return tenant
    tenant = Tenant(key=key, external_id=external_id or str(uuid.uuid4()), workspace_id=ws.id, created_at=now)
    session.add(tenant)
    await session.flush()
    return tenant


async def list_tenants(session: AsyncSession) -> list[TenantInfo]:
    rows = await session.execute(
        select(Tenant, Workspace.key).join(Workspace, Workspace.id == Tenant.workspace_id).order_by(Tenant.key)
    )
    return [TenantInfo(t.id, t.key, t.external_id, t.workspace_id, ws) for t, ws in rows]


class TenantRegistry:
    """Per-process cache of registered tenants (positive 60 s, negative 5 s)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._sessions = sessions
        self._clock = clock
        self._cache: dict[str, tuple[float, TenantInfo | None]] = {}

    async def get(self, key: str) -> TenantInfo | None:
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Tenant, Workspace.key)
                    .join(Workspace, Workspace.id == Tenant.workspace_id)
                    .where(Tenant.key == key)
                )
            ).first()
        info = TenantInfo(row[0].id, row[0].key, row[0].external_id, row[0].workspace_id, row[1]) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (self._clock() + (60.0 if info else 5.0), info)
        return info

    async def in_workspace(self, workspace_id: int, keys: tuple[str, ...]) -> list[TenantInfo]:
        """The registered tenants among ``keys`` that belong to ``workspace_id``."""
        found = [await self.get(k) for k in keys]
        return [t for t in found if t is not None and t.workspace_id == workspace_id]

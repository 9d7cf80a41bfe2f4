"""Who is calling, for which tenant and project, and why: decided once by authentication and the
guards (``app/security/``), kept in ``request.user`` and handed to the domain services."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TenantInfo:
    id: int
    key: str
    external_id: str
    workspace_id: int
    workspace_key: str


@dataclass(frozen=True)
class Caller:
    subject: str
    client_id: str | None
    scopes: frozenset[str]
    granted_tenants: tuple[str, ...]
    tenant: TenantInfo
    project: str | None
    trace_id: str
    reason: str | None = None
    ticket: str | None = None
    idempotency_key: str | None = None

    @property
    def tenant_id(self) -> int:
        return self.tenant.id

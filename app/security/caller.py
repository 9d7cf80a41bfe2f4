"""Who is calling, for which tenant and project, and why: decided once by the envelope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.domain.tenants.service import TenantInfo

CALLER_KEY = "jobgate_caller"


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


def caller_of(scope: Any) -> Caller:
    """The caller the envelope established; routes behind the envelope always have one."""
    return scope["state"][CALLER_KEY]

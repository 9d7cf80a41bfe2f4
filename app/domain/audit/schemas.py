"""Payloads of the audit route."""

from __future__ import annotations

from datetime import datetime

import msgspec


class AuditView(msgspec.Struct, rename="camel"):
    audit_id: int
    occurred_at: datetime
    tenant: str
    project_id: str | None
    subject: str
    client_id: str | None
    action: str
    method: str
    route: str
    target: str | None
    reason: str | None
    ticket: str | None
    trace_id: str
    idempotency_key: str | None
    result_status: int
    result_code: str | None
    dry_run: bool


class AuditPage(msgspec.Struct, rename="camel"):
    items: list[AuditView]
    continuation_token: str | None

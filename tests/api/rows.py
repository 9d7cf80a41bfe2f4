"""Rows for the read-surface tests, inserted straight into the database (fast, exact).

``Rows`` builds rows of one tenant with sensible defaults; each builder takes the model's own
field names as overrides. ``walk`` reads every page of a list with a small limit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain.deadletter.templates import error_template, template_hash
from app.storage.models import AuditRecord, DeadLetterEntry, Job, PackRun, Quota, Source

NOW = datetime.now(UTC).replace(microsecond=0)


def ago(**delta: float) -> datetime:
    """An instant before the real time (the routes read the real clock)."""
    return datetime.now(UTC) - timedelta(**delta)


def at(minutes: int) -> datetime:
    """A fixed instant, ``minutes`` after a base well in the past: for ordering tests."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Rows:
    """Row builders of one tenant, and ``add`` to insert them in one transaction."""

    def __init__(self, runtime: Any, tenant: str, tenant_id: int) -> None:
        self.runtime = runtime
        self.tenant = tenant
        self.tenant_id = tenant_id

    @classmethod
    async def of(cls, runtime: Any, tenant: str) -> Rows:
        info = await runtime.tenants.get(tenant)
        return cls(runtime, tenant, info.id)

    async def add(self, *rows: Any) -> list[Any]:
        async with self.runtime.sessions.begin() as session:
            session.add_all(rows)
        return list(rows)

    def source(self, **fields: Any) -> Source:
        values: dict[str, Any] = {
            "source_id": new_id("src"),
            "project_id": None,
            "name": "source",
            "source_type": "scanner",
            "enabled": True,
            "description": None,
            "created_at": NOW,
            "updated_at": NOW,
            "last_job_at": None,
            "jobs_submitted": 0,
            "jobs_active": 0,
            "jobs_failed": 0,
        }
        return Source(tenant_id=self.tenant_id, **{**values, **fields})

    def quota(self, job_type: str, **fields: Any) -> Quota:
        values: dict[str, Any] = {
            "quota_id": new_id("quota"),
            "max_active": 10,
            "max_per_hour": 1000,
            "burst": 100,
            "paused": False,
            "created_at": NOW,
            "updated_at": NOW,
        }
        return Quota(tenant_id=self.tenant_id, job_type=job_type, **{**values, **fields})

    def job(self, **fields: Any) -> Job:
        values: dict[str, Any] = {
            "job_id": new_id("job"),
            "project_id": None,
            "source_id": "src-a",
            "job_type": "scan",
            "payload": {},
            "priority": 0,
            "status": "pending",
            "attempt": 0,
            "max_attempts": 3,
            "run_after": NOW,
            "created_at": NOW,
            "updated_at": NOW,
        }
        return Job(tenant_id=self.tenant_id, **{**values, **fields})

    def entry(self, message: str = "connection refused by 10.0.0.1", **fields: Any) -> DeadLetterEntry:
        """A dead-letter entry; its template and hash are derived from ``message`` and the code."""
        error_code = fields.pop("error_code", "E_CONNECT")
        template = error_template(message)
        dead_lettered_at = fields.pop("dead_lettered_at", NOW)
        values: dict[str, Any] = {
            "entry_id": new_id("dle"),
            "project_id": None,
            "job_id": new_id("job"),  # unique per tenant (uq_dle_tenant_job)
            "job_type": "scan",
            "source_id": "src-a",
            "category": "transient",
            "payload": {},
            "attempts": 3,
            "status": "pending",
            "replay_count": 0,
            "first_dead_lettered_at": dead_lettered_at,
            "updated_at": dead_lettered_at,
        }
        return DeadLetterEntry(
            tenant_id=self.tenant_id,
            error_code=error_code,
            message=message,
            error_template=template,
            template_hash=template_hash(error_code, template),
            dead_lettered_at=dead_lettered_at,
            **{**values, **fields},
        )

    def pack_run(self, **fields: Any) -> PackRun:
        values: dict[str, Any] = {
            "pack_run_id": new_id("pr"),
            "project_id": None,
            "source_id": None,
            "pack_name": "baseline",
            "pack_version": "1.0.0",
            "status": "queued",
            "steps_total": 1,
            "steps_succeeded": 0,
            "steps_failed": 0,
            "created_at": NOW,
            "updated_at": NOW,
        }
        return PackRun(tenant_id=self.tenant_id, **{**values, **fields})

    def audit(self, **fields: Any) -> AuditRecord:
        values: dict[str, Any] = {
            "occurred_at": NOW,
            "project_id": None,
            "subject": "alice",
            "client_id": None,
            "action": "quota.pause",
            "method": "POST",
            "route": "/jobengine/quotas/{quotaId}/pause",
            "target": "quota-1",
            "reason": "test",
            "ticket": None,
            "trace_id": uuid.uuid4().hex,
            "idempotency_key": None,
            "result_status": 200,
            "result_code": None,
        }
        return AuditRecord(tenant_id=self.tenant_id, **{**values, **fields})


async def tenant_rows(runtime: Any, factory: Any) -> tuple[str, Rows]:
    """A fresh tenant and the builders of its rows."""
    tenant = await factory.tenant()
    return tenant, await Rows.of(runtime, tenant)


async def walk(
    client: Any, path: str, headers: dict[str, str], params: dict[str, Any] | None = None, *, limit: int = 3
) -> list[dict[str, Any]]:
    """Every item of a list, page by page; each page holds at most ``limit`` items and only the
    last page lacks a token."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(1000):
        query = {**(params or {}), "limit": limit}
        if token is not None:
            query["continuationToken"] = token
        response = await client.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        token = body["continuationToken"]
        if token is None:
            return items
        assert len(body["items"]) == limit
    raise AssertionError("the walk did not end")


def strip_trace(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "traceId"}

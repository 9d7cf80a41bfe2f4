"""The database-bound ceiling: a bare Litestar app, no authentication, raw asyncpg.

Its one handler runs the gateway's keyset query for the first page of sources (the same SQL
text SQLAlchemy emits for ``GET /jobengine/sources``) and answers the same JSON page: the same
items, the same key order and a continuation token of the same size and cost (an HMAC over the
last row's key). Whatever the gateway spends beyond this app is the price of its envelope and
its layers.

Configured by environment: ``BENCH_PG_DSN`` (asyncpg DSN), ``BENCH_TENANT_ID`` (tenants.id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.params import Parameter

# The statement the gateway sends (SQLAlchemy, asyncpg dialect), parameters and all.
SQL = (
    "SELECT sources.tenant_id, sources.source_id, sources.project_id, sources.name, sources.source_type, "
    "sources.enabled, sources.description, sources.created_at, sources.updated_at, sources.last_job_at, "
    "sources.jobs_submitted, sources.jobs_active, sources.jobs_failed \n"
    "FROM sources \n"
    "WHERE sources.tenant_id = $1::BIGINT ORDER BY sources.name ASC, sources.source_id ASC \n"
    " LIMIT $2::INTEGER"
)
SECRET = b"baseline-cursor-secret-0123456789"


class JobCounts(msgspec.Struct, rename="camel"):
    submitted: int
    active: int
    failed: int


class SourceView(msgspec.Struct, rename="camel"):
    source_id: str
    name: str
    source_type: str
    enabled: bool
    project_id: str | None
    description: str | None
    created_at: datetime
    updated_at: datetime
    last_job_at: datetime | None
    job_counts: JobCounts


class SourcePage(msgspec.Struct, rename="camel"):
    items: list[SourceView]
    continuation_token: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(name: str, source_id: str) -> str:
    body = msgspec.json.encode([1, int(time.time()), [name, source_id]])
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()[:16]
    return f"k0.{_b64(body)}.{_b64(mac)}"


def create_app() -> Litestar:
    dsn = os.environ["BENCH_PG_DSN"]
    tenant_id = int(os.environ["BENCH_TENANT_ID"])
    state = State()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The gateway's engine keeps up to 10 pooled connections; so does this pool.
        state.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        try:
            yield
        finally:
            await state.pool.close()

    @get("/jobengine/sources")
    async def list_sources(limit: Annotated[int, Parameter(ge=1, le=200)] = 50) -> Response[bytes]:
        async with state.pool.acquire() as connection:
            rows = await connection.fetch(SQL, tenant_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        page = SourcePage(
            items=[
                SourceView(
                    source_id=r["source_id"],
                    name=r["name"],
                    source_type=r["source_type"],
                    enabled=r["enabled"],
                    project_id=r["project_id"],
                    description=r["description"],
                    created_at=r["created_at"],
                    updated_at=r["updated_at"],
                    last_job_at=r["last_job_at"],
                    job_counts=JobCounts(r["jobs_submitted"], r["jobs_active"], r["jobs_failed"]),
                )
                for r in rows
            ],
            continuation_token=_token(rows[-1]["name"], rows[-1]["source_id"]) if more else None,
        )
        body = msgspec.json.encode(page, order="deterministic")
        return Response(body, media_type="application/json")

    return Litestar(route_handlers=[list_sources], lifespan=[lifespan], debug=False)

"""CPU cost of each layer of the gateway's list request, measured in-process.

Run by ``bench/run_foundation.py --profile`` against its seeded database, with the gateway's
environment plus ``BENCH_TOKEN`` (a valid token for tenant ``bench``) and ``BENCH_PG_DSN``.
Each layer is called sequentially and timed with ``time.process_time()`` (this process's CPU
only: PostgreSQL's and Redis's work is not counted), best of three batches. Prints one JSON
object: layer -> CPU milliseconds per call.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.core.caller import Caller
from app.domain.sources import service
from app.domain.sources.schemas import JobCounts, SourceView
from app.http.caching import encode, etag_of_body
from app.runtime import Runtime
from app.server import create_app
from app.settings import load_settings
from app.storage.models import Source

CALLS = 300


async def cpu_ms(call: Callable[[], Awaitable[Any]]) -> float:
    for _ in range(30):
        await call()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(CALLS):
            await call()
        best = min(best, (time.process_time() - started) / CALLS * 1000)
    return round(best, 3)


def asgi_request(app: Any, headers: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[int]]:
    async def call() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/jobengine/sources", "raw_path": b"/jobengine/sources",
            "query_string": b"limit=50", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
        }  # fmt: skip
        await app(scope, receive, send)
        return status

    return call


def row_view(r: Any) -> SourceView:
    """A row (anything indexable by column name) as the route's payload item."""
    return SourceView(
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


async def main() -> None:
    settings = load_settings()
    token = os.environ["BENCH_TOKEN"]
    runtime = Runtime.create(settings)
    app = create_app(settings, runtime=runtime)
    await runtime.start()
    pool = await asyncpg.create_pool(os.environ["BENCH_PG_DSN"], min_size=1, max_size=2)
    try:
        tenant = await runtime.tenants.get("bench")
        assert tenant is not None
        caller = Caller(
            subject="bench-reader",
            client_id="bench",
            scopes=frozenset({"orch:read"}),
            granted_tenants=("bench",),
            tenant=tenant,
            project=None,
            trace_id="bench-layers",
        )
        order = (Source.name, Source.source_id)
        core = select(*Source.__table__.c).where(Source.tenant_id == tenant.id).order_by(*order).limit(51)
        autocommit = runtime.engine.execution_options(isolation_level="AUTOCOMMIT")
        raw_sql = "SELECT * FROM sources WHERE tenant_id = $1 ORDER BY name, source_id LIMIT 51"

        async def orm_list() -> Any:
            async with runtime.sessions() as session:
                return await service.list_sources(
                    session, caller, runtime.cursors, source_type=None, enabled=None, limit=50, token=None
                )

        autocommit_sessions = async_sessionmaker(autocommit, expire_on_commit=False, autoflush=False)

        async def orm_list_autocommit() -> Any:
            async with autocommit_sessions() as session:
                return await service.list_sources(
                    session, caller, runtime.cursors, source_type=None, enabled=None, limit=50, token=None
                )

        async def core_autocommit() -> Any:
            async with autocommit.connect() as connection:
                return [row_view(r) for r in (await connection.execute(core)).mappings().all()[:50]]

        async def raw_asyncpg() -> Any:
            async with pool.acquire() as connection:
                return [row_view(r) for r in (await connection.fetch(raw_sql, tenant.id))[:50]]

        async with runtime.sessions() as session:
            entities = list(
                (
                    await session.execute(select(Source).where(Source.tenant_id == tenant.id).limit(50))
                ).scalars()
            )
        page = await orm_list()

        async def views() -> Any:
            return [service.view(s) for s in entities]

        async def encode_etag() -> str:
            return etag_of_body(encode(page))

        headers = [(b"authorization", f"Bearer {token}".encode()), (b"x-stella-tenant", b"bench")]
        request = asgi_request(app, headers)
        if await request() != 200:
            raise SystemExit("the in-process gateway did not answer 200")
        layers = {
            "whole request, in-process (no server, no socket)": await cpu_ms(request),
            "JWT verification (ES256, PyJWT)": await cpu_ms(lambda: runtime.tokens.verify(token)),
            "rate limit (Redis GCRA script)": await cpu_ms(
                lambda: runtime.store.take("rl:bench-layers", 10**6, 1)
            ),
            "tenant lookup (registry cache)": await cpu_ms(lambda: runtime.tenants.get("bench")),
            "sources page as the route runs it (ORM session, BEGIN/ROLLBACK)": await cpu_ms(orm_list),
            "same, ORM session on an AUTOCOMMIT connection (no BEGIN/ROLLBACK)": await cpu_ms(
                orm_list_autocommit
            ),
            "same rows + views, Core on an AUTOCOMMIT connection (no ORM)": await cpu_ms(core_autocommit),
            "same rows + views, raw asyncpg pool": await cpu_ms(raw_asyncpg),
            "view(): 50 ORM objects to SourceView": await cpu_ms(views),
            "canonical JSON + ETag of the page": await cpu_ms(encode_etag),
        }
        print(json.dumps(layers))
    finally:
        await pool.close()
        await runtime.stop()


if __name__ == "__main__":
    asyncio.run(main())

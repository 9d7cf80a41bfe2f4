"""Liveness, readiness and metrics: outside the envelope."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get
from sqlalchemy import text

from app import metrics
from app.core.problems import Problem
from app.domain.jobs import service as jobs
from app.http.routes import PUBLIC, problem_responses
from app.storage.migrate import schema_behind


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    database: str
    redis: str
    keys: str


@get(
    "/healthz",
    **PUBLIC,
    summary="Process is up",
    description="Answers 200 while the process serves requests; checks nothing else.",
    tags=["health"],
)
async def healthz() -> Health:
    return Health(status="ok")


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, timeout=2.0)
    except Exception:  # noqa: BLE001 - readiness reports, it does not raise
        return "unavailable"
    return "ok"


@get(
    "/readyz",
    **PUBLIC,
    summary="Database (at this code's schema) and Redis reachable, verification keys current",
    description="200 with each dependency's state when the gateway can serve protected routes; 503 "
    "`not_ready` (with `Retry-After`) naming the dependency that is not.",
    tags=["health"],
    responses=problem_responses(
        s503="The database or Redis is unreachable, the database schema lacks this code's migrations, "
        "or no verification key set was fetched within JOBGATE_AUTH_JWKS_MAX_STALE_SECONDS"
    ),
)
async def readyz(request: Request[Any, Any, Any]) -> Readiness:
    runtime = request.app.state.runtime

    behind = False

    async def database() -> None:
        nonlocal behind
        async with runtime.engine.connect() as connection:
            version = (await connection.execute(text("SELECT max(version_num) FROM alembic_version"))).scalar()
        behind = schema_behind(version)

    db = await _check(database())
    if db == "ok" and behind:
        db = "schema_behind"  # a gateway started before its migration ran: not ready to serve yet
    redis = await _check(runtime.store.ping()) if runtime.settings.redis_url else "not_configured"
    # Without a current key set every protected request would answer 503 keys_unavailable.
    keys = "ok" if runtime.keys.available() else "unavailable"
    if db != "ok" or redis == "unavailable" or keys != "ok":
        raise Problem(
            503,
            "not_ready",
            f"Not ready: database {db}, redis {redis}, keys {keys}.",
            headers={"Retry-After": "5"},
        )
    return Readiness(status="ok", database=db, redis=redis, keys=keys)


@get(
    "/metrics",
    **PUBLIC,
    summary="Prometheus metrics",
    description="Prometheus text exposition (version 0.0.4): request, job, pool and worker metrics; with "
    "several workers, the sum of every process.",
    tags=["health"],
    media_type="text/plain; version=0.0.4",
)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    runtime = request.app.state.runtime
    body = await metrics.render(lambda: jobs.live_counts(runtime.read_sessions))
    return Response(content=body, media_type="text/plain; version=0.0.4")


ROUTES = [healthz, readyz, metrics_endpoint]

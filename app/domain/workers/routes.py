"""The workers route: the live worker processes that may run the tenant's jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, get
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import PageScope, invalid_token
from app.domain.workers import registry
from app.domain.workers.schemas import WorkerPage, WorkerView
from app.http.paging import ContinuationToken, Limit
from app.http.routes import protected


def _view(worker: Any) -> WorkerView:
    return WorkerView(
        worker_id=worker.worker_id,
        host=worker.host,
        pid=worker.pid,
        job_types=list(worker.job_types),
        concurrency=worker.concurrency,
        running=worker.running,
        started_at=worker.started_at,
        last_seen_at=worker.last_seen_at,
    )


@get(
    "/jobengine/workers",
    **protected("orch:operate", problems=(304,), cache="poll"),
    summary="Live workers",
    description="The live worker processes that may run the tenant's jobs: workers started without "
    "`--tenant` (they claim every tenant's jobs) and workers started for this tenant; a worker that "
    "claims only other tenants' jobs is never listed. A worker is live until it misses three of its "
    "heartbeats (or stops gracefully). `running` and `concurrency` are the worker's whole load, which "
    "the tenant's jobs share with other tenants'. Ordered by `workerId asc`. GET /jobengine/events sends "
    "`worker.changed` when a worker appears here, goes, or changes what it serves (not at its heartbeats).",
    tags=["workers"],
)
async def list_workers(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
) -> WorkerPage:
    codec = request.app.state.runtime.cursors
    scope = PageScope(caller.tenant.key, None, "workers", (), "workerId")
    after: str | None = None
    if continuation_token is not None:
        key = codec.decode(continuation_token, scope)
        if len(key) != 1 or not isinstance(key[0], str):
            raise invalid_token()
        after = key[0]
    live = await registry.live(session, caller.tenant_id, datetime.now(UTC))
    workers = [w for w in live if after is None or w.worker_id > after]
    page = workers[:limit]
    token = codec.encode([page[-1].worker_id], scope) if len(workers) > limit else None
    return WorkerPage(items=[_view(w) for w in page], continuation_token=token)


ROUTES = [list_workers]

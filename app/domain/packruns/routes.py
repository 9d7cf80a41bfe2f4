"""Routes of pack runs (reads)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.packruns import service
from app.domain.packruns.schemas import PackRunPage, PackRunStatus, PackRunView
from app.http.paging import ContinuationToken, Limit
from app.http.routes import protected
from app.security.caller import Caller

PackRunId = Annotated[str, Parameter(max_length=64, description="The pack run's id")]


@get(
    "/jobengine/pack-runs",
    **protected("orch:read", problems=(304,)),
    summary="List pack runs",
    description="Ordered by `createdAt desc, packRunId desc`.",
    tags=["pack-runs"],
)
async def list_pack_runs(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    status: PackRunStatus | None = None,
    pack_name: Annotated[str | None, Parameter(query="packName", max_length=200)] = None,
) -> PackRunPage:
    return await service.list_pack_runs(
        session,
        caller,
        request.app.state.runtime.cursors,
        status=status,
        pack_name=pack_name,
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/pack-runs/{packRunId:str}",
    **protected("orch:read", problems=(304, 404)),
    summary="One pack run",
    tags=["pack-runs"],
)
async def get_pack_run(session: AsyncSession, caller: Caller, packRunId: PackRunId) -> PackRunView:
    return service.view(await service.load(session, caller, packRunId))


ROUTES = [list_pack_runs, get_pack_run]

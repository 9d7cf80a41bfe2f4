"""Routes of quotas."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.quotas import service
from app.domain.quotas.schemas import QuotaPage, QuotaSummary, QuotaView
from app.http.paging import ContinuationToken, Limit
from app.http.routes import protected
from app.security.caller import Caller

QuotaId = Annotated[str, Parameter(max_length=64, description="The quota's id")]
JobTypeFilter = Annotated[str | None, Parameter(query="jobType", max_length=128)]


@get(
    "/jobengine/quotas",
    **protected("orch:quota", problems=(304,)),
    summary="List quotas",
    description="Ordered by `jobType asc, quotaId asc`.",
    tags=["quotas"],
)
async def list_quotas(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    job_type: JobTypeFilter = None,
    paused: bool | None = None,
) -> QuotaPage:
    return await service.list_quotas(
        session,
        caller,
        request.app.state.runtime.cursors,
        job_type=job_type,
        paused=paused,
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/quotas/summary",
    **protected("orch:quota", problems=(304,)),
    summary="Quota and backpressure summary",
    description="Per job type with a quota, ordered by `jobType asc`: the configured limits beside "
    "observed values. `backpressure` is `paused` when the quota is paused; `saturated` when every "
    "slot is taken or no waiting job can start; `elevated` at 80 % utilisation or when some waiting "
    "jobs are held back; else `none`.",
    tags=["quotas"],
)
async def quota_summary(session: AsyncSession, caller: Caller) -> QuotaSummary:
    return await service.summary(session, caller)


@get(
    "/jobengine/quotas/{quotaId:str}",
    **protected("orch:quota", problems=(304, 404)),
    summary="One quota",
    tags=["quotas"],
)
async def get_quota(session: AsyncSession, caller: Caller, quotaId: QuotaId) -> QuotaView:
    return service.view(await service.load(session, caller, quotaId))


ROUTES = [list_quotas, quota_summary, get_quota]

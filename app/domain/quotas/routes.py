"""Routes of quotas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post, put
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.jobs import service as jobs_service
from app.domain.jobs import waiting as waiting_rules
from app.domain.quotas import service
from app.domain.quotas.schemas import QuotaCreate, QuotaPage, QuotaReplace, QuotaSummary, QuotaView
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.preconditions import require_current
from app.http.routes import location, protected

QuotaId = Annotated[str, Parameter(max_length=64, description="The quota's id")]
JobTypeFilter = Annotated[str | None, Parameter(query="jobType", max_length=128)]


@get(
    "/jobengine/quotas",
    **protected("orch:quota", problems=(304,), depends=("quota",)),
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
    "slot is taken or no waiting job can start; `elevated` at 80 % utilisation, when some waiting "
    "jobs are held back, or while any due job of the type waits; else `none` (never while due jobs "
    "of the type wait). `waiting` counts the tenant's jobs of the type not yet claimed by "
    "`waitingReason`, with the reason most of them share, as in the job summary (the due jobs "
    f"past the first {waiting_rules.HEAD} in dispatch order in `unattributed`).",
    tags=["quotas"],
)
async def quota_summary(session: AsyncSession, caller: Caller) -> QuotaSummary:
    now = datetime.now(UTC)
    waiting = await jobs_service.waiting_per_type(session, caller, narrow_to_project=False, now=now)
    return await service.summary(session, caller, now, waiting=waiting)


@get(
    "/jobengine/quotas/{quotaId:str}",
    **protected("orch:quota", problems=(304, 404), depends=("quota",)),
    summary="One quota",
    description="A quota of the tenant; another tenant's quota is 404. Its `ETag` is the one `If-Match` "
    "takes on PUT and DELETE.",
    tags=["quotas"],
)
async def get_quota(session: AsyncSession, caller: Caller, quotaId: QuotaId) -> QuotaView:
    return service.view(await service.load(session, caller, quotaId))


LIMITS = (
    "`maxActive` 1-100000 (jobs leased or running at once), `maxPerHour` 1-10000000 (starts in any rolling "
    "hour), `burst` 1-10000000 and at most `maxPerHour` (starts in any rolling minute); unknown fields are "
    "refused (400)."
)


@post(
    "/jobengine/quotas",
    **protected(
        "orch:quota",
        action="quota.create",
        location=(201,),
        s409="`quota_exists`: the tenant already has a quota "
        "for this jobType (also when two creates race), or the Idempotency-Key is in flight",
    ),
    status_code=201,
    summary="Create a quota",
    description="One quota per jobType in the tenant. " + LIMITS + " Answers 201 with `Location` and `ETag`.",
    tags=["quotas"],
)
async def create_quota(
    request: Request[Any, Any, Any], data: QuotaCreate, mutation: Mutation
) -> Response[QuotaView]:
    quota = await service.create_quota(mutation.session, mutation.caller, data)
    return await mutation.commit(
        target=quota.quota_id,
        status=201,
        content=service.view(quota),
        headers={"Location": location(request, f"/jobengine/quotas/{quota.quota_id}")},
    )


@put(
    "/jobengine/quotas/{quotaId:str}",
    **protected(
        "orch:quota",
        action="quota.replace",
        target="quotaId",
        problems=(404, 412),
        s409="`job_type_immutable`: the body names another jobType, or the Idempotency-Key is in flight",
    ),
    summary="Replace a quota's limits",
    description="Full replace of `maxActive`, `maxPerHour` and `burst`. `jobType` is immutable: it may be sent "
    "and must then equal the quota's (else 409 `job_type_immutable`). "
    + LIMITS
    + " Send `If-Match` with the "
    "current ETag to avoid lost updates (412 `precondition_failed` when stale).",
    tags=["quotas"],
)
async def replace_quota(
    request: Request[Any, Any, Any], quotaId: QuotaId, data: QuotaReplace, mutation: Mutation
) -> Response[QuotaView]:
    quota = await service.load(mutation.session, mutation.caller, quotaId, for_update=True)
    require_current(request, service.view(quota), "quota")
    quota = await service.replace_quota(mutation.session, quota, data)
    return await mutation.commit(target=quota.quota_id, status=200, content=service.view(quota))


@delete(
    "/jobengine/quotas/{quotaId:str}",
    **protected("orch:quota", action="quota.delete", target="quotaId", problems=(404, 412)),
    status_code=204,
    summary="Delete a quota",
    description="Jobs of its jobType are no longer limited. Honours `If-Match` like PUT.",
    tags=["quotas"],
)
async def delete_quota(request: Request[Any, Any, Any], quotaId: QuotaId, mutation: Mutation) -> None:
    quota = await service.load(mutation.session, mutation.caller, quotaId, for_update=True)
    require_current(request, service.view(quota), "quota")
    await service.delete_quota(mutation.session, quota)
    # Annotated ``None`` so that the contract documents 204 without a body.
    return await mutation.commit(target=quotaId, status=204)  # type: ignore[return-value]


@post(
    "/jobengine/quotas/{quotaId:str}/pause",
    **protected("orch:quota", action="quota.pause", target="quotaId", problems=(404,)),
    status_code=200,
    summary="Pause a quota",
    description="Nothing of this jobType starts while paused (queued jobs wait). Records who paused it "
    "(`pausedBy`, the token subject), why (`pausedReason`, the operator reason) and when (`pausedAt`). "
    "Idempotent: pausing a paused quota keeps the first pause's record and answers 200.",
    tags=["quotas"],
)
async def pause_quota(quotaId: QuotaId, mutation: Mutation) -> Response[QuotaView]:
    quota = await service.load(mutation.session, mutation.caller, quotaId, for_update=True)
    service.pause(quota, mutation.caller)
    return await mutation.commit(target=quota.quota_id, status=200, content=service.view(quota))


@post(
    "/jobengine/quotas/{quotaId:str}/resume",
    **protected("orch:quota", action="quota.resume", target="quotaId", problems=(404,)),
    status_code=200,
    summary="Resume a quota",
    description="Queued jobs of this jobType may start again; clears `pausedBy`, `pausedReason` and `pausedAt`. "
    "Idempotent: resuming a quota that is not paused answers 200 unchanged.",
    tags=["quotas"],
)
async def resume_quota(quotaId: QuotaId, mutation: Mutation) -> Response[QuotaView]:
    quota = await service.load(mutation.session, mutation.caller, quotaId, for_update=True)
    service.resume(quota)
    return await mutation.commit(target=quota.quota_id, status=200, content=service.view(quota))


ROUTES = [
    list_quotas,
    quota_summary,
    get_quota,
    create_quota,
    replace_quota,
    delete_quota,
    pause_quota,
    resume_quota,
]

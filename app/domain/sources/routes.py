"""Routes of job sources: list, detail, register, replace."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post, put
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.sources import service
from app.domain.sources.schemas import SourceCreate, SourcePage, SourceReplace, SourceView
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.preconditions import require_current
from app.http.routes import location, protected

SourceId = Annotated[str, Parameter(max_length=64, description="The source's id")]


@get(
    "/jobengine/sources",
    **protected("orch:read", problems=(304,), depends=("source",)),
    summary="List job sources",
    description="Ordered by `name asc, sourceId asc`.",
    tags=["sources"],
)
async def list_sources(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    source_type: Annotated[str | None, Parameter(query="sourceType", max_length=64)] = None,
    enabled: bool | None = None,
) -> SourcePage:
    return await service.list_sources(
        session,
        caller,
        request.app.state.runtime.cursors,
        source_type=source_type,
        enabled=enabled,
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/sources/{sourceId:str}",
    **protected("orch:read", problems=(304, 404), depends=("source",)),
    summary="One job source",
    description="A source of the tenant (and project) with its job counts; another tenant's or project's "
    "source is 404. Revalidate with `If-None-Match`.",
    tags=["sources"],
)
async def get_source(session: AsyncSession, caller: Caller, sourceId: SourceId) -> SourceView:
    return service.view(await service.load(session, caller, sourceId))


@post(
    "/jobengine/sources",
    **protected("orch:operate", action="source.create", location=(201,)),
    status_code=201,
    summary="Register a job source",
    description="`sourceId` is assigned by the server unless given. Answers 201 with `Location` and `ETag`.",
    tags=["sources"],
)
async def create_source(
    request: Request[Any, Any, Any], data: SourceCreate, mutation: Mutation
) -> Response[SourceView]:
    source = await service.create_source(mutation.session, mutation.caller, data)
    return await mutation.commit(
        target=source.source_id,
        status=201,
        content=service.view(source),
        headers={"Location": location(request, f"/jobengine/sources/{source.source_id}")},
    )


@put(
    "/jobengine/sources/{sourceId:str}",
    **protected("orch:operate", action="source.replace", target="sourceId", problems=(404, 412)),
    summary="Replace a job source",
    description="Full replace: the source becomes what the body says. `name` and `sourceType` are required; an "
    "absent `enabled`, `projectId` or `description` takes its default as on create (`enabled` true, `projectId` "
    "the X-Stella-Project header's project or none, no `description`), it does not keep the current value. Send "
    "`If-Match` with the current ETag to avoid lost updates (412 `precondition_failed` when stale).",
    tags=["sources"],
)
async def replace_source(
    request: Request[Any, Any, Any], sourceId: SourceId, data: SourceReplace, mutation: Mutation
) -> Response[SourceView]:
    source = await service.load(mutation.session, mutation.caller, sourceId, for_update=True)
    require_current(request, service.view(source), "source")
    source = await service.replace_source(mutation.session, source, mutation.caller, data)
    return await mutation.commit(target=source.source_id, status=200, content=service.view(source))


ROUTES = [list_sources, get_source, create_source, replace_source]

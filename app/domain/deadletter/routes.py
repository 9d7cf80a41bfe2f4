"""Routes of dead-letter entries (reads)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.deadletter import service
from app.domain.deadletter.schemas import DeadLetterStats, EntryPage, EntryStatus, EntryView, SummaryPage
from app.http.paging import ContinuationToken, Limit
from app.http.routes import protected
from app.security.caller import Caller

EntryId = Annotated[str, Parameter(max_length=64, description="The dead-letter entry's id")]


@get(
    "/jobengine/deadletter/stats",
    **protected("orch:operate", problems=(304,)),
    summary="Dead-letter statistics and top error clusters",
    description="Totals by status and category (ordered by `category asc`), the oldest pending entry, the inflow "
    "of the last 24 hours, and the ten largest clusters of (errorCode, error template) ordered by "
    "`count desc, template asc`, each with up to three sample entry ids (most recent first).",
    tags=["deadletter"],
)
async def deadletter_stats(session: AsyncSession, caller: Caller) -> DeadLetterStats:
    return await service.stats(session, caller)


@get(
    "/jobengine/deadletter/summary",
    **protected("orch:operate", problems=(304,)),
    summary="Dead-letter entries grouped by category and error code",
    description="Ordered by `category asc, errorCode asc`.",
    tags=["deadletter"],
)
async def deadletter_summary(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
) -> SummaryPage:
    return await service.summary(
        session, caller, request.app.state.runtime.cursors, limit=limit, token=continuation_token
    )


@get(
    "/jobengine/deadletter",
    **protected("orch:operate", problems=(304,)),
    summary="List dead-letter entries",
    description="Ordered by `deadLetteredAt desc, entryId desc`. `deadLetteredFrom` is inclusive, "
    "`deadLetteredTo` exclusive.",
    tags=["deadletter"],
)
async def list_entries(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    job_type: Annotated[str | None, Parameter(query="jobType", max_length=128)] = None,
    category: Annotated[str | None, Parameter(max_length=64)] = None,
    error_code: Annotated[str | None, Parameter(query="errorCode", max_length=128)] = None,
    source_id: Annotated[str | None, Parameter(query="sourceId", max_length=64)] = None,
    status: EntryStatus | None = None,
    dead_lettered_from: Annotated[datetime | None, Parameter(query="deadLetteredFrom")] = None,
    dead_lettered_to: Annotated[datetime | None, Parameter(query="deadLetteredTo")] = None,
) -> EntryPage:
    filters = service.EntryFilter(
        jobType=job_type,
        category=category,
        errorCode=error_code,
        sourceId=source_id,
        status=status,
        dead_lettered_from=dead_lettered_from,
        dead_lettered_to=dead_lettered_to,
    )
    return await service.list_entries(
        session, caller, request.app.state.runtime.cursors, filters=filters, limit=limit, token=continuation_token
    )


@get(
    "/jobengine/deadletter/{entryId:str}",
    **protected("orch:operate", problems=(304, 404)),
    summary="One dead-letter entry",
    tags=["deadletter"],
)
async def get_entry(session: AsyncSession, caller: Caller, entryId: EntryId) -> EntryView:
    return service.view(await service.load(session, caller, entryId))


ROUTES = [deadletter_stats, deadletter_summary, list_entries, get_entry]

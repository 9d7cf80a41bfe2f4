"""The audit log route."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.audit import queries
from app.domain.audit.schemas import AuditPage
from app.http.paging import ContinuationToken, Limit
from app.http.params import instant_query, parse_instant
from app.http.routes import protected

OccurredFrom = instant_query("occurredFrom", "Only rows that occurred at or after this instant")
OccurredTo = instant_query("occurredTo", "Only rows that occurred before this instant")


@get(
    "/jobengine/audit",
    **protected("orch:operate", problems=(304,), depends=("audit",)),
    summary="The tenant's audit log",
    description="Every mutating request, allowed or refused. Ordered by `occurredAt desc, auditId desc`. "
    "`occurredFrom` is inclusive, `occurredTo` exclusive.",
    tags=["audit"],
)
async def list_audit(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    action: Annotated[str | None, Parameter(max_length=64)] = None,
    subject: Annotated[str | None, Parameter(max_length=256)] = None,
    target: Annotated[str | None, Parameter(max_length=256)] = None,
    occurred_from: OccurredFrom = None,
    occurred_to: OccurredTo = None,
) -> AuditPage:
    return await queries.list_audit(
        session,
        caller,
        request.app.state.runtime.cursors,
        action=action,
        subject=subject,
        target=target,
        occurred_from=parse_instant("occurredFrom", occurred_from),
        occurred_to=parse_instant("occurredTo", occurred_to),
        limit=limit,
        token=continuation_token,
    )


ROUTES = [list_audit]

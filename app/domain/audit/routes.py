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
# An action is `<object>.<verb>` (`deadletter.replay_cancel`, `quota.pause`): lower case, dotted.
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
# A target is an object's id as the route named it: printable, no control characters.
TARGET_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Action = Annotated[
    str | None,
    Parameter(
        max_length=64,
        pattern=ACTION_PATTERN,
        description="Only rows of this action, e.g. `deadletter.replay_pending` (the `action` of the rows; "
        "lower-case `object.verb`, anything else is 400)",
    ),
]
Target = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=256,
        pattern=TARGET_PATTERN,
        description="Only rows about this object: the id the action named (an entry, pack run, quota or "
        "source id, an operation run id); 1-256 printable characters, anything else is 400",
    ),
]


@get(
    "/jobengine/audit",
    **protected("orch:operate", problems=(304,), depends=("audit",)),
    summary="The tenant's audit log",
    description="Every mutating request, allowed or refused. Ordered by `occurredAt desc, auditId desc`. "
    "`occurredFrom` is inclusive, `occurredTo` exclusive. `dryRun` is true on the rows of dry runs (a batch or "
    "by-filter action sent with `dryRun: true`), which changed nothing.",
    tags=["audit"],
)
async def list_audit(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    action: Action = None,
    subject: Annotated[str | None, Parameter(max_length=256)] = None,
    target: Target = None,
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

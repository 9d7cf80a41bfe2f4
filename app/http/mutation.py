"""The one way a handler commits a change: audit row, stored idempotent response, commit.

All three land in the handler's transaction, committed before the response is sent; a failing
commit answers a problem response and applies nothing.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from litestar import Request, Response
from litestar.params import Parameter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.caching import encode, etag_of_body
from app.security import header_rules as rules
from app.security.audit import AUDITED_KEY
from app.storage.audit import record
from app.storage.idempotency import complete_in

log = logging.getLogger("jobgate.mutation")


class Mutation:
    def __init__(self, session: AsyncSession, request: Request[Any, Any, Any], caller: Caller) -> None:
        self.session = session
        self.caller = caller
        self._request = request

    async def commit(
        self,
        *,
        target: str | None,
        status: int,
        content: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response[bytes]:
        body = b"" if content is None else encode(content)
        response_headers = {"Cache-Control": "no-store", **(headers or {})}
        if content is not None:
            response_headers["ETag"] = etag_of_body(body)
            response_headers["Content-Type"] = "application/json"
        scope = self._request.scope
        record(
            self.session,
            self.caller,
            action=self._request.route_handler.opt["action"],
            method=scope["method"],
            route=scope.get("path_template") or scope["path"],
            target=target,
            status=status,
        )
        await complete_in(self.session, self.caller, status, response_headers, body)
        try:
            await self.session.commit()
        except IntegrityError:
            await self.session.rollback()
            log.warning("commit refused by a constraint, nothing applied")
            raise Problem(
                409, "conflict", "The change conflicts with the current state (a concurrent change?); nothing was applied."
            ) from None
        except Exception as exc:
            await self.session.rollback()
            log.error("commit failed, nothing applied (%s)", type(exc).__name__)
            raise Problem(
                503,
                "commit_failed",
                "The change could not be recorded and was not applied; retry shortly.",
                headers={"Retry-After": "2"},
            ) from None
        scope["state"][AUDITED_KEY] = True
        return Response(content=body, status_code=status, headers=response_headers, media_type="application/json")


# The header parameters below are checked by authentication and the guards before the handler runs;
# declaring them here documents them in the OpenAPI contract of every route that depends on a caller
# or mutation.
TenantHeader = Annotated[
    str,
    Parameter(
        header="X-Stella-Tenant",
        pattern=rules.TENANT_PATTERN,
        description="Tenant key; must be granted by the token's tenant claim (byte-exact)",
    ),
]
ProjectHeader = Annotated[
    str | None,
    Parameter(
        header="X-Stella-Project",
        required=False,
        pattern=rules.PROJECT_PATTERN,
        description="Narrows every read and write to this project",
    ),
]
TraceHeader = Annotated[
    str | None,
    Parameter(
        header="X-Stella-Trace-Id",
        required=False,
        description="Echoed on the response; a new one is generated when absent or not 8-128 of [A-Za-z0-9._:-]",
    ),
]
# Reason and ticket are UTF-8; the operator guard checks them on the decoded text, so their shape is
# stated in the contract only (Litestar would check it on the latin-1 reading of the bytes).
ReasonHeader = Annotated[
    str,
    Parameter(
        header="X-Stella-Operator-Reason",
        schema_extra={"pattern": rules.REASON_PATTERN, "minLength": 1, "maxLength": rules.REASON_MAX},
        description="Why the operator acts: 1-512 printable characters (UTF-8), no control characters",
    ),
]
TicketHeader = Annotated[
    str | None,
    Parameter(
        header="X-Stella-Operator-Ticket",
        required=False,
        schema_extra={"pattern": rules.TICKET_PATTERN, "minLength": 1, "maxLength": rules.TICKET_MAX},
        description="Ticket id: 1-128 printable characters (UTF-8)",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Parameter(
        header="Idempotency-Key",
        required=False,
        pattern=rules.IDEMPOTENCY_KEY_PATTERN,
        description="Same key and request replays the first response; another request with the key is 422; "
        "while the first is in flight 409",
    ),
]


async def provide_caller(
    request: Request[Any, Any, Any],
    x_stella_tenant: TenantHeader,
    x_stella_project: ProjectHeader = None,
    x_stella_trace_id: TraceHeader = None,
) -> Caller:
    return request.user


async def provide_mutation(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    x_stella_operator_reason: ReasonHeader,
    x_stella_operator_ticket: TicketHeader = None,
    idempotency_key: IdempotencyHeader = None,
) -> Mutation:
    return Mutation(session, request, caller)


async def provide_submission(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, idempotency_key: IdempotencyHeader = None
) -> Mutation:
    """Submissions of job sources and workers: audited, no operator reason required."""
    return Mutation(session, request, caller)

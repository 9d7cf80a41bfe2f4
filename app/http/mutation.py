"""The one way a handler commits a change: audit row, stored idempotent response, commit.

All three land in the handler's transaction, committed before the response is sent; a failing
commit answers a problem response and applies nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.caching import encode, etag_of_body
from app.security.audit import AUDITED_KEY
from app.storage.audit import record
from app.storage.feed import announce
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
        # before answering: a revalidation on any process that begins after this answer sees it
        await announce(self._request.app.state.runtime.store, self.caller.tenant_id)
        return Response(content=body, status_code=status, headers=response_headers, media_type="application/json")


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller authentication established (``app/security/authentication.py``). The headers it
    read, and those of mutations, are documented in the contract by ``app/http/openapi.py``."""
    return request.user


async def provide_mutation(request: Request[Any, Any, Any], session: AsyncSession, caller: Caller) -> Mutation:
    return Mutation(session, request, caller)


async def provide_submission(request: Request[Any, Any, Any], session: AsyncSession, caller: Caller) -> Mutation:
    """Submissions of job sources and workers: audited, no operator reason required."""
    return Mutation(session, request, caller)

"""The one way a handler commits a change: audit row, stored idempotent response, the
statements the change asked to run last (``app/storage/db.py``: ``run_last``), commit.

All three land in the handler's transaction, committed before the response is sent; a failing
commit answers a problem response and applies nothing. A change that is one statement can carry
its audit row in that statement and run it on its own (:attr:`Mutation.at_once`, job submission):
then nothing else is committed, and :meth:`Mutation.answered` only builds the answer.
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
from app.security.audit import AUDITED_KEY, DRY_RUN_KEY
from app.storage.audit import audit_values, write_audit
from app.storage.db import run_last_steps
from app.storage.feed import announce
from app.storage.idempotency import complete_in

log = logging.getLogger("jobgate.mutation")


class Mutation:
    def __init__(self, session: AsyncSession, request: Request[Any, Any, Any], caller: Caller) -> None:
        self.session = session
        self.caller = caller
        self._request = request

    @property
    def dry_run(self) -> bool:
        return bool(self._request.scope["state"].get(DRY_RUN_KEY))

    @dry_run.setter
    def dry_run(self, value: bool) -> None:
        """Mark the request a dry run (its audit row says so, also when it is refused after this)."""
        self._request.scope["state"][DRY_RUN_KEY] = value

    async def commit(
        self,
        *,
        target: str | None,
        status: int,
        content: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response[bytes]:
        body, response_headers = _encoded(content, headers)
        scope = self._request.scope
        try:
            await write_audit(self.session, self.audit_values(target, status))
            await complete_in(self.session, self.caller, status, response_headers, body)
            await run_last_steps(self.session)
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

    # -- a change written with its audit row in one statement ----------------------------------

    @property
    def at_once(self) -> bool:
        """Whether the change may be written as one autocommitted statement that carries its own
        audit row (:meth:`audit_values`): on PostgreSQL, for a request without ``Idempotency-Key``
        (whose answer must otherwise be stored in the same transaction). The handler then answers
        with :meth:`answered`."""
        return self.caller.idempotency_key is None and self.session.bind.dialect.name == "postgresql"  # type: ignore[union-attr]

    def audit_values(self, target: str | None, status: int) -> dict[str, Any]:
        """The values of this request's audit row, as :meth:`commit` writes it."""
        scope = self._request.scope
        return audit_values(
            self.caller,
            action=self._request.route_handler.opt["action"],
            method=scope["method"],
            route=scope.get("path_template") or scope["path"],
            target=target,
            status=status,
            dry_run=self.dry_run,
        )

    async def answered(
        self, *, status: int, content: Any, headers: dict[str, str] | None = None
    ) -> Response[bytes]:
        """The answer of a change already written with its audit row (see :attr:`at_once`); like
        :meth:`commit`, it advances the tenant's write epoch before answering."""
        body, response_headers = _encoded(content, headers)
        self._request.scope["state"][AUDITED_KEY] = True
        await announce(self._request.app.state.runtime.store, self.caller.tenant_id)
        return Response(content=body, status_code=status, headers=response_headers, media_type="application/json")


def _encoded(content: Any, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """A mutation's answer: its body and headers (``no-store``; an ETag for a body)."""
    body = b"" if content is None else encode(content)
    response_headers = {"Cache-Control": "no-store", **(headers or {})}
    if content is not None:
        response_headers["ETag"] = etag_of_body(body)
        response_headers["Content-Type"] = "application/json"
    return body, response_headers


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller authentication established (``app/security/authentication.py``). The headers it
    read, and those of mutations, are documented in the contract by ``app/http/openapi.py``."""
    return request.user


async def provide_mutation(request: Request[Any, Any, Any], session: AsyncSession, caller: Caller) -> Mutation:
    return Mutation(session, request, caller)


async def provide_submission(request: Request[Any, Any, Any], session: AsyncSession, caller: Caller) -> Mutation:
    """Submissions of job sources and workers: audited, no operator reason required."""
    return Mutation(session, request, caller)

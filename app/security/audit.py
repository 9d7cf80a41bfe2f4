"""The one place that audits a mutation its handler did not audit: refusals (by a guard, the
Idempotency-Key, the handler or the framework) and replays of a stored answer.

An ASGI middleware inside authentication (a request refused there has no tenant whose log the row
could go into). It writes the row when the response starts, in a transaction of its own committed
before the answer is sent, so a client that reads the audit log after its answer finds the row.
A handler that commits a change writes its row in that change's transaction and marks the request
:data:`AUDITED_KEY`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.core.caller import Caller
from app.core.problems import Problem
from app.http.problems import PROBLEM_CODE_KEY
from app.http.tracing import header_values
from app.security import header_rules as rules
from app.security.guards import MUTATING
from app.storage.feed import announce
from app.storage.audit import audit_row

log = logging.getLogger("jobgate.envelope")

AUDITED_KEY = "jobgate_audited"
REPLAYED_KEY = "jobgate_replayed"
# Set by a handler as soon as it knows the request is a dry run (``Mutation.dry_run``), so that a
# refusal after that point is audited as a dry run too.
DRY_RUN_KEY = "jobgate_dry_run"


def _valid_or_none(parse: Any, values: list[bytes]) -> str | None:
    try:
        return parse(values) if values else None
    except Problem:
        return None


def as_declared(caller: Caller, scope: Scope) -> Caller:
    """The caller with the reason, ticket and Idempotency-Key the request sent, where each is valid.

    A request refused before these headers were checked (scope, rate limit) or because of one of
    them is still audited with what it validly declared; an invalid value is never recorded.
    """
    return replace(
        caller,
        reason=caller.reason or _valid_or_none(rules.operator_reason, header_values(scope, b"x-stella-operator-reason")),
        ticket=caller.ticket or _valid_or_none(rules.operator_ticket, header_values(scope, b"x-stella-operator-ticket")),
        idempotency_key=caller.idempotency_key
        or _valid_or_none(rules.idempotency_key, header_values(scope, b"idempotency-key")),
    )


def _target(scope: Scope, param: str | None) -> str | None:
    value = None if param is None else scope.get("path_params", {}).get(param)
    return None if value is None else str(value)


class MutationAudit:
    def __init__(self, app: ASGIApp, sessions: async_sessionmaker[AsyncSession], store: Any = None) -> None:
        self.app = app
        self.sessions = sessions
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or scope.get("user") is None:
            await self.app(scope, receive, send)
            return

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope["state"]
                status = message["status"]
                if state.get(REPLAYED_KEY):
                    await self.write(scope, status, "idempotent_replay")
                elif status >= 400 and not state.get(AUDITED_KEY):
                    await self.write(scope, status, state.get(PROBLEM_CODE_KEY))
            await send(message)

        await self.app(scope, receive, audited)

    async def write(self, scope: Scope, status: int, code: str | None) -> None:
        handler = scope["route_handler"]
        row = audit_row(
            as_declared(scope["user"], scope),
            action=handler.opt.get("action", "unknown"),
            method=scope["method"],
            route=scope.get("path_template") or handler.paths.copy().pop(),
            target=_target(scope, handler.opt.get("target")),
            status=status,
            code=code,
            dry_run=bool(scope["state"].get(DRY_RUN_KEY)),
        )
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except Exception as exc:  # noqa: BLE001 - the refusal stands; the failure is logged and counted
            metrics.AUDIT_FAILURES.inc()
            log.error("could not write the audit row of a refused request (%s)", type(exc).__name__)
            return
        if self.store is not None:  # the audit list changed: revalidations see it at once
            await announce(self.store, row.tenant_id)

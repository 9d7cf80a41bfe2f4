"""The checks that follow authentication, with Litestar's guard signature, in this order (:class:`Guards`,
run first by the app's ``before_request``): the tenant's rate limit, the route's scope, and for
mutations the operator reason and ticket.

A guard only judges requests authentication admitted (a caller in ``scope["user"]``); public
routes and the OpenAPI documents have none. Rate limit before scope: a request refused for its
scope still spends the tenant's budget.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app import metrics
from app.core.caller import Caller
from app.core.problems import Problem
from app.http.tracing import header_values
from app.security import header_rules as rules
from app.settings import RateLimit
from app.storage.rates import RateShares

log = logging.getLogger("jobgate.envelope")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Connection = ASGIConnection[Any, Any, Any, Any]


class RateLimitGuard:
    """Per tenant, shared by every process; fails open when the store is away (logged, counted)."""

    def __init__(self, rates: RateShares, limit: RateLimit) -> None:
        self.rates = rates
        self.limit = limit

    async def __call__(self, connection: Connection, _: BaseRouteHandler) -> None:
        caller: Caller | None = connection.scope.get("user")
        if caller is None:
            return
        limit = self.limit
        try:
            verdict = await self.rates.take(f"rl:{caller.tenant.key}", limit.requests, limit.period_seconds)
        except Exception as exc:  # noqa: BLE001 - rate limiting fails open
            metrics.RATE_LIMIT_FAIL_OPEN.inc()
            log.warning("rate-limit store unavailable, request let through (%s)", type(exc).__name__)
            return
        if not verdict.allowed:
            metrics.RATE_LIMITED.inc()
            raise Problem(
                429,
                "rate_limited",
                f"The tenant's request budget ({limit}) is spent; retry later.",
                headers={"Retry-After": str(verdict.retry_after_seconds)},
            )


def authorise(caller: Caller, required: str | None) -> None:
    """403 unless ``caller`` holds ``required``; a route that declares no scope is refused (fail closed)."""
    if not required:
        log.error("route without a declared scope refused (fail closed)")
    if not required or required not in caller.scopes:
        raise Problem(
            403,
            "insufficient_scope",
            f"This operation requires the scope {required or 'declared by the route'}.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{required or ""}"'},
        )


async def require_scope(connection: Connection, handler: BaseRouteHandler) -> None:
    caller: Caller | None = connection.scope.get("user")
    if caller is not None:
        authorise(caller, handler.opt.get("scope"))
    elif handler.opt.get("scope") is not None:
        # A route that declares a scope but reached its guards without a caller (authentication
        # skips OPTIONS, for one): refused, never let through.
        log.error("a scoped route was reached without authentication; refused (fail closed)")
        raise Problem(401, "unauthenticated", "Authentication is required.")


async def require_operator(connection: Connection, handler: BaseRouteHandler) -> None:
    """Mutations: the operator reason (not required of submission routes) and ticket."""
    scope = connection.scope
    caller: Caller | None = scope.get("user")
    if caller is None or scope["method"] not in MUTATING:
        return
    reasons = header_values(scope, b"x-stella-operator-reason")
    required = not handler.opt.get("submission", False)
    reason = rules.operator_reason(reasons) if required or reasons else None
    ticket = rules.operator_ticket(header_values(scope, b"x-stella-operator-ticket"))
    scope["user"] = replace(caller, reason=reason, ticket=ticket)


class Guards:
    """The checks above, run in the order given with the route's own handler, by the app's
    ``before_request`` (``app/server.py``: Litestar hands each of its ``guards`` a copy of the route
    handler per request, which costs more than the checks themselves)."""

    def __init__(self, *checks: Callable[[Connection, BaseRouteHandler], Awaitable[None]]) -> None:
        self.checks = checks

    async def __call__(self, connection: Connection, handler: BaseRouteHandler) -> None:
        for check in self.checks:
            await check(connection, handler)

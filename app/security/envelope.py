"""The security envelope: where every protected request enters.

In order: trace id, credentials (Bearer or DPoP), tenant, rate limit, scope, and for mutations
the operator reason and ticket and the Idempotency-Key. It establishes the :class:`Caller`
and writes the audit row of every refused mutation. Each route declares what it needs in its
``opt`` (see :func:`app.http.routes.protected`); a handler never re-checks any of it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.core.caller import Caller
from app.core.problems import Problem
from app.http.idempotency import IdempotencyStore, read_body
from app.http.problems import PROBLEM_CODE_KEY
from app.http.tracing import ensure_trace_id, header_values
from app.security import header_rules as rules
from app.security.caller import CALLER_KEY
from app.security.dpop import PROOF_ALGORITHMS, ReplayStoreUnavailable
from app.security.keys import KeysUnavailable
from app.security.tokens import AuthError, Claims
from app.storage.audit import audit_row
from app.storage.shared import RateShares

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("jobgate.envelope")

AUDITED_KEY = "jobgate_audited"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REALM = "stella-jobengine"

_TENANT = re.compile(rules.TENANT_PATTERN)
_PROJECT = re.compile(rules.PROJECT_PATTERN)
_IDEMPOTENCY_KEY = re.compile(rules.IDEMPOTENCY_KEY_PATTERN)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _printable(text: str) -> bool:
    return all(unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for ch in text)


def operator_reason(values: list[bytes]) -> str:
    if not values or not _text(values[0]).strip():
        raise Problem(400, "operator_reason_required", "X-Stella-Operator-Reason is required on this request.")
    reason = _text(values[0])
    if len(values) > 1 or len(reason) > 512 or not _printable(reason):
        raise Problem(
            400,
            "operator_reason_invalid",
            "X-Stella-Operator-Reason must be 1-512 printable characters without control characters.",
        )
    return reason


def operator_ticket(values: list[bytes]) -> str | None:
    if not values:
        return None
    ticket = _text(values[0])
    if len(values) > 1 or not 0 < len(ticket) <= 128 or not _printable(ticket):
        raise Problem(400, "operator_ticket_invalid", "X-Stella-Operator-Ticket must be 1-128 printable characters.")
    return ticket


def idempotency_key(values: list[bytes]) -> str | None:
    if not values:
        return None
    key = values[0].decode("latin-1")
    if len(values) > 1 or not _IDEMPOTENCY_KEY.match(key):
        raise Problem(400, "idempotency_key_invalid", "Idempotency-Key must be 1-128 visible characters.")
    return key


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
        reason=caller.reason or _valid_or_none(operator_reason, header_values(scope, b"x-stella-operator-reason")),
        ticket=caller.ticket or _valid_or_none(operator_ticket, header_values(scope, b"x-stella-operator-ticket")),
        idempotency_key=caller.idempotency_key
        or _valid_or_none(idempotency_key, header_values(scope, b"idempotency-key")),
    )


class Envelope:
    """Per-process envelope logic; :class:`EnvelopeMiddleware` applies it to each request."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.dpop_mode = runtime.settings.dpop
        self.idempotency = IdempotencyStore(runtime.sessions)
        self.rates = RateShares(runtime.store)

    # -- credentials ----------------------------------------------------------------------------

    def challenge(self, error: str | None = None, description: str | None = None, *, dpop_error: bool = False) -> str:
        params = [f'realm="{REALM}"']
        if error and not dpop_error:
            params.append(f'error="{error}"')
            if description:
                params.append(f'error_description="{description}"')
        bearer = "Bearer " + ", ".join(params)
        dpop_params = [f'algs="{" ".join(PROOF_ALGORITHMS)}"']
        if error:
            dpop_params.append(f'error="{"invalid_dpop_proof" if dpop_error else error}"')
            if description:
                dpop_params.append(f'error_description="{description}"')
        dpop = "DPoP " + ", ".join(dpop_params)
        if self.dpop_mode == "off":
            return bearer
        if self.dpop_mode == "required":
            return dpop
        return f"{bearer}, {dpop}"

    def _unauthorised(self, error: AuthError | None) -> Problem:
        if error is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            return Problem(
                401,
                "unauthenticated",
                "Authentication is required.",
                headers={"WWW-Authenticate": self.challenge()},
            )
        metrics.AUTH_FAILURES.labels(error.reason).inc()
        dpop_error = error.reason.startswith("dpop")
        return Problem(
            401,
            "invalid_dpop_proof" if dpop_error else "invalid_token",
            f"The credentials were refused: {error.description}.",
            headers={"WWW-Authenticate": self.challenge("invalid_token", error.description, dpop_error=dpop_error)},
        )

    def request_url(self, scope: Scope) -> str:
        path = scope.get("raw_path", b"").decode("latin-1").split("?")[0] or scope["path"]
        public = self.runtime.settings.public_url
        if public:
            return public + path
        hosts = header_values(scope, b"host")
        host = hosts[0].decode("latin-1") if hosts else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def authenticate(self, scope: Scope) -> Claims:
        values = header_values(scope, b"authorization")
        if not values:
            raise self._unauthorised(None)
        if len(values) > 1:
            raise self._unauthorised(AuthError("several Authorization headers", "malformed"))
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in {"bearer", "dpop"} or not token:
            raise self._unauthorised(AuthError("unsupported authorization scheme", "malformed"))
        try:
            claims = await self.runtime.tokens.verify(token)
            if scheme == "bearer":
                if self.dpop_mode == "required":
                    raise AuthError("DPoP-bound tokens are required", "bearer_refused")
                if claims.jkt is not None and self.dpop_mode != "off":
                    raise AuthError("a DPoP-bound token must be sent with the DPoP scheme", "bound_as_bearer")
                return claims
            if self.dpop_mode == "off":
                raise AuthError("DPoP is not enabled", "malformed")
            proofs = header_values(scope, b"dpop")
            if len(proofs) != 1:
                raise AuthError("exactly one DPoP proof is required", "dpop")
            await self.runtime.proofs.verify(
                proofs[0].decode("latin-1"),
                method=scope["method"],
                url=self.request_url(scope),
                access_token=token,
                jkt=claims.jkt,
            )
            return claims
        except AuthError as error:
            raise self._unauthorised(error) from None
        except KeysUnavailable as unavailable:
            # Fail closed: a key revoked at the provider since the last good fetch must not verify.
            # The refresh failures are logged and counted where they happen (app/security/keys.py).
            raise Problem(
                503,
                "keys_unavailable",
                "The token signing keys cannot be confirmed with the identity provider right now; retry shortly.",
                headers={"Retry-After": str(unavailable.retry_after)},
            ) from None
        except ReplayStoreUnavailable:
            log.error("DPoP replay store unavailable; refusing DPoP request")
            raise Problem(
                503,
                "replay_store_unavailable",
                "DPoP proofs cannot be checked right now; retry shortly.",
                headers={"Retry-After": "2"},
            ) from None

    # -- tenant, project, rate, scope ------------------------------------------------------------

    async def establish(self, scope: Scope, claims: Claims, trace_id: str) -> Caller:
        values = header_values(scope, b"x-stella-tenant")
        key = values[0].decode("latin-1") if len(values) == 1 else ""
        if not _TENANT.match(key):
            raise Problem(400, "tenant_header_required", "Send exactly one well-formed X-Stella-Tenant header.")
        if key not in claims.tenants:
            raise Problem(403, "tenant_forbidden", "The token does not grant this tenant.")
        tenant = await self.runtime.tenants.get(key)
        if tenant is None:
            raise Problem(403, "tenant_unknown", "This tenant is not registered with the gateway.")
        projects = header_values(scope, b"x-stella-project")
        project = projects[0].decode("latin-1") if len(projects) == 1 else None
        if len(projects) > 1 or (project is not None and not _PROJECT.match(project)):
            raise Problem(400, "project_header_invalid", "X-Stella-Project must be one well-formed project id.")
        return Caller(
            subject=claims.subject,
            client_id=claims.client_id,
            scopes=claims.scopes,
            granted_tenants=claims.tenants,
            tenant=tenant,
            project=project,
            trace_id=trace_id,
        )

    async def rate_limit(self, caller: Caller) -> None:
        limit = self.runtime.settings.rate_limit
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

    @staticmethod
    def authorise(caller: Caller, required: str | None) -> None:
        if required is None:
            log.error("route without a declared scope refused (fail closed)")
        if required is None or required not in caller.scopes:
            raise Problem(
                403,
                "insufficient_scope",
                f"This operation requires the scope {required or 'declared by the route'}.",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{required or ""}"'},
            )

    @staticmethod
    def operator(caller: Caller, scope: Scope, *, reason_required: bool) -> Caller:
        reasons = header_values(scope, b"x-stella-operator-reason")
        reason = operator_reason(reasons) if reason_required or reasons else None
        ticket = operator_ticket(header_values(scope, b"x-stella-operator-ticket"))
        return replace(caller, reason=reason, ticket=ticket)

    # -- audit of requests the handler did not audit itself (refusals, replays) --------------------

    async def audit_outcome(self, caller: Caller, scope: Scope, status: int, code: str | None) -> None:
        handler = scope["route_handler"]
        row = audit_row(
            as_declared(caller, scope),
            action=handler.opt.get("action", "unknown"),
            method=scope["method"],
            route=scope.get("path_template") or handler.paths.copy().pop(),
            target=_target(scope, handler.opt.get("target")),
            status=status,
            code=code,
        )
        try:
            async with self.runtime.sessions.begin() as session:
                session.add(row)
        except Exception as exc:  # noqa: BLE001 - the refusal stands; the failure is logged and counted
            metrics.AUDIT_FAILURES.inc()
            log.error("could not write the audit row of a refused request (%s)", type(exc).__name__)


def _target(scope: Scope, param: str | None) -> str | None:
    if param is None:
        return None
    value = scope.get("path_params", {}).get(param)
    return None if value is None else str(value)


def _is_openapi_document(scope: Scope, opt: dict[str, Any]) -> bool:
    """The OpenAPI documents are public (they are the published contract); their routes are the
    framework's and cannot carry ``opt``, so they are recognised by path. A route there that
    declares a scope stays protected."""
    config = scope["app"].openapi_config
    if config is None or opt.get("scope") is not None:
        return False
    base = "/" + (config.path or "/schema").strip("/")
    path = scope["path"]
    return path == base or path.startswith(base + "/")


def _is_automatic_options(scope: Scope, opt: dict[str, Any]) -> bool:
    """The automatic OPTIONS answer (``Allow``) reveals nothing; a declared OPTIONS route is guarded."""
    return scope["method"] == "OPTIONS" and opt.get("scope") is None


async def _answer_options(scope: Scope, send: Send) -> None:
    """204 with every method of the path in ``Allow`` (the framework's own answer lists only the
    methods of the first handler registered for a path)."""
    paths = scope["route_handler"].paths
    methods = {"OPTIONS"}
    for route in scope["app"].routes:
        if route.path in paths:
            methods.update(getattr(route, "methods", ()))
    await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", ", ".join(sorted(methods)).encode())]})
    await send({"type": "http.response.body", "body": b""})


class EnvelopeMiddleware:
    def __init__(self, app: ASGIApp, envelope: Envelope) -> None:
        self.app = app
        self.envelope = envelope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = ensure_trace_id(scope)
        opt = scope["route_handler"].opt
        if _is_automatic_options(scope, opt):
            await _answer_options(scope, send)
            return
        if opt.get("public") or _is_openapi_document(scope, opt):
            await self.app(scope, receive, send)
            return

        envelope = self.envelope
        claims = await envelope.authenticate(scope)
        caller = await envelope.establish(scope, claims, trace_id)
        method = scope["method"]
        mutating = method in MUTATING
        state = scope["state"]
        try:
            await envelope.rate_limit(caller)
            envelope.authorise(caller, opt.get("scope"))
            if mutating:
                caller = envelope.operator(caller, scope, reason_required=not opt.get("submission", False))
            key = idempotency_key(header_values(scope, b"idempotency-key")) if mutating else None
            if key is not None:
                caller = replace(caller, idempotency_key=key)
            state[CALLER_KEY] = caller
            if key is not None:
                status = await self._idempotent(scope, receive, send, caller)
            elif mutating:
                status = await self._forward(scope, receive, self._audit_refusal(scope, send, caller))
            else:
                status = await self._forward(scope, receive, send)
        except Problem as problem:
            if mutating:
                await envelope.audit_outcome(caller, scope, problem.status, problem.code)
            raise
        if mutating and status >= 400 and not state.get(AUDITED_KEY):
            await envelope.audit_outcome(caller, scope, status, state.get(PROBLEM_CODE_KEY))

    def _audit_refusal(self, scope: Scope, send: Send, caller: Caller) -> Send:
        """``send`` that writes a refused mutation's audit row before its response starts, so a
        client that reads the audit log after its answer finds the row."""

        async def audited(message: Message) -> None:
            state = scope["state"]
            if message["type"] == "http.response.start" and message["status"] >= 400 and not state.get(AUDITED_KEY):
                await self.envelope.audit_outcome(caller, scope, message["status"], state.get(PROBLEM_CODE_KEY))
                state[AUDITED_KEY] = True
            await send(message)

        return audited

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, capture)
        return status

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> int:
        store = self.envelope.idempotency
        body = await read_body(receive, self.envelope.runtime.settings.max_body_bytes)
        fingerprint = store.fingerprint(scope, body)
        stored = await store.claim(caller, fingerprint)
        if stored is not None:  # a completed first request: answer with its response
            await stored.send(send)
            await self.envelope.audit_outcome(caller, scope, stored.status, "idempotent_replay")
            scope["state"][AUDITED_KEY] = True
            return stored.status

        sent = False

        async def replay_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured = await store.capture(self.app, scope, replay_receive, self._audit_refusal(scope, send, caller))
        await store.settle(caller, captured)
        return captured.status


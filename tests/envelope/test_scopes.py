"""Scopes: every route declares one, the envelope enforces it, and a route without one is refused.

The route walks read ``app.routes``, so a route added later is covered without touching this file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.problems import problem_exception_handler
from app.http.idempotency import IdempotencyStore
from app.security.guards import MUTATING, authorise
from app.server import envelope_middleware
from tests.conftest import ALL_SCOPES
from tests.envelope import audit_rows

SCOPES = ALL_SCOPES.split()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with dummy values for path parameters
    opt: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _is_openapi(app: Litestar, route: Any) -> bool:
    schema_path = app.openapi_config.path if app.openapi_config else "/schema"
    return route.path == schema_path or route.path.startswith(schema_path.rstrip("/") + "/")


def _dummy(kind: type) -> str:
    return "1" if kind is int else "dummy-1"


def endpoints(app: Litestar) -> list[Endpoint]:
    """Every (method, path) the app serves, except OpenAPI documents and automatic OPTIONS answers."""
    found = []
    for route in app.routes:
        if _is_openapi(app, route):
            continue
        path = route.path_format.format(**{n: _dummy(p.type) for n, p in route.path_parameters.items()})
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods):
                if method == "OPTIONS" and handler.fn.__module__.startswith("litestar."):
                    continue
                found.append(Endpoint(method, path, dict(handler.opt)))
    return found


def short_lived(endpoint: Endpoint) -> dict[str, Any]:
    """An event stream ends at its token's expiry: a token of one second lets the in-process client
    (which reads a whole body) have its answer."""
    return {"exp": int(time.time()) + 1} if endpoint.opt.get("stream") else {}


def protected_endpoints(app: Litestar) -> list[Endpoint]:
    return [e for e in endpoints(app) if not e.opt.get("public")]


def test_every_route_is_public_or_declares_a_scope(app):
    found = endpoints(app)
    assert any(e.path == "/jobengine/sources" for e in found), "the route walk found no application route"
    undeclared = [str(e) for e in found if not e.opt.get("public") and not e.opt.get("scope")]
    assert undeclared == [], f"routes without a declared scope: {undeclared}"


def test_only_health_readiness_and_metrics_are_public(app):
    public = {e.path for e in endpoints(app) if e.opt.get("public")}
    assert public == {"/healthz", "/readyz", "/metrics"}


def test_declared_scopes_are_known_scopes(app):
    unknown = [f"{e}: {e.opt['scope']}" for e in protected_endpoints(app) if e.opt["scope"] not in SCOPES]
    assert unknown == []


def test_every_mutation_declares_an_audit_action(app):
    silent = [str(e) for e in protected_endpoints(app) if e.method in MUTATING and not e.opt.get("action")]
    assert silent == []


async def test_each_route_refuses_a_token_without_its_scope(client, factory, app):
    tenant = await factory.tenant()
    checked, wrong = 0, []
    for endpoint in protected_endpoints(app):
        required = endpoint.opt["scope"]
        others = " ".join(s for s in SCOPES if s != required)
        headers = factory.headers(tenant, scope=others, **short_lived(endpoint))
        body = {} if endpoint.method in {"POST", "PUT", "PATCH"} else None
        response = await client.request(endpoint.method, endpoint.path, json=body, headers=headers)
        challenge = response.headers.get("www-authenticate", "")
        problem = response.json() if response.content else {}
        if (
            response.status_code != 403
            or problem.get("code") != "insufficient_scope"
            or challenge != f'Bearer error="insufficient_scope", scope="{required}"'
        ):
            wrong.append(f"{endpoint}: {response.status_code} {problem.get('code')} {challenge!r}")
        checked += 1
    assert checked >= 4
    assert wrong == []


async def test_each_route_accepts_a_token_with_only_its_scope(client, factory, app):
    """The scope a route declares is enough: the answer is never a 401 or 403."""
    tenant = await factory.tenant()
    refused = []
    for endpoint in protected_endpoints(app):
        headers = factory.headers(tenant, scope=endpoint.opt["scope"], **short_lived(endpoint))
        body = {} if endpoint.method in {"POST", "PUT", "PATCH"} else None
        response = await client.request(endpoint.method, endpoint.path, json=body, headers=headers)
        if response.status_code in (401, 403):
            refused.append(f"{endpoint}: {response.status_code} {response.text[:200]}")
    assert refused == []


async def test_scope_may_also_come_as_an_scp_list(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant, scope=None, scp=["orch:read"])
    assert (await client.get("/jobengine/sources", headers=headers)).status_code == 200
    headers = factory.headers(tenant, scope=None, scp=["orch:quota"])
    assert (await client.get("/jobengine/sources", headers=headers)).status_code == 403


async def test_scope_is_matched_exactly_not_by_prefix(client, factory):
    tenant = await factory.tenant()
    for scope in ("orch:rea", "orch:read:all", "ORCH:READ", "orch:*", "orch"):
        response = await client.get("/jobengine/sources", headers=factory.headers(tenant, scope=scope))
        assert response.status_code == 403, scope


async def test_refused_mutation_for_missing_scope_is_audited(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(
        "/jobengine/sources",
        json={"name": "x", "sourceType": "scanner"},
        headers=factory.headers(tenant, scope="orch:read"),
    )
    assert response.status_code == 403
    rows = await audit_rows(runtime, tenant)
    assert [(r.result_status, r.result_code, r.action) for r in rows] == [
        (403, "insufficient_scope", "source.create")
    ]


# --- fail closed: a route that forgot its scope ----------------------------------------------------


def _caller(scopes: str) -> Caller:
    from app.core.caller import TenantInfo

    return Caller(
        subject="s",
        client_id=None,
        scopes=frozenset(scopes.split()),
        granted_tenants=("t",),
        tenant=TenantInfo(1, "t", "x", 1, "w"),
        project=None,
        trace_id="trace-0001",
    )


@pytest.mark.parametrize("required", [None, ""])
def test_authorise_refuses_a_route_without_a_declared_scope(required):
    with pytest.raises(Problem) as refused:
        authorise(_caller(ALL_SCOPES), required)
    assert (refused.value.status, refused.value.code) == (403, "insufficient_scope")


def test_authorise_lets_the_declared_scope_through():
    authorise(_caller("orch:read"), "orch:read")


async def test_envelope_refuses_a_route_that_declares_no_scope(app, runtime, factory):
    """A tiny app behind the same envelope (the gateway's middleware and before_request, which runs
    the guards): its undeclared route
    answers 403 even to an all-scopes token."""

    @get("/undeclared")
    async def undeclared() -> dict[str, str]:
        return {"leak": "yes"}

    @post("/undeclared-write", opt={"action": "x.write"})
    async def undeclared_write() -> dict[str, str]:
        return {"leak": "yes"}

    @get("/declared", opt={"scope": "orch:read"})
    async def declared() -> dict[str, str]:
        return {"ok": "yes"}

    tiny = Litestar(
        route_handlers=[undeclared, undeclared_write, declared],
        middleware=envelope_middleware(runtime, "/schema", IdempotencyStore(runtime.sessions)),
        before_request=app.before_request,
        exception_handlers={Exception: problem_exception_handler},
        logging_config=None,
    )
    tenant = await factory.tenant()
    transport = httpx.ASGITransport(app=tiny)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as tiny_client:
        headers = factory.headers(tenant)
        read = await tiny_client.get("/undeclared", headers=headers)
        write = await tiny_client.post("/undeclared-write", headers=headers)
        allowed = await tiny_client.get("/declared", headers=headers)
        anonymous = await tiny_client.get("/undeclared")
    assert (read.status_code, read.json()["code"]) == (403, "insufficient_scope")
    assert (write.status_code, write.json()["code"]) == (403, "insufficient_scope")
    assert "leak" not in read.text + write.text
    assert allowed.status_code == 200
    assert anonymous.status_code == 401


async def test_openapi_document_is_public(client):
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert "/jobengine/sources" in response.json()["paths"]


async def test_a_scoped_route_that_authentication_skips_is_refused_not_let_through():
    """Litestar's authentication middleware skips OPTIONS; a declared OPTIONS route with a scope
    must still be refused by the scope guard rather than answered without a caller."""
    from litestar import route

    from app.security.guards import require_scope

    @route("/probe", http_method=["OPTIONS"], opt={"scope": "orch:read"}, guards=[require_scope])
    async def probe() -> str:
        return "reached"

    app = Litestar(
        route_handlers=[probe], exception_handlers={Exception: problem_exception_handler}, logging_config=None
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.options("/probe")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


def test_every_route_runs_the_app_s_guards(app):
    """The guards run in the app's ``before_request``: a handler, controller or router declaring its
    own would replace it and skip them, so none does (the OpenAPI documents and OPTIONS included)."""
    from app.server import BeforeHandler

    assert isinstance(app.before_request, BeforeHandler)
    assert not app.guards
    handlers = [handler for route in app.routes for handler in getattr(route, "route_handlers", ())]
    assert len(handlers) > 50
    for handler in handlers:
        assert handler.resolve_before_request() is app.before_request, handler

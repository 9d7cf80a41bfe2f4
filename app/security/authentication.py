"""Authentication: credentials, then tenant and project → the request's :class:`Caller`.

A Litestar authentication middleware: the caller lands in ``request.user`` (``scope["user"]``)
and the token's claims in ``request.auth``. Routes with ``opt["public"]`` and the OpenAPI
documents are excluded; every other route reaches its guards (``app/security/guards.py``) only
with a caller. An unauthenticated request learns nothing about tenants: credentials come first.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.tracing import ensure_trace_id, header_values
from app.security import header_rules as rules
from app.security.credentials import Credentials, CredentialServices
from app.storage.tenants import TenantRegistry


class CallerServices(CredentialServices, Protocol):
    """What authentication needs of the process (the runtime has it)."""

    tenants: TenantRegistry

PUBLIC_KEY = "public"  # the route ``opt`` key of routes outside authentication

_TENANT = re.compile(rules.TENANT_PATTERN)
_PROJECT = re.compile(rules.PROJECT_PATTERN)


class CallerAuthentication(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp, runtime: CallerServices, openapi_path: str | None = None) -> None:
        base = "/" + (openapi_path or "/schema").strip("/")
        super().__init__(app, exclude=[rf"^{re.escape(base)}(/|$)"], exclude_from_auth_key=PUBLIC_KEY)
        self.runtime = runtime
        self.credentials = Credentials(runtime)

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        scope = connection.scope
        claims = await self.credentials.verify(scope)
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
        caller = Caller(
            subject=claims.subject,
            client_id=claims.client_id,
            scopes=claims.scopes,
            granted_tenants=claims.tenants,
            tenant=tenant,
            project=project,
            trace_id=ensure_trace_id(scope),
        )
        return AuthenticationResult(user=caller, auth=claims)

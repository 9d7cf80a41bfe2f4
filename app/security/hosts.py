"""``JOBGATE_ALLOWED_HOSTS``: requests naming another ``Host`` are refused (400 ``host_not_allowed``).

Without ``JOBGATE_PUBLIC_URL`` the request's ``Host`` is what DPoP ``htu`` and ``Location`` are
built on, so it must be one the operator named. The list is Litestar's :class:`AllowedHostsConfig`
(exact names, ``*.example.com`` for subdomains) matched on the host name without its port, before
authentication; public routes (probes address a pod by its IP) are not checked.
"""

from __future__ import annotations

from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.middleware.allowed_hosts import AllowedHostsMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.core.problems import Problem
from app.http.tracing import header_values


def allowed_hosts_config(hosts: tuple[str, ...]) -> AllowedHostsConfig:
    return AllowedHostsConfig(allowed_hosts=list(hosts), exclude_opt_key="public", www_redirect=False)


def _hostname(host: str) -> str:
    if host.startswith("["):  # an IPv6 literal, maybe with a port
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


class HostCheck(AllowedHostsMiddleware):
    """Litestar's allowed-hosts check, answering with a problem instead of its plain body."""

    def __init__(self, app: ASGIApp, config: AllowedHostsConfig) -> None:
        super().__init__(app, config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hosts = header_values(scope, b"host")
        host = _hostname(hosts[0].decode("latin-1").lower()) if len(hosts) == 1 else ""
        if self.allowed_hosts_regex is not None and not (host and self.allowed_hosts_regex.fullmatch(host)):
            raise Problem(400, "host_not_allowed", "The request's Host is not one this gateway serves.")
        await self.app(scope, receive, send)

"""The composition root: ``create_app()`` builds the gateway from its settings.

A request enters through the request observer (``app/http/observability.py``: metrics, access
log, span), then the envelope: the allowed-hosts check (``app/security/hosts.py``),
authentication (``app/security/authentication.py``: credentials, tenant → the caller), the audit
of refused mutations (``app/security/audit.py``), the guards (``app/security/guards.py``: rate
limit, scope, operator reason; run first by the app's ``before_request``) and the Idempotency-Key
(``app/http/idempotency.py``). Routes live
in their domain packages; errors become problem details in ``app/http/problems.py``; every JSON
response is encoded in ``app/http/caching.py``. docs/design.md "The request path" has the map.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Server

from app.domain.audit import routes as audit
from app.domain.deadletter import routes as deadletter
from app.domain.events import routes as events
from app.domain.health import routes as health
from app.domain.jobs import routes as jobs
from app.domain.operations import routes as operations
from app.domain.packruns import routes as packruns
from app.domain.quotas import routes as quotas
from app.domain.sources import routes as sources
from app.domain.workers import routes as workers
from app import metrics
from app.engine import embedded
from app.http.caching import GatewayResponse, Revalidation, keep_vary
from app.http.idempotency import IdempotencyClaim, IdempotencySettle, IdempotencyStore
from app.http.links import add_links
from app.http.mutation import provide_caller, provide_mutation, provide_submission
from app.http.observability import RequestObserver
from app.http.options import AutomaticOptions
from app.http.openapi import close_strict_objects
from app.http.params import query_rules
from app.http.problems import problem_exception_handler
from app.http.requests import GatewayRequest
from app.http.routes import BEARER
from app.http.sessions import provide_session
from app.logs import configure_logging
from app.runtime import Runtime
from app.security.audit import MutationAudit
from app.security.authentication import CallerAuthentication
from app.security.guards import Guards, RateLimitGuard, require_operator, require_scope
from app.security.hosts import HostCheck, allowed_hosts_config
from app.settings import Settings, load_settings
from app.storage.rates import RateShares
from app.telemetry import Tracing, configure_tracing

VERSION = "0.1.0"
PROTECTED_ROUTES = [*sources.ROUTES, *quotas.ROUTES, *jobs.ROUTES, *deadletter.ROUTES, *packruns.ROUTES, *audit.ROUTES, *operations.ROUTES, *workers.ROUTES, *events.ROUTES]
PUBLIC_ROUTES = [*health.ROUTES]

OPENAPI_PATH = "/schema"

CORS_ALLOW_HEADERS = [
    "Authorization",
    "DPoP",
    "Content-Type",
    "X-Stella-Tenant",
    "X-Stella-Project",
    "X-Stella-Trace-Id",
    "X-Stella-Operator-Reason",
    "X-Stella-Operator-Ticket",
    "If-None-Match",
    "If-Match",
    "Idempotency-Key",
]
CORS_EXPOSE_HEADERS = ["ETag", "Location", "X-Stella-Trace-Id", "Retry-After", "WWW-Authenticate", "DPoP-Nonce"]


def create_app(
    settings: Settings | None = None, *, runtime: Runtime | None = None, tracing: Tracing | None = None
) -> Litestar:
    """``tracing`` defaults to what the ``OTEL_*`` variables ask for (``app/telemetry.py``)."""
    settings = settings or load_settings()
    configure_logging(settings.log_format, settings.log_level)
    runtime = runtime or Runtime.create(settings)
    tracing = tracing or configure_tracing()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        reads = runtime.list_reads.size if runtime.list_reads else 0
        unwatch_pool = metrics.watch_pool(runtime.engine, also=reads)
        stop_worker = await embedded.start(runtime)  # the embedded default runs its worker in-process
        try:
            yield
        finally:
            await stop_worker()
            await runtime.stop()
            unwatch_pool()
            metrics.process_exiting()
            if tracing is not None:
                tracing.shutdown()

    idempotency = IdempotencyStore(runtime.sessions)
    revalidation = Revalidation(runtime)
    app = Litestar(
        route_handlers=[*PUBLIC_ROUTES, *PROTECTED_ROUTES],
        # The envelope, in the order a request meets it (middleware first, then the before_request
        # hook: the guards, then the claim or the revalidation); docs/design.md "The request path".
        middleware=envelope_middleware(runtime, OPENAPI_PATH, idempotency),
        before_request=BeforeHandler(
            Guards(
                RateLimitGuard(RateShares(runtime.store), settings.rate_limit),
                require_scope,
                require_operator,
                query_rules,
            ),
            IdempotencyClaim(idempotency),
            revalidation,
        ),
        request_class=GatewayRequest,
        dependencies={
            "session": Provide(provide_session),
            "caller": Provide(provide_caller),
            "mutation": Provide(provide_mutation),
            "submission": Provide(provide_submission),
        },
        exception_handlers={Exception: problem_exception_handler},
        response_class=GatewayResponse,
        before_send=[keep_vary],
        lifespan=[lifespan],
        state=State({"runtime": runtime, "revalidation": revalidation}),
        cors_config=CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_credentials=False,
            max_age=600,
        )
        if settings.cors_origins
        else None,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Stella JobEngine Gateway",
            version=VERSION,
            description="The HTTP entry point to the job engine's control plane.",
            path=OPENAPI_PATH,
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
            servers=[Server(url="/")],
            components=Components(
                security_schemes={
                    BEARER: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="Bearer or DPoP-bound JWT (RFC 9449) from the configured issuer",
                    )
                }
            ),
            use_handler_docstrings=False,
        ),
        logging_config=None,  # app/logs.py owns logging: every handler masks secrets
        debug=False,
    )
    close_strict_objects(app)
    add_links(app)
    # Outside the router, so that requests no route matches are observed too.
    app.asgi_handler = RequestObserver(app.asgi_handler, tracing)
    return app


class BeforeHandler:
    """The app's ``before_request``: the guards, then a mutation's Idempotency-Key claim or a GET's
    revalidation without the database (each answers in the handler's place, or lets it run).

    The guards run here rather than as Litestar ``guards``, which hand each guard its own copy of
    the route handler on every request (about a tenth of a 304's CPU). The place is the same: after
    every middleware, inside the route's exception handling (a refusal passes the audit of refused
    mutations), before anything else of the route. No handler, controller or router may declare a
    ``before_request`` of its own, which would replace this one (``tests/envelope/test_scopes.py``)."""

    def __init__(self, guards: Guards, claim: IdempotencyClaim, revalidation: Revalidation) -> None:
        self.guards = guards
        self.claim = claim
        self.revalidation = revalidation

    async def __call__(self, request: Any) -> Any:
        await self.guards(request, request.route_handler)
        if request.method == "GET":
            return await self.revalidation(request)
        return await self.claim(request)


def envelope_middleware(runtime: Runtime, openapi_path: str, idempotency: IdempotencyStore) -> list[Any]:
    """Host, then authentication (a request refused there has no tenant to audit), then the audit
    of refused mutations around the Idempotency-Key's settling, around the guards and handler."""
    hosts = runtime.settings.allowed_hosts
    return [
        AutomaticOptions,
        *([DefineMiddleware(HostCheck, config=allowed_hosts_config(hosts))] if hosts else []),
        DefineMiddleware(CallerAuthentication, runtime=runtime, openapi_path=openapi_path),
        DefineMiddleware(MutationAudit, sessions=runtime.sessions, store=runtime.store),
        DefineMiddleware(IdempotencySettle, store=idempotency),
    ]


def create_served_app() -> Litestar:
    """The application of a ``jobgate serve`` worker process: :func:`create_app`, and once it has
    started, every object it holds until it exits (modules, routes, the runtime) moved out of the
    garbage collector's generations. Each request allocates thousands of short-lived objects, so
    collections run several times a request; without the freeze each collection of the older
    generations walks the whole application again. Only the serving process does this: an
    application built and dropped again (the tests) leaves its cycles to the collector."""
    app = create_app()
    app.on_startup.append(freeze_long_lived)
    app.on_startup.append(end_streams_on_drain)
    return app


def end_streams_on_drain(app: Litestar) -> None:
    """SIGUSR1 (sent by ``jobgate serve`` when it is asked to stop, ``app/cli.py``) ends every event
    stream of this process with a ``retry:`` hint, so that the server's drain is not held by them."""
    feed = app.state.runtime.feed
    if feed is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, feed.end_streams)


def freeze_long_lived() -> None:
    """Move every object alive now out of the collector's generations (once a worker has started)."""
    gc.collect()
    gc.freeze()

"""The outermost layer of every HTTP request: its metrics, its access-log line, its span, and the
``X-Stella-Trace-Id`` every response carries.

It wraps the whole application (routing included) so that a path no route matches is counted
too, under the fixed label ``unmatched``; a matched request is labelled with its route template
(``/jobengine/sources/{sourceId}``), never with the raw path. The caller (tenant, subject) is
read from what authentication decided (``scope["user"]``), after the request.

With tracing on (``app/telemetry.py``) the request runs inside one server span named
``{method} {route template}``. The span continues the caller's W3C ``traceparent``; without one,
an ``X-Stella-Trace-Id`` of 32 hex digits becomes the span's trace id. A request without an
``X-Stella-Trace-Id`` answers with the span's trace id as its ``X-Stella-Trace-Id``; the id
the response carries is always on the span as ``stella.trace_id``. With tracing off no span
work is done.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.http.tracing import as_w3c_trace_id, client_trace_id, ensure_trace_id
from app.logs import write_line
from app.sanitize import sanitize
from app.security.caller import caller_in

if TYPE_CHECKING:
    from app.telemetry import Tracing

access_log = logging.getLogger("jobgate.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope) -> str:
    """The route template of a routed request, else ``unmatched`` (bounded either way)."""
    if "route_handler" not in scope:
        return metrics.UNMATCHED
    return scope.get("path_template") or metrics.UNMATCHED


def method_label(scope: Scope) -> str:
    method = scope.get("method", "")
    return method if method in METHODS else "other"


class RequestObserver:
    def __init__(self, app: ASGIApp, tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what is recorded when the application fails before it answers

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-stella-trace-id", ensure_trace_id(scope).encode())]
            await send(message)

        if self.tracing is None:
            try:
                await self.app(scope, receive, capture)
            finally:
                _record(scope, status, time.perf_counter() - started)
            return

        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from app.telemetry import WANTED_TRACE_ID

        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        parent = propagate.extract(carrier)
        asked = client_trace_id(scope)
        wanted = None if trace.get_current_span(parent).get_span_context().is_valid else as_w3c_trace_id(asked)
        token = WANTED_TRACE_ID.set(wanted)
        try:
            span = self.tracing.tracer.start_span(scope["method"], context=parent, kind=SpanKind.SERVER)
        finally:
            WANTED_TRACE_ID.reset(token)
        trace_id = ensure_trace_id(scope, generated=format(span.get_span_context().trace_id, "032x"))
        span.set_attribute("stella.trace_id", trace_id)
        span.set_attribute("http.request.method", scope["method"])
        span.set_attribute("url.path", sanitize(scope.get("path", "")))
        span.set_attribute("url.scheme", scope.get("scheme", "http"))
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
                await self.app(scope, receive, capture)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope)
            if route != metrics.UNMATCHED:
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            caller = caller_in(scope)
            if caller is not None:
                span.set_attribute("stella.tenant", caller.tenant.key)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            _record(scope, status, seconds)


def _record(scope: Scope, status: int, seconds: float) -> None:
    method, route = method_label(scope), route_label(scope)
    metrics.observe_request(method, route, status, seconds)
    if not access_log.isEnabledFor(logging.INFO):
        return
    caller = caller_in(scope)
    duration_ms = round(seconds * 1000, 2)
    write_line(
        access_log,
        f"{method} {route} {status} {duration_ms:.2f}ms",
        {
            "traceId": ensure_trace_id(scope),
            "tenant": caller.tenant.key if caller is not None else None,
            "subject": caller.subject if caller is not None else None,
            "method": method,
            "route": route,
            "status": status,
            "durationMs": duration_ms,
        },
    )

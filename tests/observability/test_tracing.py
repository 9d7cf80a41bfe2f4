"""OpenTelemetry request spans: off unless the standard variables ask for them; one server span
per request named after its route template; X-Stella-Trace-Id and the span's trace id joined."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.server import create_app
from app.settings import load_settings
from app.telemetry import configure_tracing, tracing_wanted
from tests.conftest import serving
from tests.observability.support import Served, wait_until

TRACE = "X-Stella-Trace-Id"
SOURCE_ROUTE = "/jobengine/sources/{sourceId}"
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "jobgate"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_switched_on_only_by_the_standard_variables(environ, wanted):
    assert tracing_wanted(environ) is wanted
    if not wanted:
        assert configure_tracing(environ) is None


def test_an_unknown_exporter_stops_start_up_naming_the_variable():
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "carrier-pigeon"})


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traced(gateway_env, spans) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    app = create_app(load_settings(gateway_env), tracing=configure_tracing({}, exporter=spans))
    async with serving(app) as client:
        yield client


async def _one_span(spans: InMemorySpanExporter, send):  # type: ignore[no-untyped-def]
    spans.clear()
    response = await send()
    (span,) = spans.get_finished_spans()
    return response, span


def _hex(span) -> str:  # type: ignore[no-untyped-def]
    return format(span.context.trace_id, "032x")


async def test_request_span_is_named_after_its_route_and_carries_the_http_facts(traced, spans, factory):
    tenant = await factory.tenant()
    source = await factory.source(traced, tenant)
    response, span = await _one_span(
        spans, lambda: traced.get(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(tenant))
    )
    assert response.status_code == 200
    assert span.name == f"GET {SOURCE_ROUTE}" and span.kind is SpanKind.SERVER
    assert span.parent is None
    attributes = dict(span.attributes)
    assert attributes["http.route"] == SOURCE_ROUTE
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["stella.tenant"] == tenant
    # without a trace id of its own, the request answers with the span's
    assert response.headers[TRACE] == _hex(span) == attributes["stella.trace_id"]


async def test_span_continues_the_callers_traceparent(traced, spans, factory):
    tenant = await factory.tenant()
    headers = {**factory.headers(tenant), "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}
    response, span = await _one_span(spans, lambda: traced.get("/jobengine/sources", headers=headers))
    assert _hex(span) == PARENT_TRACE and format(span.parent.span_id, "016x") == PARENT_SPAN
    assert response.headers[TRACE] == PARENT_TRACE


async def test_hex_trace_id_of_the_caller_becomes_the_spans_trace_id(traced, spans, factory):
    tenant = await factory.tenant()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    response, span = await _one_span(
        spans, lambda: traced.get("/jobengine/sources", headers={**factory.headers(tenant), TRACE: trace_id})
    )
    assert response.headers[TRACE] == trace_id == _hex(span)
    assert span.parent is None


async def test_other_trace_id_of_the_caller_is_echoed_and_kept_on_the_span(traced, spans, factory):
    tenant = await factory.tenant()
    headers = {**factory.headers(tenant), TRACE: "ticket-OPS-1234.retry:2"}
    response, span = await _one_span(spans, lambda: traced.get("/jobengine/sources", headers=headers))
    assert response.headers[TRACE] == "ticket-OPS-1234.retry:2" == span.attributes["stella.trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", _hex(span))


async def test_traceparent_wins_over_a_hex_trace_id_and_both_are_findable(traced, spans, factory):
    tenant = await factory.tenant()
    trace_id = "1" * 32
    headers = {**factory.headers(tenant), TRACE: trace_id, "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}
    response, span = await _one_span(spans, lambda: traced.get("/jobengine/sources", headers=headers))
    assert _hex(span) == PARENT_TRACE
    assert response.headers[TRACE] == trace_id == span.attributes["stella.trace_id"]


async def test_refused_and_unmatched_requests_have_spans_too(traced, spans):
    refused, span = await _one_span(spans, lambda: traced.get("/jobengine/sources"))
    assert refused.status_code == 401 and span.name == "GET /jobengine/sources"
    assert span.attributes["http.response.status_code"] == 401 and "stella.tenant" not in span.attributes
    unmatched, span = await _one_span(spans, lambda: traced.get("/no/such/path"))
    assert unmatched.status_code == 404 and span.name == "GET" and "http.route" not in span.attributes
    assert unmatched.headers[TRACE] == _hex(span)


def _console_spans(text: str) -> list[dict]:  # type: ignore[type-arg]
    """The span objects the SDK's console exporter printed (indented JSON between log lines)."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := text.find("{\n", index)) != -1:
        try:
            value, index = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(value, dict) and "context" in value:
            found.append(value)
    return found


def test_standard_variables_switch_tracing_on_in_the_served_gateway(gateway_env):
    served = Served(
        gateway_env,
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="jobgate-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    try:
        served.wait_ready()
        trace_id = "5" * 32
        response = httpx.get(f"{served.url}/jobengine/sources", headers={TRACE: trace_id})
        assert response.status_code == 401

        def printed():  # type: ignore[no-untyped-def]
            return [s for s in _console_spans(served.output()) if s["name"] == "GET /jobengine/sources"]

        (span,) = wait_until(printed)
        assert span["context"]["trace_id"] == f"0x{trace_id}"
        assert span["kind"] == "SpanKind.SERVER"
        assert span["attributes"]["stella.trace_id"] == trace_id
        assert span["resource"]["attributes"]["service.name"] == "jobgate-under-test"
    finally:
        served.close()

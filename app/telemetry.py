"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` variables switch it on.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, …; ``none`` is off)
or, with that variable unset, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true`` turns it off whatever
else is set. Everything else (endpoint, headers, timeouts, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``) is read by the SDK
and the exporter themselves. ``otlp`` is the OTLP http/protobuf exporter, the one installed.

The one decision of our own is the trace id of a root span: when the caller sent no
``traceparent`` but an ``X-Stella-Trace-Id`` that is a W3C trace id (32 lowercase hex digits),
the span's trace id is that id, so the gateway's trace id and the trace are one and the same
(see :class:`JoinedIdGenerator` and ``app/http/observability.py``).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from app.settings import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

# "otlp" is the OTLP exporter of the installed protocol package (http/protobuf).
_ALIASES = {"otlp": "otlp_proto_http"}
WANTED_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("jobgate_wanted_trace_id", default=None)


def tracing_wanted(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return any(name.strip().lower() not in ("", "none") for name in exporters.split(","))
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    names = [n for n in names if n and n != "none"] or ["otlp"]
    available = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
    exporters = []
    for name in names:
        entry = available.get(_ALIASES.get(name, name))
        if entry is None:
            known = ", ".join(sorted({*available, *_ALIASES}))
            raise SettingsError(f"OTEL_TRACES_EXPORTER names an unknown exporter {name!r} (known: {known})")
        exporters.append(entry.load()())
    return exporters


def _joined_id_generator():  # type: ignore[no-untyped-def]
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class JoinedIdGenerator(RandomIdGenerator):
        """A root span takes the trace id the request asked for (:data:`WANTED_TRACE_ID`), if any."""

        def generate_trace_id(self) -> int:
            return WANTED_TRACE_ID.get() or super().generate_trace_id()

    return JoinedIdGenerator()


@dataclass
class Tracing:
    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Flush the spans still queued and stop the exporters."""
        self.provider.shutdown()


def configure_tracing(
    environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> Tracing | None:
    """The process's tracing, or ``None`` when it is off (then requests do no tracing work at all).

    ``exporter`` (tests) exports each span synchronously and leaves the global provider alone;
    otherwise the env-named exporters get a batch processor and the provider becomes global.
    """
    env = os.environ if environ is None else environ
    if exporter is None and not tracing_wanted(env):
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({})  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, read by the SDK
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "jobgate"}))
    provider = TracerProvider(resource=resource, id_generator=_joined_id_generator())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for configured in _exporters(env):
            provider.add_span_processor(BatchSpanProcessor(configured))
        trace.set_tracer_provider(provider)
    return Tracing(provider=provider, tracer=provider.get_tracer("jobgate"))

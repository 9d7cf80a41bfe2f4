"""The request's trace id: the client's ``X-Stella-Trace-Id`` when well-formed, else a new one.

A new one is the request span's trace id when tracing is on (``app/http/observability.py``
decides it before anything else runs), else a random 32-hex id of the same shape.
"""

from __future__ import annotations

import os
import re

from litestar.types import Scope

from app.security.header_rules import TRACE_ID_PATTERN

TRACE_KEY = "jobgate_trace_id"
_TRACE = re.compile(TRACE_ID_PATTERN)
_W3C_TRACE_ID = re.compile(r"^(?!0{32})[0-9a-f]{32}$")


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key.lower() == name]


def client_trace_id(scope: Scope) -> str | None:
    """The one well-formed ``X-Stella-Trace-Id`` the client sent, if it sent exactly one."""
    values = header_values(scope, b"x-stella-trace-id")
    candidate = values[0].decode("latin-1") if len(values) == 1 else ""
    return candidate if _TRACE.match(candidate) else None


def as_w3c_trace_id(trace_id: str | None) -> int | None:
    """The trace id as an OpenTelemetry trace id when it is one (32 lowercase hex, not all zero)."""
    return int(trace_id, 16) if trace_id is not None and _W3C_TRACE_ID.match(trace_id) else None


def ensure_trace_id(scope: Scope, generated: str | None = None) -> str:
    """Decided once per request and kept in the scope state; ``generated`` is the id to use
    when the client sent none."""
    state = scope.setdefault("state", {})
    trace = state.get(TRACE_KEY)
    if trace is None:
        trace = client_trace_id(scope) or generated or os.urandom(16).hex()
        state[TRACE_KEY] = trace
    return trace

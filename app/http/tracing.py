"""The request's trace id: the client's ``X-Stella-Trace-Id`` when well-formed, else a new one."""

from __future__ import annotations

import re
import uuid

from litestar.types import Scope

from app.security.header_rules import TRACE_ID_PATTERN

TRACE_KEY = "jobgate_trace_id"
_TRACE = re.compile(TRACE_ID_PATTERN)


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key.lower() == name]


def ensure_trace_id(scope: Scope) -> str:
    """Decided once per request and kept in the scope state."""
    state = scope.setdefault("state", {})
    trace = state.get(TRACE_KEY)
    if trace is None:
        values = header_values(scope, b"x-stella-trace-id")
        candidate = values[0].decode("latin-1") if len(values) == 1 else ""
        trace = candidate if _TRACE.match(candidate) else uuid.uuid4().hex
        state[TRACE_KEY] = trace
    return trace

"""Where the envelope leaves the caller of a request: the request scope's state."""

from __future__ import annotations

from typing import Any

from app.core.caller import Caller

CALLER_KEY = "jobgate_caller"


def caller_of(scope: Any) -> Caller:
    """The caller the envelope established; routes behind the envelope always have one."""
    return scope["state"][CALLER_KEY]

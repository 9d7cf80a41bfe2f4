"""Where authentication leaves the caller of a request: ``scope["user"]`` (``request.user``)."""

from __future__ import annotations

from typing import Any

from app.core.caller import Caller


def caller_in(scope: Any) -> Caller | None:
    """The caller of an authenticated request; None where authentication does not apply."""
    return scope.get("user")

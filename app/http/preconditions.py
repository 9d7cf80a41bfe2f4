"""``If-Match`` on writes: the strong comparison against the ETag of the current representation."""

from __future__ import annotations

from typing import Any

from litestar import Request

from app.core.problems import Problem
from app.http.caching import etag_of, matches


def require_current(request: Request[Any, Any, Any], current: Any, what: str) -> None:
    """412 ``precondition_failed`` unless ``If-Match`` names ``current`` (its view as GET shows it);
    without ``If-Match`` the write is unconditional."""
    if_match = request.headers.get("if-match")
    if if_match is not None and not matches(if_match, etag_of(current), strong=True):
        raise Problem(412, "precondition_failed", f"The {what} changed since the given ETag; fetch it again.")

"""Conditional requests and cache headers, built once for every route.

Every JSON response is encoded here with a deterministic key order, so equal content is equal
bytes in every process; the strong ``ETag`` of a GET is a hash of those bytes. ``If-None-Match``
answers 304 with no body. The cache policy of a route is declared in its ``opt["cache"]``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response.base import ASGIResponse

CACHE_POLICIES = {
    "console": "private, max-age=60, stale-if-error=300",
    "poll": "private, no-cache",
    "none": "no-store",
}
VARY = "Authorization, X-Stella-Tenant, X-Stella-Project"


def encode(content: Any) -> bytes:
    return msgspec.json.encode(content, order="deterministic")


def etag_of_body(body: bytes) -> str:
    # SHA-256 (OpenSSL, with the CPU's SHA instructions where it has them) hashes a page about
    # twice as fast as BLAKE2b here; 128 bits of it are plenty for a tag.
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_of(content: Any) -> str:
    return etag_of_body(encode(content))


def matches(header: str | None, etag: str, *, strong: bool = False) -> bool:
    """``*`` or any listed tag (RFC 9110 §13.1).

    ``If-None-Match`` uses the weak comparison (``W/`` ignored); ``If-Match`` needs ``strong=True``,
    under which a weak tag never matches.
    """
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = (tag.strip() for tag in header.split(","))
    if strong:
        return any(tag == etag for tag in tags)
    return any(tag.removeprefix("W/") == etag for tag in tags)


def read_answer(content: Any, policy: str, if_none_match: str | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A GET's answer of ``content`` as status, body and headers: 200 with the canonical JSON, or
    304 with no body when ``If-None-Match`` holds its ETag. The same answer as
    :class:`GatewayResponse` gives through the framework (``app/http/direct.py``)."""
    body = encode(content)
    etag = etag_of_body(body)
    headers = [(b"etag", etag.encode()), (b"cache-control", _POLICY_BYTES[policy]), (b"vary", _VARY_BYTES)]
    if matches(if_none_match, etag):
        return 304, b"", headers
    headers += ((b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()))
    return 200, body, headers


_POLICY_BYTES = {policy: value.encode() for policy, value in CACHE_POLICIES.items()}
_VARY_BYTES = VARY.encode()


class GatewayResponse(Response[Any]):
    """The response class of the whole app: canonical JSON, ETag, 304 and cache headers."""

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], **kwargs: Any) -> ASGIResponse:
        status = kwargs.get("status_code") or self.status_code
        content = self.content
        if request.method != "GET" or isinstance(content, (bytes, str)) or content is None or status != 200:
            if request.method != "GET" and not self.headers.get("Cache-Control"):
                self.headers["Cache-Control"] = "no-store"
            if not isinstance(content, (bytes, str)) and content is not None:
                self.content = encode(content)
            return super().to_asgi_response(app, request, **kwargs)

        body = encode(content)
        etag = etag_of_body(body)
        policy = request.route_handler.opt.get("cache", "console")
        headers = {"ETag": etag, "Cache-Control": CACHE_POLICIES[policy], "Vary": VARY}
        self.headers.update(headers)
        if matches(request.headers.get("if-none-match"), etag):
            return ASGIResponse(status_code=304, headers=self.headers, body=b"")
        self.content = body
        return super().to_asgi_response(app, request, **kwargs)

"""Conditional requests and cache headers, built once for every route.

Every JSON response is encoded here with a deterministic key order, so equal content is equal
bytes in every process; the strong ``ETag`` of a GET is a hash of those bytes. ``If-None-Match``
answers 304 with no body. The cache policy of a route is declared in its ``opt["cache"]``.

Every response carries one merged ``Vary`` (:func:`keep_vary`, a ``before_send`` hook of the
app, so it runs after every middleware): a browser must never answer one tenant's, caller's or
origin's request from another's cached response, and a middleware that sets its own ``Vary``
(Litestar's CORS middleware replaces the header with ``Origin``) must not drop ours.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import Message, Scope

from app import metrics
from app.storage.feed import epoch_key

CACHE_POLICIES = {
    "console": "private, max-age=60, stale-if-error=300",
    "poll": "private, no-cache",
    "none": "no-store",
}
VARY = "Authorization, X-Stella-Tenant, X-Stella-Project, Origin"
_VARY_HEADER = b"vary"


def encode(content: Any) -> bytes:
    return msgspec.json.encode(content, order="deterministic")


def etag_of_body(body: bytes) -> str:
    # SHA-256: OpenSSL uses the CPU's SHA instructions where it has them (docs/benchmarks.md);
    # 128 bits of it are plenty for a tag.
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


def conditional(content: Any, policy: str, if_none_match: str | None) -> tuple[bytes | None, dict[str, str]]:
    """A GET's canonical body (None when ``If-None-Match`` holds its ETag: a 304) and the headers
    either answer carries."""
    body = encode(content)
    etag = etag_of_body(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_POLICIES[policy], "Vary": VARY}
    return (None if matches(if_none_match, etag) else body), headers


def merge_vary(*values: str) -> str:
    """The members of every ``Vary`` value, once each (case-insensitively), first spelling kept;
    ``*`` absorbs the rest (RFC 9110 §12.5.5)."""
    members: dict[str, str] = {}
    for value in values:
        for member in value.split(","):
            member = member.strip()
            if member:
                members.setdefault(member.lower(), member)
    return "*" if "*" in members else ", ".join(members.values())


async def keep_vary(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the response start carries :data:`VARY`, every member a layer below
    added, and what its route declares in ``opt["vary"]`` (``Accept`` where content is negotiated)."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers") or ())
    found = [value.decode("latin-1") for name, value in headers if name.lower() == _VARY_HEADER]
    handler = scope.get("route_handler")
    declared = handler.opt.get("vary", ()) if handler is not None else ()
    if found == [VARY] and not declared:
        return  # what the gateway's own responses carry: nothing to merge
    merged = merge_vary(VARY, *found, *declared).encode("latin-1")
    headers = [(name, value) for name, value in headers if name.lower() != _VARY_HEADER]
    headers.append((_VARY_HEADER, merged))
    message["headers"] = headers


# -- revalidation without the database ---------------------------------------------------------

_CAPTURED = "jobgate.revalidation"


@dataclass
class _Issued:
    state: tuple[Any, ...]  # the tenant's versions of the route's kinds, and its write epoch
    issued_at: float
    etags: list[str] = field(default_factory=list)


class Revalidation:
    """304 without a database round trip, for the GET routes that declare ``opt["depends"]``.

    For a request with ``If-None-Match`` it reads, before the handler reads the database, the
    tenant's versions of those kinds as this process's change feed knows them and the tenant's write
    epoch in the shared store. An answer computed after that is remembered with that state, keyed by
    tenant, project, path and query; a later revalidation finding the same state and a remembered
    ETag is answered 304 at once. Any change since advances a version (the feed, within its delivery
    time) or the epoch (every gateway write, before it answers), so the state differs and the request
    reads the database. No state (feed disconnected or behind, shared store unreachable): the database.
    Remembered answers are dropped after ``max_age`` seconds (their continuation tokens stay well
    inside their validity) and beyond ``capacity`` keys, least recently used first."""

    def __init__(self, runtime: Any, *, capacity: int = 10_000, max_age: float = 3600.0, tags: int = 4) -> None:
        self.runtime = runtime
        self.capacity = capacity
        self.max_age = max_age
        self.tags = tags
        self._issued: OrderedDict[tuple[Any, ...], _Issued] = OrderedDict()

    async def state(self, tenant_id: int, kinds: tuple[str, ...]) -> tuple[Any, ...] | None:
        feed = self.runtime.feed
        versions = feed.versions(tenant_id, kinds) if feed is not None else None
        if versions is None:
            return None
        try:
            epoch = await self.runtime.store.read(epoch_key(tenant_id))
        except Exception:  # noqa: BLE001 - the database answers instead
            return None
        return (versions, epoch)

    async def __call__(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        """``before_request`` for GETs: a 304 when the remembered answer is current."""
        scope = request.scope
        kinds = scope["route_handler"].opt.get("depends")
        caller = scope.get("user")
        if not kinds or caller is None:
            return None
        if_none_match = first_header(scope, b"if-none-match")  # the value ``request.headers`` gives
        if not if_none_match:
            return None
        state = await self.state(caller.tenant_id, kinds)
        if state is None:
            return None
        key = (caller.tenant_id, caller.project, scope["path"], scope["query_string"])
        scope["state"][_CAPTURED] = (key, state)
        issued = self._issued.get(key)
        if issued is None or issued.state != state or time.monotonic() - issued.issued_at > self.max_age:
            return None
        for etag in issued.etags:
            if matches(if_none_match, etag):
                metrics.REVALIDATED_IN_MEMORY.inc()
                return not_modified(etag, scope["route_handler"].opt.get("cache", "console"))
        return None

    def remember(self, scope: Scope, etag: str) -> None:
        """The ETag of an answer read after the state captured for its request."""
        captured = scope["state"].get(_CAPTURED)
        if captured is None:
            return
        key, state = captured
        issued = self._issued.get(key)
        if issued is None or issued.state != state:
            issued = self._issued[key] = _Issued(state, time.monotonic())
        if etag not in issued.etags:
            issued.etags = [*issued.etags[-(self.tags - 1):], etag]
        self._issued.move_to_end(key)
        while len(self._issued) > self.capacity:
            self._issued.popitem(last=False)


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), as ``request.headers.get`` gives it,
    without building the request's header map."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


@lru_cache(maxsize=1024)
def not_modified(etag: str, policy: str) -> NotModified:
    """The 304 of an ETag under a cache policy; shared by the requests it answers (nothing of it
    changes once made: every request gets its own ASGI response from it)."""
    return NotModified({"ETag": etag, "Cache-Control": CACHE_POLICIES[policy], "Vary": VARY})


class NotModified(Response[bytes]):
    """A 304 answered from memory: nothing to render; its ASGI response is made once (sending one
    changes nothing of it)."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(content=b"", status_code=304, headers=headers)
        self.asgi = ASGIResponse(status_code=304, headers=self.headers, body=b"")

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], **kwargs: Any) -> ASGIResponse:
        extra = kwargs.get("headers")
        if extra:  # headers a layer declares for the route (none does today)
            return ASGIResponse(status_code=304, headers={**extra, **self.headers}, body=b"")
        return self.asgi


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

        policy = request.route_handler.opt.get("cache", "console")
        body, headers = conditional(content, policy, request.headers.get("if-none-match"))
        self.headers.update(headers)
        revalidation = request.app.state.get("revalidation")
        if revalidation is not None:
            revalidation.remember(request.scope, headers["ETag"])
        if body is None:
            return ASGIResponse(status_code=304, headers=self.headers, body=b"")
        self.content = body
        return super().to_asgi_response(app, request, **kwargs)

"""How a route declares its envelope: scope, audit action, cache policy, documented problems."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.openapi.datastructures import ResponseSpec

from app.http.problems import ProblemDetails

BEARER = "BearerAuth"
DPOP = "DPoP"

_PROBLEMS = {
    400: "Invalid request, header, filter, limit or continuation token",
    401: "Missing or invalid credentials (see WWW-Authenticate)",
    403: "Tenant not granted or unknown, or scope missing",
    404: "No such object in this tenant and project",
    429: "Tenant request budget spent (see Retry-After)",
    412: "If-Match does not match the current ETag",
    413: "The request body exceeds JOBGATE_MAX_BODY_BYTES (default 1048576); the detail names the limit in bytes",
    503: "A backing service is unavailable, or the verification keys could not be fetched for too long (see Retry-After)",
}


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDetails,
        description=description,
        media_type="application/problem+json",
        generate_examples=False,
    )


def problem_responses(*statuses: int, **described: str) -> dict[int, ResponseSpec]:
    specs = {
        status: ResponseSpec(data_container=None, description="Not modified: the If-None-Match ETag is current")
        if status == 304
        else _problem(_PROBLEMS[status])
        for status in statuses
    }
    specs.update({int(status.removeprefix("s")): _problem(text) for status, text in described.items()})
    return specs


def protected(
    scope: str,
    *,
    action: str | None = None,
    target: str | None = None,
    cache: str = "console",
    submission: bool = False,
    problems: tuple[int, ...] = (),
    location: tuple[int, ...] = (),
    depends: tuple[str, ...] = (),
    **described: str,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator behind the envelope.

    ``scope`` is enforced by the envelope and stated in the contract: a bearer or a DPoP-bound token
    granting it (two alternative security requirements). A mutation names its audit ``action``
    (and ``target``, the path parameter that identifies its object); a route without ``action`` is
    a read. ``depends`` names the kinds of change (``app/storage/feed.py``) a read's answer depends on,
    when it depends on nothing else (not on the clock): its unchanged revalidations are answered 304
    without the database (``app/http/caching.py``). ``location`` lists the success statuses whose answer carries ``Location`` (documented
    by ``app/http/openapi.py``). Every protected route's query string passes
    :func:`app.http.params.query_rules` (the app's guards, ``app/security/guards.py``).
    """
    mutating = action is not None
    statuses = (400, 401, 403, 429, 503, *problems)
    if mutating:
        statuses = (*statuses, 413)
        described.setdefault("s409", "Conflict with the current state, or the Idempotency-Key is in flight")
        described.setdefault("s422", "Idempotency-Key reused with a different request")
    opt: dict[str, Any] = {"scope": scope, "cache": cache if not mutating else "none", "location": location}
    if depends:
        opt["depends"] = depends
    if mutating:
        opt.update(action=action, target=target, submission=submission)
    return {
        "opt": opt,
        "security": [{BEARER: [scope]}, {DPOP: [scope]}],
        "responses": problem_responses(*sorted(set(statuses)), **described),
    }


def also_answers(successes: dict[int, str], scope: str, content: type, **declared: Any) -> dict[str, Any]:
    """``protected(...)`` with further success answers (each a ``content``) in the contract."""
    route = protected(scope, **declared)
    route["responses"] = {
        **route["responses"],
        **{status: ResponseSpec(data_container=content, description=text) for status, text in successes.items()},
    }
    return route


PUBLIC = {"opt": {"public": True, "cache": "none"}}


def location(request: Request[Any, Any, Any], path: str) -> str:
    """An absolute URL on ``JOBGATE_PUBLIC_URL``, or on the request's own base when none is set."""
    public = request.app.state.runtime.settings.public_url
    base = public if public else str(request.base_url).rstrip("/")
    return base + path

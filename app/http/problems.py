"""RFC 9457 problem details: the one place where errors become ``application/problem+json``.

Handlers and services raise :class:`~app.core.problems.Problem`; framework errors (validation,
404/405, body too large) and unexpected exceptions are mapped here too, so no response ever
carries a stack trace, SQL, a DSN or a token.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.core.problems import FieldError, Problem
from app.http.tracing import ensure_trace_id
from app.sanitize import sanitize
from app.storage.reads import DRIVER_CONNECTION_ERRORS

log = logging.getLogger("jobgate.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://stella-ops.org/problems/"
PROBLEM_CODE_KEY = "jobgate_problem_code"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ProblemDetails(msgspec.Struct, omit_defaults=True):
    """The body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    traceId: str
    errors: list[FieldError] | None = None


def problem_body(problem: Problem, trace_id: str) -> bytes:
    details = ProblemDetails(
        type=TYPE_BASE + problem.code.replace("_", "-"),
        title=_TITLES.get(problem.status, "Error"),
        status=problem.status,
        detail=problem.detail,
        code=problem.code,
        traceId=trace_id,
        errors=problem.errors,
    )
    return msgspec.json.encode(details)


def problem_response(problem: Problem, trace_id: str) -> Response[bytes]:
    return Response(
        content=problem_body(problem, trace_id),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers={**problem.headers, "Cache-Control": "no-store"},
    )


# msgspec names the field in the message when the error is about the object that holds it.
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(.{1,200}?)`")
_BODY = "body"


def _validation_errors(exc: ValidationException) -> list[FieldError]:
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", "invalid value"))
            key = str(item.get("key") or item.get("source") or _BODY)
            if key == "data" and item.get("source") == _BODY:  # the body as a whole
                key = _BODY
            named = _NAMED_FIELD.match(message)
            if named:
                key = named.group(1) if key == _BODY else f"{key}.{named.group(1)}"
            errors.append(FieldError(field=sanitize(key)[:200], message=sanitize(message)[:300]))
    return errors


_JSON_ERRORS = ("JSON is malformed", "Input data was truncated")


# Driver errors that mean "the database cannot serve now" rather than "this request is wrong".
_UNAVAILABLE_DRIVER_ERRORS = DRIVER_CONNECTION_ERRORS | {"TooManyConnectionsError", "QueryCanceledError"}
# The same by SQLSTATE (class 08 connection exception, 53 insufficient resources, 57P operator
# intervention such as "the database system is starting up", 57014 query canceled): SQLAlchemy's
# asyncpg adapter raises most of them as its generic ``Error`` with the driver's error as cause.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "57014")


def _driver_error(exc: Exception) -> bool:
    """An error of asyncpg itself: raised by reads run with the driver (``app/storage/reads.py``)."""
    return type(exc).__module__.startswith("asyncpg")


def _sqlstate(exc: Exception) -> str:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
    elif _driver_error(exc):
        orig = exc
    else:
        return ""
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return state if isinstance(state, str) else ""


def _database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (OperationalError, PoolTimeoutError, OSError, ConnectionError)):
        return True
    if _driver_error(exc):
        return type(exc).__name__ in _UNAVAILABLE_DRIVER_ERRORS or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES)
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES):
        return True
    drivers = (type(exc.orig).__name__, type(getattr(exc.orig, "__cause__", None)).__name__)
    return any(name in _UNAVAILABLE_DRIVER_ERRORS for name in drivers)


def to_problem(exc: Exception, *, max_body_bytes: int | None = None) -> Problem:
    """Map any exception to the problem the client sees (``max_body_bytes``: the body cap a 413
    names)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, RecursionError):  # a JSON body nested deeper than the decoder goes
        return Problem(400, "validation_failed", "The request body is nested too deeply.",
                       errors=[FieldError(field="body", message="nested too deeply")])
    if isinstance(exc, DataError) or _sqlstate(exc).startswith("22"):
        # SQL "data exception": a value the database cannot take (e.g. a NUL character, an
        # out-of-range number) reached a query; it came from the request.
        return Problem(400, "validation_failed", "A value in the request cannot be stored (e.g. a NUL character).")
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc)
        detail = "The request is invalid: " + "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return Problem(
            400, "validation_failed", detail if errors else "The request is invalid.", errors=errors
        )
    if isinstance(exc, NotFoundException):
        return Problem(404, "not_found", "No such resource.")
    if isinstance(exc, MethodNotAllowedException):
        return Problem(405, "method_not_allowed", "Method not allowed on this resource.", headers=exc.headers)
    if (
        isinstance(exc, ClientException)
        and exc.status_code == 400
        and str(exc.detail).startswith(_JSON_ERRORS)
    ):
        message = sanitize(str(exc.detail))[:300]
        return Problem(
            400,
            "validation_failed",
            f"The request body is not valid JSON: {message}",
            errors=[FieldError(field=_BODY, message=message)],
        )
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status == 413:
            if max_body_bytes is None:
                return Problem(413, "body_too_large", "The request body is too large.")
            return Problem(413, "body_too_large", f"The request body exceeds {max_body_bytes} bytes.")
        if status == 415:
            return Problem(415, "unsupported_media_type", "Send the body as application/json.")
        if status < 500:
            return Problem(status, f"http_{status}", sanitize(str(exc.detail))[:300], headers=exc.headers)
    if _database_unavailable(exc):
        return Problem(
            503,
            "service_unavailable",
            "A backing service is unavailable; retry shortly.",
            headers={"Retry-After": "2"},
        )
    return Problem(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "An unexpected error occurred.")


def problem_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    runtime = getattr(request.app.state, "runtime", None)
    problem = to_problem(exc, max_body_bytes=runtime.settings.max_body_bytes if runtime is not None else None)
    if problem.status >= 500:
        log.error(
            "request failed: %s %s -> %s (%s: %s)",
            request.method,
            request.scope.get("path", ""),
            problem.status,
            type(exc).__name__,
            sanitize(str(exc))[:500],
        )
    request.scope.setdefault("state", {})[PROBLEM_CODE_KEY] = problem.code
    return problem_response(problem, ensure_trace_id(request.scope))

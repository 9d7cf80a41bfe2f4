"""Query parameters shared by several routes."""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.params import Parameter, ParameterKwarg

from app.core.problems import FieldError, Problem

# RFC 3339 date-time; a missing offset is read as UTC.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$")


def instant_query(name: str, description: str) -> Any:
    """A date-time query parameter, parsed strictly by :func:`parse_instant` (the framework would
    also take a bare number as a Unix time)."""
    return Annotated[
        str | None,
        Parameter(query=name, description=description, max_length=40, schema_extra={"format": "date-time"}),
    ]


def parse_instant(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    if not _RFC3339.match(value):
        raise Problem(
            400,
            "validation_failed",
            f"{name} must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z.",
            errors=[FieldError(field=name, message="expected an RFC 3339 date-time")],
        )
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise Problem(
            400,
            "validation_failed",
            f"{name} is not a valid date-time.",
            errors=[FieldError(field=name, message="not a valid date-time")],
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- the query string of every protected route ----------------------------------------------------
#
# The framework reads a query value leniently: ``limit=1e2`` or ``5.0`` becomes an integer, the
# literal ``null`` clears an optional integer, enum or boolean filter, and a repeated name keeps its
# last value. The contract states integers, enums and booleans and one value per name, so
# :func:`query_rules` (a guard of every protected route, see ``app/http/routes.py``) refuses the
# rest with 400 ``validation_failed`` before the handler's parameters are read.

_CANONICAL_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")
_RESERVED = frozenset({"request", "socket", "state", "scope", "headers", "cookies", "query", "body", "data"})
_PATH_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_INTEGER, _NOT_NULL, _TEXT = "integer", "not-null", "text"
# Per route handler (by its function: guards receive a copy of the handler), computed on its first request.
_DECLARED: dict[Any, dict[str, str]] = {}


def _kind(field: Any) -> str:
    """How a query parameter's raw value is checked: a canonical decimal integer, anything but the
    literal ``null`` (an optional enum or boolean), or as the framework reads it (text)."""
    types = [t for t in (typing.get_args(field.annotation) or (field.annotation,)) if t is not type(None)]
    if any(t is int for t in types):
        return _INTEGER
    if field.is_optional and not any(t is str for t in types):
        return _NOT_NULL
    return _TEXT


def _query_parameters(handler: Any) -> dict[str, str]:
    """The handler's query parameters by their name in the query string, with their kind."""
    cached = _DECLARED.get(handler.fn)
    if cached is not None:
        return cached
    skip = set(_RESERVED) | set(handler.resolve_dependencies())
    for path in handler.paths:
        skip.update(_PATH_PARAMETER.findall(path))
    declared = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if name in skip or (isinstance(kwarg, ParameterKwarg) and (kwarg.header or kwarg.cookie)):
            continue
        alias = kwarg.query if isinstance(kwarg, ParameterKwarg) and kwarg.query else name
        declared[alias] = _kind(field)
    _DECLARED[handler.fn] = declared
    return declared


def _refuse(name: str, message: str) -> Problem:
    return Problem(
        400,
        "validation_failed",
        f"The request is invalid: {name}: {message}",
        errors=[FieldError(field=name, message=message)],
    )


async def query_rules(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Each declared query parameter at most once; integers in canonical decimal form; ``null`` is
    not a value of an integer, enum or boolean filter (leave the parameter out instead). Protected
    routes only (public ones and the OpenAPI documents take no filters)."""
    if not handler.opt.get("scope"):
        return
    declared = _query_parameters(handler)
    if not declared:
        return
    query = connection.query_params
    for name, kind in declared.items():
        values = query.getall(name, [])
        if not values:
            continue
        if len(values) > 1:
            raise _refuse(name, "given more than once; it takes one value")
        value = values[0]
        if kind != _TEXT and value == "null":
            raise _refuse(name, "null is not a value; leave the parameter out for no filter")
        if kind == _INTEGER and not _CANONICAL_INTEGER.match(value):
            raise _refuse(name, "expected a decimal integer (digits only, no exponent or fraction)")


def enum_query(values: Any, component: str, *, query: str | None = None, description: str | None = None) -> Any:
    """An optional enum filter (``values``: a ``Literal``). The contract states its values once, as
    the schema component ``component`` (``app/http/openapi.py``), so a generated client has one type
    for it; absent means no filter (``null`` is refused, see :func:`query_rules`)."""
    return Annotated[
        values | None, Parameter(query=query, description=description, schema_extra={"title": component})
    ]

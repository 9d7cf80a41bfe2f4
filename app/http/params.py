"""Query parameters shared by several routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar.params import Parameter

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

"""Keyset paging: the ``limit`` rule and opaque, HMAC-signed continuation tokens.

A token carries the sort key of the last row served. Its MAC also covers the tenant, the
project, the endpoint, the filters and the sort, none of which it reveals, so a token used
anywhere else fails verification. Tokens older than :data:`TOKEN_MAX_AGE` are stale.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar.params import Parameter
from sqlalchemy import ColumnElement, Select, Table, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.http.problems import Problem
from app.storage.models import UTCDateTime

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
TOKEN_MAX_AGE = 24 * 3600
ISSUE_TIME_STEP = 3600
CLOCK_SKEW = 300  # another process may sign with a clock slightly ahead of ours
_VERSION = 1
_B64 = re.compile(r"^[A-Za-z0-9_-]*$")


def invalid_token() -> Problem:
    return Problem(
        400, "invalid_continuation_token", "The continuation token is invalid, foreign or expired."
    )


@dataclass(frozen=True)
class PageScope:
    """Everything a token is bound to."""

    tenant: str
    project: str | None
    endpoint: str
    filters: tuple[tuple[str, Any], ...]
    sort: str

    def binding(self) -> bytes:
        return msgspec.json.encode([self.tenant, self.project, self.endpoint, list(self.filters), self.sort])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: only the canonical unpadded form of some bytes decodes (no ignored characters or bits)."""
    if not _B64.match(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


class CursorCodec:
    """Signs with the first secret, verifies with any (rotation)."""

    def __init__(self, secrets: Sequence[tuple[str, bytes]], clock: Any = time.time) -> None:
        if not secrets:
            raise ValueError("at least one cursor secret is required")
        if len({kid for kid, _ in secrets}) != len(secrets):
            raise ValueError("cursor secret ids must be unique")
        self._secrets = dict(secrets)
        self._signing_kid = secrets[0][0]
        self._clock = clock

    def _mac(self, kid: str, body: bytes, scope: PageScope) -> bytes:
        return hmac.new(self._secrets[kid], body + b"\x00" + scope.binding(), hashlib.sha256).digest()[:16]

    def encode(self, last_key: Sequence[Any], scope: PageScope) -> str:
        # The issue time is rounded down to the hour: a token (and so the page that carries it and
        # that page's ETag) stays byte-identical for the same position within the hour.
        issued = int(self._clock()) // ISSUE_TIME_STEP * ISSUE_TIME_STEP
        body = msgspec.json.encode([_VERSION, issued, list(last_key)])
        kid = self._signing_kid
        return f"{kid}.{_b64(body)}.{_b64(self._mac(kid, body, scope))}"

    def decode(self, token: str, scope: PageScope) -> list[Any]:
        if len(token) > 1024:
            raise invalid_token()
        try:
            kid, body_b64, mac_b64 = token.split(".")
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except (ValueError, TypeError):
            raise invalid_token() from None
        if kid not in self._secrets or not hmac.compare_digest(mac, self._mac(kid, body, scope)):
            raise invalid_token()
        try:
            version, issued, last_key = msgspec.json.decode(body)
        except (msgspec.DecodeError, ValueError, TypeError):
            raise invalid_token() from None
        if version != _VERSION or not isinstance(last_key, list) or type(issued) is not int:
            raise invalid_token()
        age = self._clock() - issued
        if not -CLOCK_SKEW <= age <= TOKEN_MAX_AGE:
            raise invalid_token()
        return last_key


Limit = Annotated[
    int,
    Parameter(
        ge=1,
        le=MAX_LIMIT,
        description=f"Page size, 1 to {MAX_LIMIT}; values outside the range are refused (400), never clamped.",
    ),
]
ContinuationToken = Annotated[
    str | None,
    Parameter(
        query="continuationToken",
        min_length=1,
        max_length=1024,
        description="Opaque token from the previous page's `continuationToken`; bound to the same "
        "tenant, project, filters and endpoint.",
    ),
]


def _key_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _column_value(column: ColumnElement[Any], value: Any) -> Any:
    if isinstance(column.type, UTCDateTime):
        if not isinstance(value, str):
            raise invalid_token()
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise invalid_token() from None
    python_type = column.type.python_type
    if not isinstance(value, python_type) or isinstance(value, bool) != (python_type is bool):
        raise invalid_token()
    return value


@dataclass(frozen=True)
class Keyset:
    """A total order: the sort columns, the last one unique within the scope; one direction."""

    columns: tuple[Any, ...]
    descending: bool = False

    @property
    def name(self) -> str:
        direction = "desc" if self.descending else "asc"
        return ",".join(f"{c.key} {direction}" for c in self.columns)


@functools.cache
def _record_type(table: Table) -> type[tuple[Any, ...]]:
    return namedtuple(f"{table.name}_row", [c.key for c in table.columns])  # type: ignore[misc]


async def fetch_page(
    session: AsyncSession,
    stmt: Select[Any],
    keyset: Keyset,
    *,
    limit: int,
    token: str | None,
    scope: PageScope,
    codec: CursorCodec,
    scalars: bool = True,
) -> tuple[list[Any], str | None]:
    """One page of ``stmt`` in ``keyset`` order and the token of the next page (None at the end).

    ``stmt`` selects one entity (``scalars``) or rows with a column named after each sort column
    (a grouped query keyed by its group columns). An entity's page comes back as named tuples of
    its table's columns, read by attribute like the entity (every model names its attributes after
    its columns): a page is only read, and ORM instances (identity map, instance state) cost about as
    much again as the query itself, while a SQLAlchemy ``Row`` answers each attribute read ten times
    slower than a named tuple."""
    record = None
    if scalars:
        table = stmt.column_descriptions[0]["entity"].__table__
        stmt, record = stmt.with_only_columns(*table.columns), _record_type(table)
    if token is not None:
        last = codec.decode(token, scope)
        if len(last) != len(keyset.columns):
            raise invalid_token()
        values = [_column_value(c, v) for c, v in zip(keyset.columns, last)]
        row_key, last_key = tuple_(*keyset.columns), tuple_(*values)
        stmt = stmt.where(row_key < last_key if keyset.descending else row_key > last_key)
    order = [c.desc() if keyset.descending else c.asc() for c in keyset.columns]
    result = await session.execute(stmt.order_by(*order).limit(limit + 1))
    rows = [record._make(row) for row in result] if record is not None else list(result.all())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last_row = rows[-1]
    return rows, codec.encode([_key_value(getattr(last_row, c.key)) for c in keyset.columns], scope)

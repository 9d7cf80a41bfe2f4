"""Keyset pages: a list's statement built once per shape, run with each request's values, and
split into the page and the continuation token of the next one (``app/core/cursors.py``)."""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, bindparam, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cursors import CursorCodec, PageScope, invalid_token
from app.storage.models import UTCDateTime
from app.storage.reads import read_rows


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
def _record_type(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    return namedtuple("row", names, rename=True)  # type: ignore[misc]


def where_present(
    stmt: Select[Any],
    present: frozenset[str],
    equal: Iterable[tuple[str, Any]] = (),
    *,
    within: Any = None,
    value: Callable[[str], Any] = bindparam,
) -> Select[Any]:
    """For a :class:`PageQuery`'s ``build``: ``column == :name`` for each ``(name, column)`` of
    ``equal`` whose name is present, and ``within >= :from`` / ``within < :to`` when present.
    ``value(name)`` is what each compares with: the bound parameter of that name unless given."""
    for name, column in equal:
        if name in present:
            stmt = stmt.where(column == value(name))
    if within is not None and "from" in present:
        stmt = stmt.where(within >= value("from"))
    if within is not None and "to" in present:
        stmt = stmt.where(within < value("to"))
    return stmt


def _entity_columns(stmt: Select[Any]) -> Select[Any]:
    """An entity's select as a select of its table's columns (read as named tuples, not ORM
    instances: a page is only read, and instances cost about as much again as the query)."""
    table = stmt.column_descriptions[0]["entity"].__table__
    return stmt.with_only_columns(*table.columns)


def _ordered(stmt: Select[Any], keyset: Keyset) -> Select[Any]:
    return stmt.order_by(*(c.desc() if keyset.descending else c.asc() for c in keyset.columns))


def _after(keyset: Keyset, last: Sequence[Any]) -> ColumnElement[bool]:
    row_key, last_key = tuple_(*keyset.columns), tuple_(*last)
    return row_key < last_key if keyset.descending else row_key > last_key


class PageQuery:
    """A list's statement, built once per shape and run with each request's values.

    ``build`` receives the names of the values a request sends (its filters that are not None)
    and returns the list's select with a :func:`~sqlalchemy.bindparam` of the same name for each;
    the keyset condition, order and limit are added here. Building and compiling a select costs
    more than the driver's work for a page, so each shape (the names present, and whether a
    continuation token continues the list) is built once per process and then only bound. An
    entity's select (``scalars``) reads its table's columns, or only ``columns`` where given (a
    list that shows few of them: each column not read is a value not sent, built or decoded)."""

    def __init__(
        self,
        build: Callable[[frozenset[str]], Select[Any]],
        keyset: Keyset,
        *,
        scalars: bool = True,
        columns: Sequence[ColumnElement[Any]] | None = None,
    ) -> None:
        self.build = build
        self.keyset = keyset
        self.scalars = scalars
        self.columns = tuple(columns) if columns else None
        self._shapes: dict[tuple[frozenset[str], bool], tuple[Select[Any], type[tuple[Any, ...]]]] = {}

    def statement(self, present: frozenset[str], continued: bool) -> tuple[Select[Any], type[tuple[Any, ...]]]:
        shape = self._shapes.get((present, continued))
        if shape is None:
            stmt = self.build(present)
            if self.scalars:
                stmt = stmt.with_only_columns(*self.columns) if self.columns else _entity_columns(stmt)
            if continued:
                stmt = stmt.where(
                    _after(self.keyset, [bindparam(f"after_{i}", type_=c.type) for i, c in enumerate(self.keyset.columns)])
                )
            stmt = _ordered(stmt, self.keyset).limit(bindparam("page_rows", type_=Integer()))
            shape = stmt, _record_type(tuple(stmt.selected_columns.keys()))
            self._shapes[(present, continued)] = shape
        return shape


def _last_key(token: str | None, keyset: Keyset, scope: PageScope, codec: CursorCodec) -> list[Any] | None:
    if token is None:
        return None
    last = codec.decode(token, scope)
    if len(last) != len(keyset.columns):
        raise invalid_token()
    return [_column_value(c, v) for c, v in zip(keyset.columns, last)]


def _split(
    rows: list[Any], keyset: Keyset, limit: int, scope: PageScope, codec: CursorCodec
) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last_row = rows[-1]
    return rows, codec.encode([_key_value(getattr(last_row, c.key)) for c in keyset.columns], scope)


async def fetch_page(
    session: AsyncSession,
    query: PageQuery,
    values: Mapping[str, Any],
    *,
    limit: int,
    token: str | None,
    scope: PageScope,
    codec: CursorCodec,
) -> tuple[list[Any], str | None]:
    """One page of ``query`` in its keyset order and the token of the next page (None at the end).

    ``values`` holds every value the query's ``build`` may name; those that are None are left out
    of the statement. Rows come back as named tuples (of the entity's table columns, read by
    attribute like the entity: every model names its attributes after its columns, or of the
    selected columns), read with the driver directly where the session allows it
    (``app/storage/reads.py``)."""
    params = {name: value for name, value in values.items() if value is not None}
    last = _last_key(token, query.keyset, scope, codec)
    stmt, record = query.statement(frozenset(params), last is not None)
    if last is not None:
        params.update((f"after_{i}", value) for i, value in enumerate(last))
    params["page_rows"] = limit + 1
    rows = await read_rows(session, stmt, params, record._make)
    return _split(rows, query.keyset, limit, scope, codec)


async def fetch_built_page(
    session: AsyncSession,
    stmt: Select[Any],
    keyset: Keyset,
    *,
    limit: int,
    token: str | None,
    scope: PageScope,
    codec: CursorCodec,
) -> tuple[list[Any], str | None]:
    """:func:`fetch_page` of an entity's select built for this request alone (its conditions hold
    values of the request that are not bound parameters, such as instants derived from now)."""
    stmt = _entity_columns(stmt)
    last = _last_key(token, keyset, scope, codec)
    if last is not None:
        stmt = stmt.where(_after(keyset, last))
    stmt = _ordered(stmt, keyset).limit(limit + 1)
    record = _record_type(tuple(stmt.selected_columns.keys()))
    rows = await read_rows(session, stmt, make=record._make)
    return _split(rows, keyset, limit, scope, codec)

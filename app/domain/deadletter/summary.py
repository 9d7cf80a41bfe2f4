"""The dead-letter summary: entries grouped by (category, errorCode), read from the maintained
groups (``dead_letter_groups``, migration 0008) rather than by grouping the entries.

A page is the next ``limit + 1`` groups in (category, errorCode) order from the aggregate (summed
over projects and writer stripes; a group whose entries sum to zero does not exist); only for the
groups of that page are the first and last instants read, each a seek of the entries' index
(tenant, category, errorCode, deadLetteredAt). A page costs the same at a thousand entries and at
a million. The answer and the continuation tokens are those of the ``GROUP BY`` over the entries
(``tests/api/test_console_aggregates.py`` holds both to the same bytes).
"""

from __future__ import annotations

import functools
from collections import namedtuple
from typing import Any

from sqlalchemy import BigInteger, Select, String, bindparam, cast, column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.domain.deadletter.schemas import SummaryGroup, SummaryPage
from app.storage.models import DeadLetterEntry as Entry
from app.storage.pages import Keyset, PageQuery, fetch_page

Groups = table(
    "dead_letter_groups",
    column("tenant_id", BigInteger),
    column("category", String),
    column("error_code", String),
    column("project_key", String),
    column("stripe", BigInteger),
    column("entries", BigInteger),
    column("pending", BigInteger),
)
KEYSET = Keyset((Groups.c.category, Groups.c.error_code))  # named as the entries' (category, errorCode)


def _groups(present: frozenset[str]) -> Select[Any]:
    stmt = select(
        Groups.c.category,
        Groups.c.error_code,
        cast(func.sum(Groups.c.entries), BigInteger).label("total"),
        cast(func.sum(Groups.c.pending), BigInteger).label("pending"),
    ).where(Groups.c.tenant_id == bindparam("tenant"))
    if "project" in present:
        stmt = stmt.where(Groups.c.project_key == bindparam("project"))
    return stmt.group_by(Groups.c.category, Groups.c.error_code).having(func.sum(Groups.c.entries) != 0)


class _GroupPages(PageQuery):
    """The page of groups (keyset, order, limit as every list), then the instants of its groups."""

    def __init__(self) -> None:
        super().__init__(_groups, KEYSET, scalars=False)
        self._wrapped: dict[tuple[frozenset[str], bool], tuple[Select[Any], type[tuple[Any, ...]]]] = {}

    def statement(self, present: frozenset[str], continued: bool) -> tuple[Select[Any], type[tuple[Any, ...]]]:
        key = (present, continued)
        shape = self._wrapped.get(key)
        if shape is None:
            page, _ = super().statement(present, continued)
            page = page.subquery("page")

            def instant(aggregate: Any) -> Any:
                stmt = select(aggregate(Entry.dead_lettered_at)).where(
                    Entry.tenant_id == bindparam("tenant"),
                    Entry.category == page.c.category,
                    Entry.error_code == page.c.error_code,
                )
                if "project" in present:
                    stmt = stmt.where(Entry.project_id == bindparam("project"))
                return stmt.scalar_subquery()

            stmt = select(
                page.c.category,
                page.c.error_code,
                page.c.total,
                page.c.pending,
                instant(func.min).label("first"),
                instant(func.max).label("last"),
            ).order_by(page.c.category, page.c.error_code)
            shape = self._wrapped[key] = stmt, _record(tuple(stmt.selected_columns.keys()))
        return shape


@functools.cache
def _record(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    return namedtuple("row", names, rename=True)  # type: ignore[misc]


SUMMARY = _GroupPages()


async def summary(
    session: AsyncSession, caller: Caller, codec: CursorCodec, *, limit: int, token: str | None
) -> SummaryPage:
    """Groups by (category, errorCode), in that order, paged by the group key."""
    scope = PageScope(caller.tenant.key, caller.project, "deadletter-summary", (), KEYSET.name)
    values = {"tenant": caller.tenant_id, "project": caller.project}
    rows, next_token = await fetch_page(session, SUMMARY, values, limit=limit, token=token, scope=scope, codec=codec)
    return SummaryPage(
        items=[
            SummaryGroup(
                category=r.category,
                error_code=r.error_code,
                total=r.total,
                pending=r.pending,
                first_dead_lettered_at=r.first,
                last_dead_lettered_at=r.last,
            )
            for r in rows
        ],
        continuation_token=next_token,
    )

"""Folding the stripes of the maintained dead-letter aggregates (migration 0004).

Writers add to the rows of their own stripe and readers sum the stripes; left alone, the rows of
a cluster spread over every stripe that ever wrote to it, and an entry added through one
connection and removed through another leaves a +1 and a -1 row behind forever. A background step
of the workers folds the other stripes into stripe 0 now and then: each fold moves up to
:data:`FOLD_BATCH` rows, skipping rows a writer holds (``SKIP LOCKED``, so it never waits for a
replay), and deletes what sums to zero. The sums readers see do not change.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

FOLD_BATCH = 5000

# table -> its key columns and its value columns
_TABLES = {
    "dead_letter_counts": ("tenant_id, project_key, category, status", ("entries",)),
    "dead_letter_clusters": ("tenant_id, project_key, error_code, template_hash", ("entries", "pending")),
}


def _fold(table: str, keys: str, values: tuple[str, ...]) -> tuple[str, str]:
    sums = ", ".join(f"sum({v}) AS {v}" for v in values)
    nonzero = " OR ".join(f"{v} <> 0" for v in values)
    add = ", ".join(f"{v} = t.{v} + excluded.{v}" for v in values)
    fold = f"""
        WITH moved AS (
            DELETE FROM {table} WHERE ctid IN (
                SELECT ctid FROM {table} WHERE stripe <> 0 LIMIT :batch FOR UPDATE SKIP LOCKED)
            RETURNING {keys}, {", ".join(values)}
        ), folded AS (
            SELECT {keys}, {sums} FROM moved GROUP BY {keys}
        )
        INSERT INTO {table} AS t ({keys}, stripe, {", ".join(values)})
        SELECT {keys}, 0, {", ".join(values)} FROM folded WHERE {nonzero}
         ORDER BY {keys}
        ON CONFLICT ({keys}, stripe) DO UPDATE SET {add}
    """
    zeros = " AND ".join(f"{v} = 0" for v in values)
    return fold, f"DELETE FROM {table} WHERE stripe = 0 AND {zeros}"


_STATEMENTS = {table: _fold(table, keys, values) for table, (keys, values) in _TABLES.items()}


async def fold_stripes(engine: AsyncEngine) -> int:
    """One fold of both aggregate tables; the number of stripe-0 rows written. PostgreSQL only (the
    embedded SQLite default writes a single stripe)."""
    if engine.dialect.name != "postgresql":
        return 0
    written = 0
    for fold, zeros in _STATEMENTS.values():
        async with engine.begin() as conn:
            written += (await conn.execute(text(fold), {"batch": FOLD_BATCH})).rowcount or 0
            await conn.execute(text(zeros))
    return written

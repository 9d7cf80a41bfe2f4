"""The maintained aggregates: what each one counts, folding their stripes, and checking them.

Four tables are kept exact by triggers in the writer's transaction (migrations 0004 and 0008):

- ``dead_letter_counts``: entries per (tenant, project, category, status), the stats' totals;
- ``dead_letter_clusters``: entries and pending entries per (tenant, project, errorCode, template);
- ``dead_letter_groups``: entries and pending entries per (tenant, project, category, errorCode),
  the dead-letter summary;
- ``job_counts``: jobs per (tenant, project, source, jobType, status), the job summary and the
  quota summary's active and queued counts.

Writers add their net change to the rows of their own stripe (their backend pid modulo 64) and
readers sum the stripes (migration 0004 explains why). :data:`AGGREGATES` states each table as a
grouping of its source rows; that one definition serves the fold, the check and the repair.

**Fold.** Left alone, a key's rows spread over every stripe that ever wrote to it, and an entry
added through one connection and removed through another leaves a +1 and a -1 row behind. A
background step of the workers folds the other stripes into stripe 0 now and then: each fold moves
up to :data:`FOLD_BATCH` rows, skipping rows a writer holds (``SKIP LOCKED``, so it never waits for
a replay), and deletes what sums to zero. The sums readers see do not change.

**Check** (``jobgate db check-aggregates``). Every aggregate summed over its stripes is compared
with a ``GROUP BY`` over its rows, in one repeatable-read snapshot (the triggers write in the
rows' transaction, so one snapshot sees both consistent). ``repair`` rewrites the aggregates of
the drifted tenants from their rows, in one transaction that holds the source tables in ``SHARE``
mode (writers wait for it; readers do not), and writes one audit row per tenant repaired.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.storage.models import AuditRecord

FOLD_BATCH = 5000


@dataclass(frozen=True)
class Aggregate:
    """A maintained table as a grouping of its source rows: each key column with the source
    expression it holds, each value column with the expression it sums."""

    table: str
    source: str
    keys: tuple[tuple[str, str], ...]  # tenant_id first
    values: tuple[tuple[str, str], ...]

    @property
    def key_names(self) -> str:
        return ", ".join(k for k, _ in self.keys)

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.values)

    def stored(self, tenant: bool) -> str:
        """The aggregate summed over its stripes, keys whose values are all zero left out."""
        sums = ", ".join(f"sum({v})" for v in self.value_names)
        nonzero = " OR ".join(f"sum({v}) <> 0" for v in self.value_names)
        where = " WHERE tenant_id = :tenant" if tenant else ""
        return f"SELECT {self.key_names}, {sums} FROM {self.table}{where} GROUP BY {self.key_names} HAVING {nonzero}"

    def grouped(self, tenant: bool) -> str:
        """What the aggregate must hold: its ``GROUP BY`` over the source rows."""
        exprs = ", ".join(e for _, e in self.keys)
        sums = ", ".join(f"sum({e})" for _, e in self.values)
        where = " WHERE tenant_id = :tenant" if tenant else ""
        return f"SELECT {exprs}, {sums} FROM {self.source}{where} GROUP BY {exprs}"


_PROJECT = ("project_key", "coalesce(project_id, '')")
_PENDING = ("pending", "CASE WHEN status = 'pending' THEN 1 ELSE 0 END")

AGGREGATES: tuple[Aggregate, ...] = (
    Aggregate(
        "dead_letter_counts",
        "dead_letter_entries",
        (("tenant_id", "tenant_id"), _PROJECT, ("category", "category"), ("status", "status")),
        (("entries", "1"),),
    ),
    Aggregate(
        "dead_letter_clusters",
        "dead_letter_entries",
        (("tenant_id", "tenant_id"), _PROJECT, ("error_code", "error_code"), ("template_hash", "template_hash")),
        (("entries", "1"), _PENDING),
    ),
    Aggregate(
        "dead_letter_groups",
        "dead_letter_entries",
        (("tenant_id", "tenant_id"), ("category", "category"), ("error_code", "error_code"), _PROJECT),
        (("entries", "1"), _PENDING),
    ),
    Aggregate(
        "job_counts",
        "jobs",
        (("tenant_id", "tenant_id"), ("job_type", "job_type"), ("status", "status"), _PROJECT,
         ("source_id", "source_id")),
        (("jobs", "1"),),
    ),
)


# -- fold -----------------------------------------------------------------------------------------


def _fold(aggregate: Aggregate) -> tuple[str, str]:
    table, keys, values = aggregate.table, aggregate.key_names, aggregate.value_names
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


_FOLDS = tuple(_fold(a) for a in AGGREGATES)


async def fold_stripes(engine: AsyncEngine) -> int:
    """One fold of every aggregate table; the number of stripe-0 rows written. PostgreSQL only
    (the embedded SQLite default writes a single stripe)."""
    if engine.dialect.name != "postgresql":
        return 0
    written = 0
    for fold, zeros in _FOLDS:
        async with engine.begin() as conn:
            written += (await conn.execute(text(fold), {"batch": FOLD_BATCH})).rowcount or 0
            await conn.execute(text(zeros))
    return written


# -- check and repair -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One key whose maintained values differ from its rows' (zeros where a side has no row)."""

    tenant_id: int
    tenant_key: str
    table: str
    key: tuple[Any, ...]  # the key columns after tenant_id
    stored: tuple[int, ...]
    actual: tuple[int, ...]

    def describe(self) -> str:
        names = [k for k, _ in next(a for a in AGGREGATES if a.table == self.table).keys][1:]
        key = ", ".join(f"{n}={v!r}" for n, v in zip(names, self.key))
        return f"tenant {self.tenant_key}: {self.table} ({key}): stored {list(self.stored)}, rows {list(self.actual)}"


async def _tenant_keys(conn: AsyncConnection) -> dict[int, str]:
    return {tenant_id: key for tenant_id, key in await conn.execute(text("SELECT id, key FROM tenants"))}


async def _drifts(conn: AsyncConnection, tenant_id: int | None) -> list[Drift]:
    params = {"tenant": tenant_id} if tenant_id is not None else {}
    keys = await _tenant_keys(conn)
    drifts: list[Drift] = []
    for aggregate in AGGREGATES:
        width = len(aggregate.keys)

        async def read(sql: str, width: int = width) -> dict[tuple[Any, ...], tuple[int, ...]]:
            return {tuple(row[:width]): tuple(int(v) for v in row[width:]) for row in await conn.execute(text(sql), params)}

        stored = await read(aggregate.stored(tenant_id is not None))
        actual = await read(aggregate.grouped(tenant_id is not None))
        zero = (0,) * len(aggregate.values)
        for key in sorted(stored.keys() | actual.keys(), key=repr):
            if stored.get(key, zero) != actual.get(key, zero):
                drifts.append(
                    Drift(key[0], keys.get(key[0], str(key[0])), aggregate.table, key[1:],
                          stored.get(key, zero), actual.get(key, zero))
                )
    return drifts


async def check(engine: AsyncEngine, tenant_id: int | None = None) -> list[Drift]:
    """Every drift of the maintained aggregates (of one tenant, or of all), read-only."""
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    async with engine.connect() as conn:
        conn = await conn.execution_options(**options)
        async with conn.begin():
            return await _drifts(conn, tenant_id)


async def repair(engine: AsyncEngine, tenant_id: int | None = None, *, subject: str = "jobgate db") -> list[Drift]:
    """Rewrite the aggregates of every drifted tenant from its rows, in one transaction, with one
    audit row per tenant; the drifts found (none: nothing written)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            sources = ", ".join(sorted({a.source for a in AGGREGATES}))
            await conn.execute(text(f"LOCK TABLE {sources} IN SHARE MODE"))
        drifts = await _drifts(conn, tenant_id)
        tenants = sorted({d.tenant_id for d in drifts})
        now = datetime.now(UTC)
        for tenant in tenants:
            tables = sorted({d.table for d in drifts if d.tenant_id == tenant})
            for aggregate in (a for a in AGGREGATES if a.table in tables):
                await conn.execute(text(f"DELETE FROM {aggregate.table} WHERE tenant_id = :tenant"), {"tenant": tenant})
                await conn.execute(
                    text(
                        f"INSERT INTO {aggregate.table} ({aggregate.key_names}, stripe, "
                        f"{', '.join(aggregate.value_names)}) "
                        f"SELECT {', '.join(e for _, e in aggregate.keys)}, 0, "
                        f"{', '.join(f'sum({e})' for _, e in aggregate.values)} FROM {aggregate.source} "
                        f"WHERE tenant_id = :tenant GROUP BY {', '.join(e for _, e in aggregate.keys)}"
                    ),
                    {"tenant": tenant},
                )
            count = sum(d.tenant_id == tenant for d in drifts)
            await conn.execute(
                AuditRecord.__table__.insert().values(
                    occurred_at=now,
                    tenant_id=tenant,
                    project_id=None,
                    subject=subject,
                    client_id=None,
                    action="aggregates.repair",
                    method="CLI",
                    route="jobgate db check-aggregates --repair",
                    target=",".join(tables)[:256],
                    reason=f"{count} drifted aggregate key(s) rewritten from the rows",
                    ticket=None,
                    trace_id=uuid.uuid4().hex,
                    idempotency_key=None,
                    result_status=200,
                    result_code=None,
                )
            )
        return drifts

"""The workers registry: every worker process registers at start, is seen at every heartbeat and
is marked gone at a graceful stop (``app/engine/worker.py``); the gateway lists the live ones.

A worker is live while ``expires_at`` — its last heartbeat plus three of its own heartbeat
periods — lies in the future; one that stops heartbeating (killed, hung, cut off) is gone three
periods later, and the reconciler's next pass marks it lapsed (:func:`mark_lapsed`). Rows stay
after a worker is gone (its job types count as "served in the last hour" for submission warnings)
and are deleted a day after the worker was last seen.

Workers are tenant-independent: a worker serves job types, jobs belong to tenants. A tenant sees
the workers that may run its jobs — those started without ``--tenant`` (they claim every
tenant's jobs) and those started with its tenant among their ``--tenant`` options — and never a
worker that claims only other tenants' jobs. What it sees of a visible worker (host, pid, job
types, concurrency and running count over all tenants) is the capacity its own jobs compete for,
never which tenants' jobs it runs.

The change feed announces a worker to every tenant that sees it (triggers of migration 0013) when
it registers, changes what it serves, stops or lapses, and when a heartbeat ends a lapse; an
ordinary heartbeat, which only moves its load and last-seen time, announces nothing.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Integer,
    Select,
    String,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression

from app.storage.models import Worker

MISSED_HEARTBEATS = 3
SERVED_WINDOW = timedelta(hours=1)
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    worker_id: str
    job_types: tuple[str, ...]
    tenant_ids: tuple[int, ...] | None
    concurrency: int
    heartbeat_seconds: float


def _expiry(now: datetime, heartbeat_seconds: float) -> datetime:
    return now + timedelta(seconds=MISSED_HEARTBEATS * heartbeat_seconds)


async def register(session: AsyncSession, me: Identity, now: datetime | None = None) -> None:
    """Insert or renew this worker's row (a restarted worker id starts afresh). Commits."""
    now = now or datetime.now(UTC)
    await session.execute(delete(Worker).where(Worker.last_seen_at < now - FORGET_AFTER))
    await session.execute(delete(Worker).where(Worker.worker_id == me.worker_id))
    session.add(
        Worker(
            worker_id=me.worker_id,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            job_types=sorted(me.job_types),
            tenant_ids=None if me.tenant_ids is None else sorted(me.tenant_ids),
            concurrency=me.concurrency,
            running=0,
            heartbeat_seconds=me.heartbeat_seconds,
            started_at=now,
            last_seen_at=now,
            expires_at=_expiry(now, me.heartbeat_seconds),
            stopped_at=None,
        )
    )
    await session.commit()


async def beat(session: AsyncSession, me: Identity, running: int, now: datetime | None = None) -> None:
    """Seen now, with its running count. A row removed meanwhile (forgotten) is registered again. Commits."""
    now = now or datetime.now(UTC)
    result = await session.execute(
        update(Worker)
        .where(Worker.worker_id == me.worker_id)
        .values(
            running=running,
            last_seen_at=now,
            expires_at=_expiry(now, me.heartbeat_seconds),
            stopped_at=None,
            lapsed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        await register(session, me, now)
        return
    await session.commit()


async def deregister(session: AsyncSession, worker_id: str, now: datetime | None = None) -> None:
    """A graceful stop: gone at once (the row stays for the served-in-the-last-hour question). Commits."""
    now = now or datetime.now(UTC)
    await session.execute(
        update(Worker)
        .where(Worker.worker_id == worker_id)
        .values(running=0, last_seen_at=now, expires_at=now, stopped_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def mark_lapsed(session: AsyncSession, now: datetime) -> int:
    """Mark the workers whose heartbeat is overdue (gone without a graceful stop) as lapsed, once per
    lapse, so that the change feed announces them; returns how many. Does not commit."""
    result = await session.execute(
        update(Worker)
        .where(Worker.expires_at <= now, Worker.stopped_at.is_(None), Worker.lapsed_at.is_(None))
        .values(lapsed_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


class json_array_has(expression.FunctionElement[bool]):
    """``value`` is an element of the JSON array ``array`` (``value`` cast to the elements' SQL type)."""

    type = Boolean()
    inherit_cache = True
    null_has_all = False


class json_array_has_or_null(json_array_has):
    """:class:`json_array_has`, or ``array`` is JSON ``null`` or absent (no list: it has every value)."""

    inherit_cache = True
    null_has_all = True


def _or_null(element: Any, type_of: str, has: str) -> str:
    return f"(coalesce({type_of}, 'null') = 'null' OR {has})" if element.null_has_all else f"({has})"


@compiles(json_array_has, "postgresql")
def _json_array_has_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    array, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return _or_null(element, f"jsonb_typeof({array})", f"{array} @> to_jsonb({value})")


@compiles(json_array_has)
def _json_array_has_generic(element: Any, compiler: Any, **kw: Any) -> str:
    array, value = (compiler.process(clause, **kw) for clause in element.clauses)  # SQLite
    return _or_null(element, f"json_type({array})", f"EXISTS (SELECT 1 FROM json_each({array}) WHERE value = {value})")


def may_run(tenant_id: Any) -> ColumnElement[bool]:
    """The worker may run the tenant's jobs (``tenant_id``: a value or a SQL expression). The change
    feed's triggers (migration 0013, ``feed_worker_tenants``) fan a worker's changes out by the same
    rule; a change to this rule needs a migration that changes theirs."""
    return json_array_has_or_null(Worker.tenant_ids, cast(tenant_id, BigInteger))  # null: every tenant's


def serves(job_type: Any) -> ColumnElement[bool]:
    """The worker serves the job type (``job_type``: a value or a SQL expression)."""
    return json_array_has(Worker.job_types, cast(job_type, String))


FREE_SLOTS = case((Worker.concurrency > Worker.running, Worker.concurrency - Worker.running), else_=0)


async def live(session: AsyncSession, tenant_id: int, now: datetime) -> list[Worker]:
    """The live workers that may run this tenant's jobs, ordered by ``worker_id``."""
    rows = await session.execute(
        select(Worker).where(Worker.expires_at > now, may_run(tenant_id)).order_by(Worker.worker_id)
    )
    return list(rows.scalars())


def of_type(tenant_id: Any, job_type: Any, now: Any, served_since: Any) -> Select[Any]:
    """One row, what the waiting rule and a submission's warning read of the workers for the
    tenant's jobs of ``job_type`` (values or SQL expressions): ``workers``, the live ones that may run them;
    ``free_slots``, their concurrency minus their running jobs, summed; ``served``, whether one was
    seen since ``served_since`` (live or gone)."""
    alive = Worker.expires_at > now
    seen = Worker.last_seen_at >= served_since
    return select(
        func.count(case((alive, 1))).label("workers"),
        func.coalesce(func.sum(case((alive, FREE_SLOTS))), 0).label("free_slots"),
        (func.count(case((seen, 1))) > 0).label("served"),
    ).where(may_run(tenant_id), serves(job_type), or_(alive, seen))


@dataclass(frozen=True)
class Capacity:
    workers: int  # live workers that claim this tenant's jobs of the type
    free_slots: int  # their concurrency minus their running jobs, summed


async def capacity(session: AsyncSession, tenant_id: int, job_types: list[str], now: datetime) -> dict[str, Capacity]:
    """:func:`of_type` of each job type, in one statement."""
    if not job_types:
        return {}
    since = now - SERVED_WINDOW
    statement = union_all(
        *(of_type(tenant_id, t, now, since).add_columns(literal(n, Integer).label("n")) for n, t in enumerate(job_types))
    )
    rows = {row.n: row for row in await session.execute(statement)}
    return {t: Capacity(int(rows[n].workers), int(rows[n].free_slots)) for n, t in enumerate(job_types)}

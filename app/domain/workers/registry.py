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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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


def serves_tenant(worker: Worker, tenant_id: int) -> bool:
    return worker.tenant_ids is None or tenant_id in worker.tenant_ids


async def live(session: AsyncSession, tenant_id: int, now: datetime) -> list[Worker]:
    """The live workers that may run this tenant's jobs, ordered by ``worker_id``."""
    rows = await session.execute(select(Worker).where(Worker.expires_at > now).order_by(Worker.worker_id))
    return [w for w in rows.scalars() if serves_tenant(w, tenant_id)]


@dataclass(frozen=True)
class Capacity:
    workers: int  # live workers that claim this tenant's jobs of the type
    free_slots: int  # their concurrency minus their running jobs, summed


def capacity(workers: Iterable[Worker], job_type: str) -> Capacity:
    serving = [w for w in workers if job_type in w.job_types]
    return Capacity(len(serving), sum(max(0, w.concurrency - w.running) for w in serving))


async def live_and_served(
    session: AsyncSession, tenant_id: int, job_type: str, now: datetime
) -> tuple[list[Any], bool]:
    """:func:`live` and :func:`served_recently` in one query: what a submission's answer needs."""
    rows = await session.execute(  # the columns the two need, without loading entities
        select(
            Worker.worker_id, Worker.job_types, Worker.tenant_ids, Worker.concurrency, Worker.running,
            Worker.expires_at, Worker.last_seen_at,
        )
        .where(or_(Worker.expires_at > now, Worker.last_seen_at >= now - SERVED_WINDOW))
        .order_by(Worker.worker_id)
    )
    mine = [w for w in rows if serves_tenant(w, tenant_id)]  # type: ignore[arg-type]
    live_ones = [w for w in mine if w.expires_at > now]
    return live_ones, any(job_type in w.job_types for w in mine if w.last_seen_at >= now - SERVED_WINDOW)


async def served_recently(session: AsyncSession, tenant_id: int, job_type: str, now: datetime) -> bool:
    """Has a worker that may run this tenant's jobs served ``job_type`` in the last hour?"""
    rows = await session.execute(select(Worker).where(Worker.last_seen_at >= now - SERVED_WINDOW))
    return any(serves_tenant(w, tenant_id) and job_type in w.job_types for w in rows.scalars())

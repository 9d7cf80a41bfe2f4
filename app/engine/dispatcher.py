"""Claiming due jobs, exactly once, within their quotas.

One claim is one transaction:

1. pick claimable jobs (``app/domain/jobs/queue.py``: due, a job type this worker handles, not
   a pack step whose previous step has not succeeded, not of a disabled source), in dispatch order,
   locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers pick disjoint rows;
2. for each (tenant, job type) with a quota, lock the quota row (in a fixed order, so claims of
   one job type are serialised and two workers never both take its last slot), count what is
   active, queued and started in the last hour and minute exactly as the quota summary does, and
   keep the picked jobs whose rank among the type's claimable jobs ``rules.quota_hold`` lets start
   (the first ``rules.startable(...)``; the same rule says why the others wait);
3. lease the kept jobs with one guarded ``UPDATE … WHERE status IN ('pending','scheduled')``
   (the guard is what makes the embedded SQLite worker, which has no row locks, exactly-once).

Types whose quota starts nothing now are left out of the next pick, so they cannot starve others.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.jobs import queue
from app.domain.quotas import rules
from app.domain.quotas.service import QUEUED_JOB_STATUSES, observed_by_job_type
from app.engine.handlers import JobContext
from app.storage.models import Job, Quota

MAX_PICK_ROUNDS = 4
CANDIDATES_PER_JOB = 4  # concurrent workers rank the same head of the queue; each locks what is free
ORDER = queue.ORDER


def _due(now: datetime, job_types: Iterable[str], tenants: tuple[int, ...] | None):  # type: ignore[no-untyped-def]
    stmt = select(Job.tenant_id, Job.job_id, Job.job_type).where(
        *queue.claimable(now), Job.job_type.in_(sorted(job_types))
    )
    if tenants is not None:
        stmt = stmt.where(Job.tenant_id.in_(tenants))
    return stmt


async def _allowed(
    session: AsyncSession, picked: list[tuple[int, str, str]], now: datetime, taken: dict[tuple[int, str], int]
) -> tuple[list[tuple[int, str]], set[tuple[int, str]]]:
    """The picked jobs the quotas let start now, and the (tenant, type) pairs that start no more.

    ``taken`` counts the jobs of each (tenant, type) kept by earlier rounds of this claim: the
    picked jobs of a type follow them in dispatch order, so their ranks continue from there."""
    groups: dict[tuple[int, str], list[str]] = {}
    for tenant_id, job_id, job_type in picked:
        groups.setdefault((tenant_id, job_type), []).append(job_id)
    quotas = (
        await session.execute(
            select(Quota)
            .where(tuple_(Quota.tenant_id, Quota.job_type).in_(list(groups)))
            .order_by(Quota.tenant_id, Quota.job_type)
            .with_for_update()
        )
    ).scalars()
    limits = {(q.tenant_id, q.job_type): rules.Limits(q.max_active, q.max_per_hour, q.burst, q.paused) for q in quotas}
    keep: list[tuple[int, str]] = []
    exhausted: set[tuple[int, str]] = set()
    by_tenant: dict[int, list[str]] = {}
    for tenant_id, job_type in limits:
        by_tenant.setdefault(tenant_id, []).append(job_type)
    observed: dict[tuple[int, str], rules.Observed] = {}
    for tenant_id, types in by_tenant.items():
        if all(limits[(tenant_id, t)].paused for t in types):
            continue
        for job_type, seen in (await observed_by_job_type(session, tenant_id, types, now)).items():
            observed[(tenant_id, job_type)] = seen
    for key, job_ids in groups.items():
        if key not in limits:
            keep.extend((key[0], job_id) for job_id in job_ids)
            continue
        seen = observed.get(key, rules.Observed(0, len(job_ids), 0, 0))
        first = taken.get(key, 0)
        allowed = [
            job_id for rank, job_id in enumerate(job_ids, first) if rules.quota_hold(limits[key], seen, rank) is None
        ]
        taken[key] = first + len(allowed)
        keep.extend((key[0], job_id) for job_id in allowed)
        if len(allowed) < len(job_ids):
            exhausted.add(key)
    return keep, exhausted


async def claim(
    session: AsyncSession,
    *,
    worker_id: str,
    job_types: Iterable[str],
    limit: int,
    lease_seconds: float,
    now: datetime,
    tenants: tuple[int, ...] | None = None,
) -> list[JobContext]:
    """Lease up to ``limit`` due jobs to ``worker_id`` and commit. Each job is leased once."""
    job_types = sorted(job_types)
    if limit <= 0 or not job_types:
        return []
    locking = session.bind.dialect.name == "postgresql"  # type: ignore[union-attr]
    chosen: list[tuple[int, str]] = []
    skip: set[tuple[int, str]] = set()
    taken: dict[tuple[int, str], int] = {}
    for _ in range(MAX_PICK_ROUNDS):
        stmt = _due(now, job_types, tenants)
        if skip:
            stmt = stmt.where(tuple_(Job.tenant_id, Job.job_type).not_in(list(skip)))
        if chosen:
            stmt = stmt.where(tuple_(Job.tenant_id, Job.job_id).not_in(chosen))
        wanted = limit - len(chosen)
        stmt = stmt.order_by(*ORDER).limit(wanted)
        if locking:
            # Rank without locks first (a top-N sort), then lock the best of those candidates
            # that no other worker holds: FOR UPDATE above a full sort would sort every due row.
            candidates = stmt.limit(wanted * CANDIDATES_PER_JOB).subquery()
            stmt = (
                select(Job.tenant_id, Job.job_id, Job.job_type)
                .where(
                    tuple_(Job.tenant_id, Job.job_id).in_(select(candidates.c.tenant_id, candidates.c.job_id)),
                    Job.status.in_(QUEUED_JOB_STATUSES),
                )
                .order_by(*ORDER)
                .limit(wanted)
                .with_for_update(skip_locked=True, of=Job)
            )
        picked = [tuple(row) for row in await session.execute(stmt)]
        if not picked:
            break
        keep, exhausted = await _allowed(session, picked, now, taken)  # type: ignore[arg-type]
        chosen.extend(keep)
        skip |= exhausted
        if len(chosen) >= limit or not exhausted:
            break
    if not chosen:
        await session.commit()
        return []
    rows = await session.execute(
        update(Job)
        .where(tuple_(Job.tenant_id, Job.job_id).in_(chosen), Job.status.in_(QUEUED_JOB_STATUSES))
        .values(
            status="leased",
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            attempt=Job.attempt + 1,
            updated_at=now,
        )
        .returning(
            Job.tenant_id,
            Job.job_id,
            Job.job_type,
            Job.source_id,
            Job.payload,
            Job.attempt,
            Job.max_attempts,
            Job.pack_run_id,
            Job.step_index,
            Job.replay_of_entry_id,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = [JobContext(*row, worker_id, now) for row in rows]
    await session.commit()
    return claimed



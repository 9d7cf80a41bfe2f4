"""Reads behind ``waitingReason`` and ``deadLetterEntryId``: the facts the dispatcher decides on,
gathered for a page of jobs or per job type, handed to the pure rules of
``app/domain/jobs/waiting.py``. Quotas are per tenant, so a quota's observations and the ranks in
dispatch order are always the tenant's, whatever project the caller narrows to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.jobs import queue, waiting
from app.domain.quotas import rules
from app.domain.quotas.service import observed_by_job_type
from app.domain.workers import registry
from app.storage.models import DeadLetterEntry, Job, Quota, Source


async def type_facts(
    session: AsyncSession,
    tenant_id: int,
    job_types: Iterable[str],
    now: datetime,
    workers: list[Any] | None = None,
) -> dict[str, waiting.TypeFacts]:
    """The facts of each job type the waiting rule reads: its quota, the quota's counts and the live
    workers' capacity (``workers``: the live workers, when the caller has read them already)."""
    types = sorted(set(job_types))
    if not types:
        return {}
    quotas = {
        q.job_type: rules.Limits(q.max_active, q.max_per_hour, q.burst, q.paused)
        for q in await session.execute(
            select(Quota.job_type, Quota.max_active, Quota.max_per_hour, Quota.burst, Quota.paused).where(
                Quota.tenant_id == tenant_id, Quota.job_type.in_(types)
            )
        )
    }
    observed = await observed_by_job_type(session, tenant_id, sorted(quotas), now)
    if workers is None:
        workers = await registry.live(session, tenant_id, now)
    facts: dict[str, waiting.TypeFacts] = {}
    for job_type in types:
        capacity = registry.capacity(workers, job_type)
        facts[job_type] = waiting.TypeFacts(
            quotas.get(job_type),
            observed.get(job_type, rules.Observed(0, 0, 0, 0)),
            capacity.workers,
            capacity.free_slots,
        )
    return facts


async def _rank_below(session: AsyncSession, job: Any, now: datetime, bound: int) -> int:
    """The job's rank among its tenant's claimable jobs of its type, counted up to ``bound``."""
    ahead = (
        select(Job.job_id)
        .where(
            Job.tenant_id == job.tenant_id,
            Job.job_type == job.job_type,
            *queue.claimable(now),
            queue.ahead_of(job.priority, job.run_after, job.job_id),
        )
        .limit(bound)
        .subquery()
    )
    return int((await session.execute(select(func.count()).select_from(ahead))).scalar_one())


async def reasons(
    session: AsyncSession, tenant_id: int, jobs: list[Any], now: datetime
) -> dict[str, str | None]:
    """``waitingReason`` of each of the tenant's ``jobs`` (entities or rows), by job id."""
    queued = [j for j in jobs if j.status in waiting.WAITING_STATUSES]
    if not queued:
        return {}
    kinds = await type_facts(session, tenant_id, (j.job_type for j in queued), now)
    enabled = dict(
        (
            await session.execute(
                select(Source.source_id, Source.enabled).where(
                    Source.tenant_id == tenant_id, Source.source_id.in_(sorted({j.source_id for j in queued}))
                )
            )
        ).all()
    )
    packs = sorted({j.pack_run_id for j in queued if j.pack_run_id is not None and (j.step_index or 0) > 0})
    succeeded: set[tuple[str, int]] = set()
    if packs:
        rows = await session.execute(
            select(Job.pack_run_id, Job.step_index).where(
                Job.tenant_id == tenant_id, Job.pack_run_id.in_(packs), Job.status == "succeeded"
            )
        )
        succeeded = {(p, i) for p, i in rows}
    out: dict[str, str | None] = {}
    for job in queued:
        kind = kinds[job.job_type]
        in_pack = job.pack_run_id is not None
        facts = waiting.JobFacts(
            status=job.status,
            run_after=job.run_after,
            in_pack=in_pack,
            previous_step_succeeded=not in_pack
            or job.step_index is None
            or job.step_index == 0
            or (job.pack_run_id, job.step_index - 1) in succeeded,
            source_enabled=bool(enabled.get(job.source_id, True)),
        )
        bound = waiting.startable(kind)
        reaches_the_quota = waiting.waiting_reason(facts, kind, now) in (None, "worker_capacity")
        if bound and reaches_the_quota:  # its rank decides whether the quota holds it
            facts = replace(facts, rank=await _rank_below(session, job, now, bound))
        out[job.job_id] = waiting.waiting_reason(facts, kind, now)
    return out


async def on_submission(session: AsyncSession, tenant_id: int, job: Any, now: datetime) -> tuple[str | None, bool]:
    """The ``waitingReason`` of a job just submitted, and whether a worker that may run the tenant's
    jobs served its type in the last hour (else the answer warns ``no_worker_for_job_type``).

    The rule and facts of :func:`reasons`, read with fewer statements: its source took it (so it is
    enabled), it is no pack step, and one query of the workers gives both the live ones and those
    seen within the hour; the quota's are read only when its type has a quota."""
    workers, served = await registry.live_and_served(session, tenant_id, job.job_type, now)
    if job.status not in waiting.WAITING_STATUSES:
        return None, served
    kind = (await type_facts(session, tenant_id, [job.job_type], now, workers))[job.job_type]
    facts = waiting.JobFacts(
        status=job.status, run_after=job.run_after, in_pack=False, previous_step_succeeded=True, source_enabled=True
    )
    bound = waiting.startable(kind)
    if bound and waiting.waiting_reason(facts, kind, now) in (None, "worker_capacity"):
        facts = replace(facts, rank=await _rank_below(session, job, now, bound))
    return waiting.waiting_reason(facts, kind, now), served


async def dead_letter_entries(session: AsyncSession, tenant_id: int, jobs: list[Any]) -> dict[str, str]:
    """The dead-letter entry of each job that has one, by job id: the entry made when it dead-lettered,
    or — for a replay job that failed again — the entry it returned to."""
    failed = [j for j in jobs if j.status in ("failed", "timed_out")]
    if not failed:
        return {}
    rows = await session.execute(
        select(DeadLetterEntry.job_id, DeadLetterEntry.entry_id).where(
            DeadLetterEntry.tenant_id == tenant_id,
            DeadLetterEntry.job_id.in_(sorted({j.job_id for j in failed})),
        )
    )
    found = dict(rows.all())
    for job in failed:
        if job.job_id not in found and job.replay_of_entry_id is not None:
            found[job.job_id] = job.replay_of_entry_id
    return found


async def waiting_by_type(
    session: AsyncSession, tenant_id: int, where: list[Any], now: datetime, job_types: list[str] | None = None
) -> dict[str, tuple[waiting.WaitingCounts, waiting.TypeFacts]]:
    """Per job type, the waiting jobs among those matching ``where`` (the caller's project and
    filters) counted by what holds them, beside the type's facts."""
    due = Job.run_after <= now

    def count_if(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    stmt = (
        select(
            Job.job_type,
            func.count(),
            count_if(Job.run_after > now),
            count_if(due & ~queue.previous_step_succeeded()),
            count_if(due & queue.previous_step_succeeded() & queue.source_disabled()),
            count_if(and_(*queue.claimable(now))),
        )
        .where(Job.tenant_id == tenant_id, Job.status.in_(queue.QUEUED), *where)
        .group_by(Job.job_type)
    )
    if job_types is not None:
        stmt = stmt.where(Job.job_type.in_(job_types))
    counted = {row[0]: [int(v) for v in row[1:]] for row in await session.execute(stmt)}
    kinds = await type_facts(session, tenant_id, counted, now)
    out: dict[str, tuple[waiting.WaitingCounts, waiting.TypeFacts]] = {}
    for job_type, (total, scheduled, pack, disabled, claimable) in counted.items():
        kind = kinds[job_type]
        bound = waiting.startable(kind)
        first = claimable
        if bound is not None and claimable:
            head = (
                select(Job.job_id)
                .where(Job.tenant_id == tenant_id, Job.job_type == job_type, *queue.claimable(now))
                .order_by(*queue.ORDER)
                .limit(bound)
                .subquery()
            )
            first = int(
                (
                    await session.execute(
                        select(func.count())
                        .select_from(Job)
                        .where(Job.tenant_id == tenant_id, Job.job_id.in_(select(head.c.job_id)), *where)
                    )
                ).scalar_one()
            )
        out[job_type] = (waiting.WaitingCounts(total, scheduled, pack, disabled, claimable, first), kind)
    return out

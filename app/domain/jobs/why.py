"""Reads behind ``waitingReason`` and ``deadLetterEntryId``: the facts the dispatcher decides on,
gathered for a page of jobs or per job type, handed to the pure rules of
``app/domain/jobs/waiting.py``. Quotas are per tenant, so a quota's observations and the ranks in
dispatch order are always the tenant's, whatever project the caller narrows to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    column,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.jobs import queue, waiting
from app.domain.quotas import rules
from app.domain.quotas.service import observed_by_job_type
from app.domain.workers import registry
from app.storage import job_counts
from app.storage.models import DeadLetterEntry, Job, Quota, Source

QUOTA_LIMITS = (Quota.max_active, Quota.max_per_hour, Quota.burst, Quota.paused)


def limits(row: Any) -> rules.Limits | None:
    """The quota of a row of :data:`QUOTA_LIMITS` (None when the row's are null: no quota)."""
    return None if row.paused is None else rules.Limits(row.max_active, row.max_per_hour, row.burst, row.paused)


async def type_facts(
    session: AsyncSession,
    tenant_id: int,
    job_types: Iterable[str],
    now: datetime,
    *,
    later: dict[str, int] | None = None,
) -> dict[str, waiting.TypeFacts]:
    """The facts of each job type the waiting rule reads: its quota, the quota's counts and the live
    workers' capacity (``later``: the tenant's waiting jobs not due yet per type, when the caller
    has read them)."""
    types = sorted(set(job_types))
    if not types:
        return {}
    quotas = {
        q.job_type: limits(q)
        for q in await session.execute(
            select(Quota.job_type, *QUOTA_LIMITS).where(Quota.tenant_id == tenant_id, Quota.job_type.in_(types))
        )
    }
    observed = await observed_by_job_type(session, tenant_id, sorted(quotas), now, later=later)
    capacity = await registry.capacity(session, tenant_id, types, now)
    return {
        job_type: waiting.TypeFacts(
            quotas.get(job_type),
            observed.get(job_type, rules.Observed(0, 0, 0, 0)),
            capacity[job_type].workers,
            capacity[job_type].free_slots,
        )
        for job_type in types
    }


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


def submission_facts(tenant_id: Any, job_type: Any, now: Any, served_since: Any) -> Select[Any]:
    """One row, the facts of a submitted job's type its answer reads (values or SQL expressions):
    the workers' (``registry.of_type``: ``workers``, ``free_slots``, ``served``) and its quota's
    limits (:data:`QUOTA_LIMITS`, null without a quota). Run on its own, or carried by the
    submission's statement (``app/domain/jobs/submission.py``)."""
    workers = registry.of_type(tenant_id, job_type, now, served_since).subquery("worker_facts")
    quota = select(*QUOTA_LIMITS).where(Quota.tenant_id == tenant_id, Quota.job_type == job_type).subquery("quota_limits")
    return select(*workers.c, *quota.c).select_from(workers.outerjoin(quota, true()))


async def on_submission(
    session: AsyncSession, tenant_id: int, job: Any, now: datetime, facts: Any = None
) -> tuple[str | None, bool]:
    """The ``waitingReason`` of a job just submitted, and whether a worker that may run the tenant's
    jobs served its type in the last hour (else the answer warns ``no_worker_for_job_type``).

    The rule and facts of :func:`reasons`, read with fewer statements: its source took it (so it is
    enabled), it is no pack step, and its type's facts are one row of :func:`submission_facts`
    (``facts``, when the submission's statement carried it; else read here). Only a quota's counts
    and the job's rank are read after it, when its type has a quota."""
    if facts is None:
        statement = submission_facts(tenant_id, job.job_type, now, now - registry.SERVED_WINDOW)
        facts = (await session.execute(statement)).one()
    served = bool(facts.served)
    if job.status not in waiting.WAITING_STATUSES:
        return None, served
    quota = limits(facts)
    observed = rules.Observed(0, 0, 0, 0)
    if quota is not None:
        observed = (await observed_by_job_type(session, tenant_id, [job.job_type], now)).get(job.job_type, observed)
    kind = waiting.TypeFacts(quota, observed, int(facts.workers), int(facts.free_slots))
    job_facts = waiting.JobFacts(
        status=job.status, run_after=job.run_after, in_pack=False, previous_step_succeeded=True, source_enabled=True
    )
    bound = waiting.startable(kind)
    if bound and waiting.waiting_reason(job_facts, kind, now) in (None, "worker_capacity"):
        job_facts = replace(job_facts, rank=await _rank_below(session, job, now, bound))
    return waiting.waiting_reason(job_facts, kind, now), served


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
    session: AsyncSession,
    tenant_id: int,
    now: datetime,
    *,
    project: str | None = None,
    source_id: str | None = None,
    job_types: list[str] | None = None,
    head: int | None = None,
) -> dict[str, tuple[waiting.WaitingCounts, waiting.TypeFacts]]:
    """Per job type, the waiting jobs of the tenant (narrowed to a project, a source) counted by what
    holds them, beside the type's facts; the cost does not grow with the number of waiting jobs
    beyond ``head`` per type (default ``waiting.HEAD``).

    - ``waiting``: the maintained counters (``app/storage/job_counts.py``), exact;
    - ``scheduled`` (not due yet): a range of ``ix_jobs_tenant_queued``, exact;
    - the due ones: the first ``head`` due waiting jobs of the tenant's type in dispatch order
      (``ix_jobs_tenant_type_dispatch``), each with what the dispatcher checks (previous pack step,
      source, cancel requested, its rank among the claimable ones); those of the narrowed view are
      counted by what holds them, the view's other due jobs are ``unattributed``."""
    head = waiting.HEAD if head is None else head
    totals: dict[str, int] = {}
    for job_type, _, count in await job_counts.by_type_and_status(
        session, tenant_id, project=project, source_id=source_id, job_types=job_types, statuses=queue.QUEUED
    ):
        totals[job_type] = totals.get(job_type, 0) + count
    if not totals:
        return {}
    later = await job_counts.not_due(
        session, tenant_id, sorted(totals), queue.QUEUED, now, project=project, source_id=source_id
    )
    tenant_wide = project is None and source_id is None
    kinds = await type_facts(session, tenant_id, totals, now, later=later if tenant_wide else None)
    due = sorted(t for t in totals if totals[t] > later.get(t, 0))
    narrowed: list[Any] = []
    if project is not None:
        narrowed.append(Job.project_id == project)
    if source_id is not None:
        narrowed.append(Job.source_id == source_id)
    bounds = {t: waiting.startable(kinds[t]) for t in due}
    heads = await _heads(
        session, tenant_id, now, head, narrowed, {t: head if b is None else b for t, b in bounds.items()}
    )
    out: dict[str, tuple[waiting.WaitingCounts, waiting.TypeFacts]] = {}
    for job_type, total in totals.items():
        scheduled = later.get(job_type, 0)
        seen, pack, disabled, claimable, first = heads.get(job_type, (0, 0, 0, 0, 0))
        unattributed = max(0, total - scheduled - seen)
        counts = waiting.WaitingCounts(total, scheduled, pack, disabled, claimable, first, unattributed)
        out[job_type] = (counts, kinds[job_type])
    return out


async def _heads(
    session: AsyncSession, tenant_id: int, now: datetime, head: int, narrowed: list[Any], bounds: dict[str, int]
) -> dict[str, tuple[int, ...]]:
    """:func:`_head` of each job type (by job type: ``bounds``' keys, each with its quota's bound).

    PostgreSQL reads every type in one statement (a ``LATERAL`` head per type), with JIT off for
    the transaction: the planner prices the heads above ``jit_above_cost``, and compiling them would
    add about half their time to every request. SQLite reads them one statement per type, the same
    statement each time."""
    if not bounds:
        return {}
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        types = (
            func.unnest(
                bindparam("job_types", sorted(bounds), type_=ARRAY(String)),
                bindparam("bounds", [bounds[t] for t in sorted(bounds)], type_=ARRAY(Integer)),
            )
            .table_valued(column("job_type", String), column("bound", Integer))
            .render_derived(name="heads")
        )
        counted = _head(tenant_id, now, head, narrowed, types.c.job_type, types.c.bound, types).lateral("counted")
        statement = select(types.c.job_type, *counted.c).select_from(types.join(counted, true()))
        await session.execute(text("SET LOCAL jit = off"))
        return {row[0]: tuple(int(v or 0) for v in row[1:]) for row in await session.execute(statement)}
    job_type, bound = bindparam("job_type", type_=String), bindparam("bound", type_=Integer)
    statement = _head(tenant_id, now, head, narrowed, job_type, bound)
    out: dict[str, tuple[int, ...]] = {}
    for kind, at_most in bounds.items():
        row = (await session.execute(statement, {"job_type": kind, "bound": at_most})).one()
        out[kind] = tuple(int(v or 0) for v in row)
    return out


def _head(
    tenant_id: int, now: datetime, head: int, narrowed: list[Any], job_type: Any, bound: Any, *outer: Any
) -> Any:
    """One row for ``job_type``: of the first ``head`` due waiting jobs of the tenant's type in
    dispatch order, those in the narrowed view (``seen``), and among them the pack steps whose
    previous step has not succeeded, the jobs of a disabled source, the claimable ones, and the
    claimable ones ranked below ``bound`` among the tenant's claimable jobs of the type. The
    statuses are written in the statement, so that a plan kept for it still proves the predicate of
    the partial index ``ix_jobs_tenant_type_dispatch``."""

    def flag(condition: Any) -> Any:
        return case((condition, 1), else_=0)

    queued = Job.status.in_(bindparam("queued", queue.QUEUED, expanding=True, literal_execute=True))
    first = (
        select(
            Job.priority,
            Job.run_after,
            Job.job_id,
            (flag(and_(*narrowed)) if narrowed else literal(1)).label("seen"),
            flag(queue.previous_step_succeeded()).label("previous_ok"),
            flag(queue.source_disabled()).label("disabled"),
            flag(Job.cancel_requested.is_(False)).label("live"),
        )
        .where(Job.tenant_id == tenant_id, Job.job_type == job_type, queued, Job.run_after <= now)
        .order_by(*queue.ORDER)
        .limit(head)
        .correlate(*outer)
        .subquery()
    )
    claimable = first.c.previous_ok * (1 - first.c.disabled) * first.c.live
    columns = [
        first.c.seen,
        (1 - first.c.previous_ok).label("pack"),
        (first.c.previous_ok * first.c.disabled).label("disabled"),
        claimable.label("claimable"),
    ]
    if narrowed:  # the view's claimable jobs ranked among all the head's
        order = (first.c.priority.desc(), first.c.run_after, first.c.job_id)
        columns.append((func.sum(claimable).over(order_by=order) - claimable).label("rank"))
    ranked = select(*columns).subquery()
    seen, claimed = ranked.c.seen, ranked.c.claimable
    return select(
        func.sum(seen).label("seen"),
        func.sum(seen * ranked.c.pack).label("pack"),
        func.sum(seen * ranked.c.disabled).label("disabled"),
        func.sum(seen * claimed).label("claimable"),
        # unnarrowed, the head's claimable jobs are the tenant's first: ranks 0, 1, 2, ... in order
        (
            func.sum(seen * claimed * flag(ranked.c.rank < bound))
            if narrowed
            else case((func.coalesce(func.sum(claimed), 0) < bound, func.sum(claimed)), else_=bound)
        ).label("first"),
    ).select_from(ranked)

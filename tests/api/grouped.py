"""The console reads as they were before the maintained aggregates (migration 0008): a ``GROUP BY``
over the rows; and the summaries' waiting counts as they were before the head of each queue
bounded them (migration 0010): every waiting job grouped. The equivalence tests answer each route
once with these and once as it is now, on the same data, and compare the bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.domain.deadletter.schemas import SummaryGroup, SummaryPage
from app.domain.deadletter.service import _visible_bound
from app.domain.jobs import queue, waiting, why
from app.domain.jobs.schemas import NOT_WAITING, JobSummary, JobTypeCounts, StatusCounts, Waiting
from app.domain.jobs.service import visible, waiting_view
from app.domain.quotas import rules
from app.domain.quotas.service import ACTIVE_JOB_STATUSES, QUEUED_JOB_STATUSES
from app.storage.models import DeadLetterEntry as Entry
from app.storage.models import Job
from app.storage.pages import Keyset, PageQuery, fetch_page


def _pending_count():  # type: ignore[no-untyped-def]
    return func.coalesce(func.sum(case((Entry.status == "pending", 1), else_=0)), 0)


SUMMARY = PageQuery(
    lambda present: _visible_bound(
        present,
        Entry.category,
        Entry.error_code,
        func.count().label("total"),
        _pending_count().label("pending"),
        func.min(Entry.dead_lettered_at).label("first"),
        func.max(Entry.dead_lettered_at).label("last"),
    ).group_by(Entry.category, Entry.error_code),
    Keyset((Entry.category, Entry.error_code)),
    scalars=False,
)


async def deadletter_summary(
    session: AsyncSession, caller: Caller, codec: CursorCodec, *, limit: int, token: str | None
) -> SummaryPage:
    scope = PageScope(caller.tenant.key, caller.project, "deadletter-summary", (), SUMMARY.keyset.name)
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


async def job_summary(session: AsyncSession, caller: Caller, *, job_type: str | None, source_id: str | None) -> JobSummary:
    stmt = visible(caller, Job.job_type, Job.status, func.count()).group_by(Job.job_type, Job.status)
    if job_type is not None:
        stmt = stmt.where(Job.job_type == job_type)
    if source_id is not None:
        stmt = stmt.where(Job.source_id == source_id)
    overall: dict[str, int] = {}
    per_type: dict[str, dict[str, int]] = {}
    for kind, status, count in await session.execute(stmt):
        overall[status] = overall.get(status, 0) + count
        per_type.setdefault(kind, {})[status] = count
    held = await waiting_per_type(session, caller, job_type=job_type, source_id=source_id)

    def counts(by_status: dict[str, int]) -> StatusCounts:
        return StatusCounts(**by_status, total=sum(by_status.values()))

    return JobSummary(
        overall=counts(overall),
        by_job_type=[
            JobTypeCounts(job_type=k, counts=counts(v), waiting=held.get(k, NOT_WAITING))
            for k, v in sorted(per_type.items())
        ],
    )


async def waiting_per_type(
    session: AsyncSession,
    caller: Caller,
    *,
    job_type: str | None = None,
    source_id: str | None = None,
    narrow_to_project: bool = True,
    now: datetime | None = None,
) -> dict[str, Waiting]:
    """The waiting counts as they were read before the head of each queue bounded them: every
    waiting job the caller sees grouped by type, with the dispatcher's correlated predicates, and
    the rank bound of each type's quota over the tenant's claimable jobs. Exact, and as long as the
    waiting jobs; while no type has more than ``why.HEAD`` due waiting jobs, the routes answer the
    same bytes."""
    now = now or datetime.now(UTC)
    where: list[Any] = []
    if caller.project is not None and narrow_to_project:
        where.append(Job.project_id == caller.project)
    if source_id is not None:
        where.append(Job.source_id == source_id)
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
        .where(Job.tenant_id == caller.tenant_id, Job.status.in_(queue.QUEUED), *where)
        .group_by(Job.job_type)
    )
    if job_type is not None:
        stmt = stmt.where(Job.job_type == job_type)
    counted = {row[0]: [int(v) for v in row[1:]] for row in await session.execute(stmt)}
    kinds = await why.type_facts(session, caller.tenant_id, counted, now)
    out: dict[str, Waiting] = {}
    for kind_of, (total, scheduled, pack, disabled, claimable) in counted.items():
        kind = kinds[kind_of]
        bound = waiting.startable(kind)
        first = claimable
        if bound is not None and claimable:
            head = (
                select(Job.job_id)
                .where(Job.tenant_id == caller.tenant_id, Job.job_type == kind_of, *queue.claimable(now))
                .order_by(*queue.ORDER)
                .limit(bound)
                .subquery()
            )
            first = int(
                (
                    await session.execute(
                        select(func.count())
                        .select_from(Job)
                        .where(Job.tenant_id == caller.tenant_id, Job.job_id.in_(select(head.c.job_id)), *where)
                    )
                ).scalar_one()
            )
        counts = waiting.WaitingCounts(total, scheduled, pack, disabled, claimable, first)
        out[kind_of] = waiting_view(counts, kind, now)
    return out


async def observed_by_job_type(
    session: AsyncSession, tenant_id: int, job_types: list[str], now: datetime
) -> dict[str, rules.Observed]:
    if not job_types:
        return {}
    hour_ago, minute_ago = now - timedelta(hours=1), now - timedelta(minutes=1)
    count_if = lambda condition: func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
    stmt = (
        select(
            Job.job_type,
            count_if(Job.status.in_(ACTIVE_JOB_STATUSES)),
            count_if(Job.status.in_(QUEUED_JOB_STATUSES) & (Job.run_after <= now)),
            count_if(Job.started_at >= hour_ago),
            count_if(Job.started_at >= minute_ago),
        )
        .where(Job.tenant_id == tenant_id, Job.job_type.in_(job_types))
        .where(Job.status.in_(ACTIVE_JOB_STATUSES + QUEUED_JOB_STATUSES) | (Job.started_at >= hour_ago))
        .group_by(Job.job_type)
    )
    return {
        job_type: rules.Observed(int(active), int(queued), int(hour), int(minute))
        for job_type, active, queued, hour, minute in await session.execute(stmt)
    }


__all__: list[Any] = ["deadletter_summary", "job_summary", "observed_by_job_type", "waiting_per_type"]

"""Job counts read from the maintained counters (``job_counts``, migration 0008) instead of
counting the jobs.

The counters hold the jobs per (tenant, project, source, jobType, status), in writer stripes;
triggers on ``jobs`` keep them exact in the transaction of every insert, status change and delete,
whatever statement makes it (submission, claim, outcome, retry, cancel, lease expiry, reconcile,
replay). Reading one tenant's counts sums a few rows per (jobType, status), however many jobs
there are. ``jobgate db check-aggregates`` compares them with a count of the jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import BigInteger, String, case, cast, column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.models import Job

Counts = table(
    "job_counts",
    column("tenant_id", BigInteger),
    column("job_type", String),
    column("status", String),
    column("project_key", String),
    column("source_id", String),
    column("stripe", BigInteger),
    column("jobs", BigInteger),
)


async def by_type_and_status(
    session: AsyncSession,
    tenant_id: int,
    *,
    project: str | None = None,
    job_type: str | None = None,
    source_id: str | None = None,
    job_types: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
) -> list[tuple[str, str, int]]:
    """(jobType, status, jobs) of one tenant's jobs, narrowed to a project, a jobType, a source,
    some jobTypes, some statuses; only the pairs that have jobs, in (jobType, status) order."""
    total = cast(func.sum(Counts.c.jobs), BigInteger)
    stmt = select(Counts.c.job_type, Counts.c.status, total).where(Counts.c.tenant_id == tenant_id)
    if project is not None:
        stmt = stmt.where(Counts.c.project_key == project)
    if job_type is not None:
        stmt = stmt.where(Counts.c.job_type == job_type)
    if source_id is not None:
        stmt = stmt.where(Counts.c.source_id == source_id)
    if job_types is not None:
        stmt = stmt.where(Counts.c.job_type.in_(list(job_types)))
    if statuses is not None:
        stmt = stmt.where(Counts.c.status.in_(list(statuses)))
    stmt = (
        stmt.group_by(Counts.c.job_type, Counts.c.status)
        .having(func.sum(Counts.c.jobs) != 0)
        .order_by(Counts.c.job_type, Counts.c.status)
    )
    return [(kind, status, int(count)) for kind, status, count in await session.execute(stmt)]


async def not_due(
    session: AsyncSession,
    tenant_id: int,
    job_types: list[str],
    statuses: tuple[str, ...],
    now: datetime,
    *,
    project: str | None = None,
    source_id: str | None = None,
) -> dict[str, int]:
    """Queued jobs (in ``statuses``) per jobType whose ``run_after`` is still ahead, narrowed to a
    project, a source: a range of ``ix_jobs_tenant_queued`` (index-only unless narrowed), as long as
    the tenant's jobs scheduled for later."""
    stmt = (
        select(Job.job_type, func.count())
        .where(Job.tenant_id == tenant_id, Job.job_type.in_(job_types), Job.status.in_(statuses), Job.run_after > now)
        .group_by(Job.job_type)
    )
    if project is not None:
        stmt = stmt.where(Job.project_id == project)
    if source_id is not None:
        stmt = stmt.where(Job.source_id == source_id)
    return {kind: int(count) for kind, count in await session.execute(stmt)}


async def started_since(
    session: AsyncSession, tenant_id: int, job_types: list[str], hour_ago: datetime, minute_ago: datetime
) -> dict[str, tuple[int, int]]:
    """Jobs per jobType started since ``hour_ago`` and since ``minute_ago``: a range of
    ``ix_jobs_tenant_started``, as long as an hour's starts."""
    in_minute = func.coalesce(func.sum(case((Job.started_at >= minute_ago, 1), else_=0)), 0)
    stmt = (
        select(Job.job_type, func.count(), in_minute)
        .where(Job.tenant_id == tenant_id, Job.job_type.in_(job_types), Job.started_at >= hour_ago)
        .group_by(Job.job_type)
    )
    return {kind: (int(hour), int(minute)) for kind, hour, minute in await session.execute(stmt)}

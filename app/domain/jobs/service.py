"""Jobs: queries within the caller's tenant and project."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import not_found
from app.core.views import by_name
from app.domain.jobs.schemas import JobPage, JobSummary, JobTypeCounts, JobView, StatusCounts
from app.storage import job_counts
from app.storage.models import Job
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((Job.created_at, Job.job_id), descending=True)


view = by_name(JobView)  # every field is the job's attribute of its name


def visible(caller: Caller, *columns: Any):  # type: ignore[no-untyped-def]
    stmt = select(*columns) if columns else select(Job)
    stmt = stmt.where(Job.tenant_id == caller.tenant_id)
    if caller.project is not None:
        stmt = stmt.where(Job.project_id == caller.project)
    return stmt


FILTERS = {"status": Job.status, "jobType": Job.job_type, "sourceId": Job.source_id, "packRunId": Job.pack_run_id}


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    stmt = select(Job).where(Job.tenant_id == bindparam("tenant"))
    return where_present(stmt, present, (("project", Job.project_id), *FILTERS.items()))


LIST = PageQuery(_list, ORDER)


async def list_jobs(
    session: AsyncSession,
    caller: Caller,
    codec: CursorCodec,
    *,
    filters: dict[str, Any],
    limit: int,
    token: str | None,
) -> JobPage:
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filters: {unknown}")
    values = {**filters, "tenant": caller.tenant_id, "project": caller.project}
    scope = PageScope(caller.tenant.key, caller.project, "jobs", tuple(sorted(filters.items())), ORDER.name)
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return JobPage(items=[view(r) for r in rows], continuation_token=next_token)


async def load(session: AsyncSession, caller: Caller, job_id: str) -> Job:
    job = (await session.execute(visible(caller).where(Job.job_id == job_id))).scalar_one_or_none()
    if job is None:
        raise not_found("Job")
    return job


async def summary(session: AsyncSession, caller: Caller, *, job_type: str | None, source_id: str | None) -> JobSummary:
    overall: dict[str, int] = {}
    per_type: dict[str, dict[str, int]] = {}
    for kind, status, count in await job_counts.by_type_and_status(
        session, caller.tenant_id, project=caller.project, job_type=job_type, source_id=source_id
    ):
        overall[status] = overall.get(status, 0) + count
        per_type.setdefault(kind, {})[status] = count

    def counts(by_status: dict[str, int]) -> StatusCounts:
        return StatusCounts(**by_status, total=sum(by_status.values()))

    return JobSummary(
        overall=counts(overall),
        by_job_type=[JobTypeCounts(job_type=k, counts=counts(v)) for k, v in sorted(per_type.items())],
    )


LIVE_STATUSES = ("pending", "scheduled", "leased", "running")


async def live_counts(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, int]]:
    """(job type, status, count) of every live job, all tenants: one grouped query over the two
    partial indexes of live jobs (the job gauges of ``/metrics``)."""
    statement = (
        select(Job.job_type, Job.status, func.count())
        .where(Job.status.in_(LIVE_STATUSES))
        .group_by(Job.job_type, Job.status)
    )
    async with sessions() as session:
        return [tuple(row) for row in await session.execute(statement)]  # type: ignore[misc]

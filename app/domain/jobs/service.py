"""Jobs: queries within the caller's tenant and project."""

from __future__ import annotations

from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import not_found
from app.domain.jobs import waiting, why
from app.domain.jobs.schemas import (
    JOB_COLUMNS,
    NOT_WAITING,
    JobPage,
    JobSummary,
    JobTypeCounts,
    JobView,
    StatusCounts,
    Waiting,
    WaitingReasons,
)
from app.storage import job_counts
from app.storage.models import Job
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((Job.created_at, Job.job_id), descending=True)


_columns = attrgetter(*JOB_COLUMNS)  # every other field is the job's attribute of its name


def view(job: Any, waiting_reason: str | None = None, dead_letter_entry_id: str | None = None) -> JobView:
    return JobView(*_columns(job), waiting_reason=waiting_reason, dead_letter_entry_id=dead_letter_entry_id)  # type: ignore[arg-type]


async def views(session: AsyncSession, tenant_id: int, jobs: list[Any], now: datetime | None = None) -> list[JobView]:
    """The views of the tenant's ``jobs`` with why each waits and its dead-letter entry."""
    now = now or datetime.now(UTC)
    reasons = await why.reasons(session, tenant_id, jobs, now)
    entries = await why.dead_letter_entries(session, tenant_id, jobs)
    return [view(j, reasons.get(j.job_id), entries.get(j.job_id)) for j in jobs]


async def answer(session: AsyncSession, caller: Caller, job: Any, facts: Any = None) -> tuple[JobView, list[str]]:
    """A submitted job's view (why it waits) and its warnings: ``no_worker_for_job_type`` when no
    worker that may run the tenant's jobs has served its type in the last hour (it is queued all the
    same). ``facts``: those of its type the submission's statement read at the job's creation
    (``why.on_submission``); else they are read now."""
    now = datetime.now(UTC) if facts is None else job.created_at
    reason, served = await why.on_submission(session, caller.tenant_id, job, now, facts)
    return view(job, reason), [] if served else ["no_worker_for_job_type"]


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
    return JobPage(items=await views(session, caller.tenant_id, rows), continuation_token=next_token)


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


def waiting_view(counts: waiting.WaitingCounts, kind: waiting.TypeFacts, now: datetime) -> Waiting:
    reasons = waiting.tally(counts, kind, now)
    return Waiting(
        jobs=counts.waiting,
        reason=waiting.dominant(reasons),  # type: ignore[arg-type]
        by_reason=WaitingReasons(**{r: reasons.get(r, 0) for r in waiting.REASONS}),
        unattributed=counts.unattributed,
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
    """Per job type, the waiting jobs the caller sees (its project, the filters) by what holds them,
    the reasons read over the head of each type's queue (``why.waiting_by_type``).

    Kept apart from the status counts above so that how those are read may change on its own."""
    now = now or datetime.now(UTC)
    per_type = await why.waiting_by_type(
        session,
        caller.tenant_id,
        now,
        project=caller.project if narrow_to_project else None,
        source_id=source_id,
        job_types=None if job_type is None else [job_type],
    )
    return {k: waiting_view(counts, kind, now) for k, (counts, kind) in per_type.items()}


LIVE_STATUSES = ("pending", "scheduled", "leased", "running", "cancel_requested")


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

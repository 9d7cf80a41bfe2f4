"""Routes of jobs (reads; submission is in the submission routes)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.jobs import service
from app.domain.jobs.schemas import JobPage, JobStatus, JobSummary, JobView
from app.http.paging import ContinuationToken, Limit
from app.http.routes import protected
from app.security.caller import Caller

JobId = Annotated[str, Parameter(max_length=64, description="The job's id")]
JobTypeFilter = Annotated[str | None, Parameter(query="jobType", max_length=128)]
SourceFilter = Annotated[str | None, Parameter(query="sourceId", max_length=64)]


@get(
    "/jobengine/jobs/summary",
    **protected("orch:read", problems=(304,)),
    summary="Job counts by status",
    description="Counts by status overall and per job type (ordered by `jobType asc`).",
    tags=["jobs"],
)
async def job_summary(
    session: AsyncSession, caller: Caller, job_type: JobTypeFilter = None, source_id: SourceFilter = None
) -> JobSummary:
    return await service.summary(session, caller, job_type=job_type, source_id=source_id)


@get(
    "/jobengine/jobs",
    **protected("orch:read", problems=(304,)),
    summary="List jobs",
    description="Ordered by `createdAt desc, jobId desc`.",
    tags=["jobs"],
)
async def list_jobs(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    status: JobStatus | None = None,
    job_type: JobTypeFilter = None,
    source_id: SourceFilter = None,
    pack_run_id: Annotated[str | None, Parameter(query="packRunId", max_length=64)] = None,
) -> JobPage:
    return await service.list_jobs(
        session,
        caller,
        request.app.state.runtime.cursors,
        filters={"status": status, "jobType": job_type, "sourceId": source_id, "packRunId": pack_run_id},
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/jobs/{jobId:str}",
    **protected("orch:read", problems=(304, 404)),
    summary="One job",
    tags=["jobs"],
)
async def get_job(session: AsyncSession, caller: Caller, jobId: JobId) -> JobView:
    return service.view(await service.load(session, caller, jobId))


ROUTES = [job_summary, list_jobs, get_job]

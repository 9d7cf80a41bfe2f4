"""Routes of jobs: reads and submission."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.jobs import service
from app.domain.jobs import submission as submissions
from app.domain.jobs.schemas import JobPage, JobStatus, JobSummary, JobView
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.params import enum_query
from app.http.routes import location, protected

JobId = Annotated[str, Parameter(max_length=64, description="The job's id")]
JobTypeFilter = Annotated[str | None, Parameter(query="jobType", max_length=128)]
SourceFilter = Annotated[str | None, Parameter(query="sourceId", max_length=64)]
JobStatusFilter = enum_query(JobStatus, "JobStatus", description="Only jobs in this status")
# What a job's view shows beyond its row: nothing yet; the quotas, sources and workers are named so
# that a view which derives a job's waiting reason from them stays correct (docs/design.md).
JOB_VIEW = ("job", "quota", "source", "worker")


@get(
    "/jobengine/jobs/summary",
    **protected("orch:read", problems=(304,), depends=("job",)),
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
    **protected("orch:read", problems=(304,), depends=JOB_VIEW),
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
    status: JobStatusFilter = None,
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
    **protected("orch:read", problems=(304, 404), depends=JOB_VIEW),
    summary="One job",
    description="A job of the tenant (and project) with its attempts and status; another tenant's or "
    "project's job is 404. Revalidate with `If-None-Match`.",
    tags=["jobs"],
)
async def get_job(session: AsyncSession, caller: Caller, jobId: JobId) -> JobView:
    return service.view(await service.load(session, caller, jobId))


@post(
    "/jobengine/jobs",
    **protected(
        "orch:submit",
        action="job.submit",
        submission=True,
        location=(201,),
        problems=(404,),
        s409="The source is disabled (`source_disabled`), or the Idempotency-Key is in flight",
    ),
    status_code=201,
    summary="Submit a job",
    description="Queues one job of a visible, enabled source (unknown or other tenants' sources are 404). "
    "`runAfter` in the future makes it `scheduled`. Answers 201 with `Location` and `ETag`; with an "
    "`Idempotency-Key` a resubmission answers the first job.",
    tags=["jobs"],
)
async def submit_job(
    request: Request[Any, Any, Any], data: submissions.JobSubmit, submission: Mutation
) -> Response[JobView]:
    job = await submissions.submit_job(submission.session, submission.caller, data)
    return await submission.commit(
        target=job.job_id,
        status=201,
        content=service.view(job),
        headers={"Location": location(request, f"/jobengine/jobs/{job.job_id}")},
    )


ROUTES = [job_summary, list_jobs, get_job, submit_job]

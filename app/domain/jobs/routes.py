"""Routes of jobs: reads and submission."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.jobs import batch as batches
from app.domain.jobs import cancel, service, waiting
from app.domain.jobs import submission as submissions
from app.domain.jobs.schemas import JobPage, JobStatus, JobSubmitted, JobSummary, JobView
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.params import enum_query
from app.http.routes import also_answers, location, protected

JobId = Annotated[str, Parameter(max_length=64, description="The job's id")]
JobTypeFilter = Annotated[str | None, Parameter(query="jobType", max_length=128)]
SourceFilter = Annotated[str | None, Parameter(query="sourceId", max_length=64)]
JobStatusFilter = enum_query(JobStatus, "JobStatus", description="Only jobs in this status")
# The job routes are not revalidated from the change feed's versions alone: a job's view says why it
# waits (`waitingReason`), which changes with the clock (a scheduled job falls due, a worker's
# heartbeat lapses, a quota's hour rolls on) and with the workers, which no tenant's version counts.
# Their revalidations compare the ETag of a fresh answer (docs/design.md).


@get(
    "/jobengine/jobs/summary",
    **protected("orch:read", problems=(304,)),
    summary="Job counts by status, and what the waiting jobs wait on",
    description="Counts by status overall and per job type (ordered by `jobType asc`). Per job type, "
    "`waiting` counts the jobs not yet claimed (`pending` or `scheduled`, `jobs`) and, by "
    "`waitingReason` (`byReason`), those not due yet and the due ones among the first "
    f"{waiting.HEAD} of the tenant's type in dispatch order (the next to start); the due jobs past "
    f"those {waiting.HEAD} are counted in `unattributed`, not in `byReason`. `reason` is the reason "
    "most of the attributed jobs share; waiting jobs held by nothing start at the next claim and are "
    "counted in `jobs` only.",
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
    description="Ordered by `createdAt desc, jobId desc`. Each job carries `waitingReason` (why a "
    "`pending` or `scheduled` job is not running yet, by the dispatcher's own rules; null when nothing "
    "holds it or when it is not waiting) and `deadLetterEntryId` (its dead-letter entry, or null).",
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
    **protected("orch:read", problems=(304, 404)),
    summary="One job",
    description="A job of the tenant (and project) with its attempts and status; another tenant's or "
    "project's job is 404. Revalidate with `If-None-Match`.",
    tags=["jobs"],
)
async def get_job(session: AsyncSession, caller: Caller, jobId: JobId) -> JobView:
    [job] = await service.views(session, caller.tenant_id, [await service.load(session, caller, jobId)])
    return job


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
    "`Idempotency-Key` a resubmission answers the first job. `warnings` is always present: "
    "`[\"no_worker_for_job_type\"]` when no worker that may run the tenant's jobs has served the job "
    "type in the last hour (the job is queued all the same), else `[]`.",
    tags=["jobs"],
)
async def submit_job(
    request: Request[Any, Any, Any], data: submissions.JobSubmit, submission: Mutation
) -> Response[JobSubmitted]:
    if submission.at_once:  # one statement with its audit row (PostgreSQL, no Idempotency-Key)
        job, facts = await submissions.submit_job_at_once(
            submission.session, submission.caller, data, submission.audit_values
        )
        return await submission.answered(
            status=201,
            content=await _submitted(submission, job, facts),
            headers={"Location": location(request, f"/jobengine/jobs/{job.job_id}")},
        )
    job = await submissions.submit_job(submission.session, submission.caller, data)
    return await submission.commit(
        target=job.job_id,
        status=201,
        content=await _submitted(submission, job),
        headers={"Location": location(request, f"/jobengine/jobs/{job.job_id}")},
    )


async def _submitted(submission: Mutation, job: Any, facts: Any = None) -> JobSubmitted:
    """The answer to a submission: the job's view (why it waits) and what the submitter should know
    (``facts``: those of its type the submission's statement read)."""
    view, warnings = await service.answer(submission.session, submission.caller, job, facts)
    return JobSubmitted(**msgspec.structs.asdict(view), warnings=warnings)


@post(
    "/jobengine/jobs/{jobId:str}/cancel",
    **also_answers(
        {202: "Cancel requested: the job was leased or running (or its cancel was already requested); the "
         "worker stops it at its next heartbeat and it ends `canceled`"},
        "orch:operate",
        JobView,
        action="job.cancel",
        target="jobId",
        problems=(404,),
        s409="The job has ended (`job_not_active`), or the Idempotency-Key is in flight",
    ),
    status_code=200,
    summary="Cancel a job",
    description="A `pending` or `scheduled` job is `canceled` at once (200). A `leased` or `running` job "
    "becomes `cancel_requested` (202): the worker holding it cancels its handler at its next heartbeat and "
    "the job ends `canceled` (its quota slot is held until then); when no worker does within the grace "
    "period (300 s, as for pack runs), the reconciler forces it `canceled`. Canceling a `cancel_requested` "
    "job answers 202 again and changes nothing, so of two concurrent cancels of a running job both "
    "answer 202, and of a waiting job one answers 200 and the other 409. A job that has ended is 409 "
    "`job_not_active`. Canceling a pack step ends its pack run `canceled` (the later steps never run).",
    tags=["jobs"],
)
async def cancel_job(jobId: JobId, mutation: Mutation) -> Response[JobView]:
    job = await cancel.cancel_job(mutation.session, mutation.caller, jobId)
    [view] = await service.views(mutation.session, mutation.caller.tenant_id, [job])
    return await mutation.commit(target=job.job_id, status=200 if job.status == "canceled" else 202, content=view)


BATCH_ENVELOPE = protected(
    "orch:submit",
    action="job.submit_batch",
    submission=True,
    s409="The Idempotency-Key is in flight",
)
BATCH_ENVELOPE["responses"][207] = ResponseSpec(
    data_container=batches.BatchResults,
    description="Some items were refused (see each item's `error`); the others were accepted",
    generate_examples=False,
)


@post(
    "/jobengine/jobs/batch",
    **BATCH_ENVELOPE,
    status_code=200,
    summary="Submit a batch of jobs",
    description=f"1 to {batches.MAX_JOBS} jobs (each as `POST /jobengine/jobs` takes it), validated each on its "
    "own; the accepted ones are inserted in one transaction. One result per item, in request order: "
    "`{index, jobId}` or `{index, error: {code, detail}}` (`validation_failed`, `not_found` for an unknown or "
    "other tenant's source, `source_disabled`). 200 when every item was accepted, 207 when some were refused; "
    "400 when the body itself is invalid (`jobs` not a list, empty, or more than "
    f"{batches.MAX_JOBS} items). An `Idempotency-Key` covers the whole batch.",
    tags=["jobs"],
)
async def submit_job_batch(data: batches.JobBatch, submission: Mutation) -> Response[batches.BatchResults]:
    results = await batches.submit_batch(submission.session, submission.caller, data)
    return await submission.commit(target=None, status=200 if results.all_accepted else 207, content=results)


ROUTES = [job_summary, list_jobs, get_job, submit_job, submit_job_batch, cancel_job]

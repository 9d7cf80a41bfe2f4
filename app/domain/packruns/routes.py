"""Routes of pack runs: reads, submission, cancel and retry."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.packruns import actions, service
from app.domain.packruns.schemas import PackRunDetail, PackRunPage, PackRunStatus, PackRunSubmit
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.params import enum_query
from app.http.routes import also_answers, location, protected

PackRunId = Annotated[str, Parameter(max_length=64, description="The pack run's id")]
PackRunStatusFilter = enum_query(PackRunStatus, "PackRunStatus", description="Only pack runs in this status")


@get(
    "/jobengine/pack-runs",
    **protected("orch:read", problems=(304,), depends=("packrun", "job")),
    summary="List pack runs",
    description="Ordered by `createdAt desc, packRunId desc`.",
    tags=["pack-runs"],
)
async def list_pack_runs(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    status: PackRunStatusFilter = None,
    pack_name: Annotated[str | None, Parameter(query="packName", max_length=200)] = None,
) -> PackRunPage:
    return await service.list_pack_runs(
        session,
        caller,
        request.app.state.runtime.cursors,
        status=status,
        pack_name=pack_name,
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/pack-runs/{packRunId:str}",
    **protected("orch:read", problems=(304, 404), depends=("packrun", "job", "operation")),
    summary="One pack run",
    description="A pack run of the tenant (and project) with its step counts, its `steps` in order (each "
    "step's job: `index` from 0, `jobType`, `jobId`, `status`, `attempts` made, `lastErrorCode` and the "
    "sanitised `lastErrorMessage`) and its `failureReason`: for a `failed`, `partially_succeeded` or `blocked` "
    "run one sentence saying why (the failed step and its error code, the job types without a handler, the "
    "disabled source, or the reconciler's reason), null in every other status. Another tenant's or project's "
    "run is 404. Revalidate with `If-None-Match`. The pack-run actions answer the same view.",
    tags=["pack-runs"],
)
async def get_pack_run(session: AsyncSession, caller: Caller, packRunId: PackRunId) -> PackRunDetail:
    return await service.detail(session, await service.load(session, caller, packRunId))


def _location(request: Request[Any, Any, Any], run_id: str) -> dict[str, str]:
    return {"Location": location(request, f"/jobengine/pack-runs/{run_id}")}


@post(
    "/jobengine/pack-runs",
    **protected(
        "orch:submit",
        action="packrun.submit",
        submission=True,
        location=(201,),
        problems=(404,),
        s409="The source is disabled (`source_disabled`), or the Idempotency-Key is in flight",
    ),
    status_code=201,
    summary="Submit a pack run",
    description="Creates the pack run's operation run (`pack_run.execute`) first, then the run and one job "
    "per step; steps run in order, each after the previous one succeeded. A step whose job type has no "
    "handler makes the run `blocked` at once. Answers 201 with `Location` and `ETag`.",
    tags=["pack-runs"],
)
async def submit_pack_run(
    request: Request[Any, Any, Any], data: PackRunSubmit, submission: Mutation
) -> Response[PackRunDetail]:
    run = await actions.submit(submission.session, submission.caller, data)
    view = await service.detail(submission.session, run)
    return await submission.commit(
        target=run.pack_run_id, status=201, content=view, headers=_location(request, run.pack_run_id)
    )


@post(
    "/jobengine/pack-runs/{packRunId:str}/cancel",
    **also_answers(
        {202: "Cancel requested: running steps stop at their next heartbeat; the run ends `canceled` when no "
         "step is active any more"},
        "orch:operate",
        PackRunDetail,
        action="packrun.cancel",
        target="packRunId",
        problems=(404,),
        s409="The run is not active (`run_not_active`), or the Idempotency-Key is in flight",
    ),
    status_code=200,
    summary="Cancel a pack run",
    description="A queued run (or one with no active step) is `canceled` at once (200): its waiting jobs are "
    "canceled and none runs. A running run becomes `cancel_requested` (202): waiting steps are canceled, "
    "running steps stop at their next heartbeat and free their quota slot, and the run ends `canceled`. "
    "Canceling a `cancel_requested` run answers 202 again; a terminal run is 409 `run_not_active`.",
    tags=["pack-runs"],
)
async def cancel_pack_run(packRunId: PackRunId, mutation: Mutation) -> Response[PackRunDetail]:
    run = await actions.cancel(mutation.session, mutation.caller, packRunId)
    status = 200 if run.status == "canceled" else 202
    view = await service.detail(mutation.session, run)
    return await mutation.commit(target=run.pack_run_id, status=status, content=view)


@post(
    "/jobengine/pack-runs/{packRunId:str}/retry",
    **also_answers(
        {201: "A new pack run (`retryOf` = this run) with its own operation run (`pack_run.retry`)"},
        "orch:backfill",
        PackRunDetail,
        action="packrun.retry",
        target="packRunId",
        location=(201,),
        problems=(404,),
        s409="The run is not failed, canceled or blocked (`run_not_retryable`), or the Idempotency-Key is in flight",
    ),
    status_code=200,
    summary="Retry a pack run",
    description="Only failed, canceled or blocked runs. Creates a new pack run of the same steps with "
    "`retryOf` set and its own operation run (201 with `Location`). While an earlier retry of this run is "
    "still active, answers that retry (200) instead of creating another.",
    tags=["pack-runs"],
)
async def retry_pack_run(
    request: Request[Any, Any, Any], packRunId: PackRunId, mutation: Mutation
) -> Response[PackRunDetail]:
    run, created = await actions.retry(mutation.session, mutation.caller, packRunId)
    return await mutation.commit(
        target=packRunId,
        status=201 if created else 200,
        content=await service.detail(mutation.session, run),
        headers=_location(request, run.pack_run_id),
    )


ROUTES = [list_pack_runs, get_pack_run, submit_pack_run, cancel_pack_run, retry_pack_run]

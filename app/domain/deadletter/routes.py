"""Routes of dead-letter entries: reads, the replay actions (single, batch, by filter) with the
control of a running replay by filter (cancel, pace), and the discard actions (single, batch, by
filter) with restore."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.domain.deadletter import discard, replay, replay_runs, service
from app.domain.deadletter import summary as groups
from app.domain.deadletter.schemas import (
    BATCH_MAX,
    DISCARD_MAX_ENTRIES_DEFAULT,
    DISCARD_MAX_ENTRIES_MAX,
    MAX_ENTRIES_DEFAULT,
    MAX_ENTRIES_MAX,
    RATE_DEFAULT,
    RATE_MAX,
    SAMPLE_SIZE,
    BatchDiscardRequest,
    BatchDiscardResult,
    BatchReplayRequest,
    BatchReplayResult,
    DeadLetterStats,
    DiscardPendingPreview,
    DiscardPendingRequest,
    DiscardPendingResult,
    EntryPage,
    EntryStatus,
    EntryView,
    ReplayAccepted,
    ReplayPendingAccepted,
    ReplayPendingPreview,
    ReplayPendingRequest,
    ReplayRunChange,
    ReplayRunView,
    SummaryPage,
)
from app.http.mutation import Mutation
from app.http.paging import ContinuationToken, Limit
from app.http.params import enum_query, instant_query, parse_instant
from app.http.routes import location, protected

DeadLetteredFrom = instant_query("deadLetteredFrom", "Only entries dead-lettered at or after this instant")
DeadLetteredTo = instant_query("deadLetteredTo", "Only entries dead-lettered before this instant")
EntryId = Annotated[str, Parameter(max_length=64, description="The dead-letter entry's id")]
EntryStatusFilter = enum_query(EntryStatus, "EntryStatus", description="Only entries in this status")


@get(
    "/jobengine/deadletter/stats",
    **protected("orch:operate", problems=(304,)),
    summary="Dead-letter statistics and top error clusters",
    description="Totals by status and category (ordered by `category asc`), the oldest pending entry, the inflow "
    "of the last 24 hours, and the ten largest clusters of (errorCode, error template) ordered by "
    "`count desc, template asc`, each with up to three sample entry ids (most recent first).",
    tags=["deadletter"],
)
async def deadletter_stats(session: AsyncSession, caller: Caller) -> DeadLetterStats:
    return await service.stats(session, caller)


@get(
    "/jobengine/deadletter/summary",
    **protected("orch:operate", problems=(304,), depends=("deadletter",)),
    summary="Dead-letter entries grouped by category and error code",
    description="Ordered by `category asc, errorCode asc`.",
    tags=["deadletter"],
)
async def deadletter_summary(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
) -> SummaryPage:
    return await groups.summary(
        session, caller, request.app.state.runtime.cursors, limit=limit, token=continuation_token
    )


@get(
    "/jobengine/deadletter",
    **protected("orch:operate", problems=(304,), depends=("deadletter", "job")),
    summary="List dead-letter entries",
    description="Ordered by `deadLetteredAt desc, entryId desc`. `deadLetteredFrom` is inclusive, "
    "`deadLetteredTo` exclusive.",
    tags=["deadletter"],
)
async def list_entries(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    job_type: Annotated[str | None, Parameter(query="jobType", max_length=128)] = None,
    category: Annotated[str | None, Parameter(max_length=64)] = None,
    error_code: Annotated[str | None, Parameter(query="errorCode", max_length=128)] = None,
    source_id: Annotated[str | None, Parameter(query="sourceId", max_length=64)] = None,
    status: EntryStatusFilter = None,
    dead_lettered_from: DeadLetteredFrom = None,
    dead_lettered_to: DeadLetteredTo = None,
    job_id: Annotated[
        str | None,
        Parameter(
            query="jobId",
            max_length=64,
            description="Only the entry of this job: the job that dead-lettered, or one of the entry's replay "
            "jobs (`replayJobIds`)",
        ),
    ] = None,
) -> EntryPage:
    filters = service.EntryFilter(
        jobType=job_type,
        category=category,
        errorCode=error_code,
        sourceId=source_id,
        jobId=job_id,
        status=status,
        dead_lettered_from=parse_instant("deadLetteredFrom", dead_lettered_from),
        dead_lettered_to=parse_instant("deadLetteredTo", dead_lettered_to),
    )
    return await service.list_entries(
        session,
        caller,
        request.app.state.runtime.cursors,
        filters=filters,
        limit=limit,
        token=continuation_token,
    )


@get(
    "/jobengine/deadletter/{entryId:str}",
    **protected("orch:operate", problems=(304, 404), depends=("deadletter", "job")),
    summary="One dead-letter entry",
    description="An entry of the tenant (and project) with its error, status and replay history; another "
    "tenant's or project's entry is 404.",
    tags=["deadletter"],
)
async def get_entry(session: AsyncSession, caller: Caller, entryId: EntryId) -> EntryView:
    return await service.view_one(session, await service.load(session, caller, entryId))


@post(
    "/jobengine/deadletter/{entryId:str}/replay",
    **protected(
        "orch:backfill",
        action="deadletter.replay",
        target="entryId",
        location=(202,),
        problems=(404,),
        s409="`replay_in_progress` (the entry is replaying), `already_replayed` (replayed), `entry_discarded` "
        "(discarded), or the Idempotency-Key is in flight",
    ),
    status_code=202,
    summary="Replay one dead-letter entry",
    description="A pending entry becomes `replaying` and a new job (same jobType, source, payload and project; "
    "attempt 0; the original job's maxAttempts) is queued; `Location` is that job. The transition is one guarded "
    "statement, so concurrent replays of one entry, in any number of gateway processes, create exactly one job. "
    "No request body.",
    tags=["deadletter"],
)
async def replay_entry(
    request: Request[Any, Any, Any], entryId: EntryId, mutation: Mutation
) -> Response[ReplayAccepted]:
    done = await replay.replay_one(mutation.session, mutation.caller, entryId)
    return await mutation.commit(
        target=entryId,
        status=202,
        content=ReplayAccepted(
            entry_id=done.entry_id,
            job_id=done.job_id,
            status="replaying",
            replay_count=done.replay_count,
            last_replayed_at=done.replayed_at,
        ),
        headers={"Location": location(request, f"/jobengine/jobs/{done.job_id}")},
    )


@post(
    "/jobengine/deadletter/replay/batch",
    **protected("orch:backfill", action="deadletter.replay_batch"),
    status_code=200,
    summary="Replay a set of dead-letter entries",
    description=f"1-{BATCH_MAX} `entryIds` (more is 400). Duplicate ids are replayed once and reported once, in "
    "first-occurrence order. Each id's outcome: `replayed` (with `jobId`), `skipped` with `reason` "
    "(`replay_in_progress`, `already_replayed`, `entry_discarded`), or `not_found` (also another tenant's or "
    "project's id, which is left untouched). Synchronous: the batch is done when the answer comes. An operation "
    "run of type `deadletter.replay_batch` is created first and completed in the same transaction, with "
    "`summary_counts` total, replayed, skipped, not_found (outcome `succeeded`; `partially_succeeded` when some "
    "ids were not found; `failed` when none was). `dryRun: true` changes nothing and creates no run: it reports "
    "what would happen (`replayed` without `jobId` for each pending entry).",
    tags=["deadletter"],
)
async def replay_batch(data: BatchReplayRequest, mutation: Mutation) -> Response[BatchReplayResult]:
    mutation.dry_run = data.dry_run
    result = await replay.replay_batch(mutation.session, mutation.caller, data)
    target = str(result.operation_run_id) if result.operation_run_id is not None else None
    return await mutation.commit(target=target, status=200, content=result)


PENDING_ENVELOPE = protected("orch:backfill", action="deadletter.replay_pending", location=(202,))
PENDING_ENVELOPE["responses"][200] = ResponseSpec(
    data_container=ReplayPendingPreview,
    description="Dry run: what would be replayed; nothing changed",
    generate_examples=False,
)


@post(
    "/jobengine/deadletter/replay/pending",
    **PENDING_ENVELOPE,
    status_code=202,
    summary="Replay pending dead-letter entries by filter",
    description="`filter` must name at least one of jobType, category, errorCode, sourceId, deadLetteredFrom "
    "(inclusive), deadLetteredTo (exclusive; an empty or reversed range matches nothing); an empty filter is "
    "400. Only `pending` entries dead-lettered before this request are taken, oldest first, at most `maxEntries` "
    f"(1-{MAX_ENTRIES_MAX}, default {MAX_ENTRIES_DEFAULT}) and at most `ratePerSecond` per second "
    f"(1-{RATE_MAX}, default {RATE_DEFAULT}; the maximum is effectively unlimited). "
    "`dryRun: true` answers 200 with the number of matching entries and the first "
    f"{SAMPLE_SIZE} of them, and changes nothing. Otherwise an operation run of type `deadletter.replay_pending` "
    "is created before any work and the answer is 202 with its id and `Location` "
    "(`/api/admin/operations/{id}`); workers replay the entries in bounded chunks and report progress in its "
    "`summary_counts` (matched, replayed, skipped, failed); it ends `succeeded`, `partially_succeeded` or "
    "`failed`. The same filter (in the same tenant and project) while its run is active answers 202 with that "
    "run (`deduplicated: true`); different filters run side by side.",
    tags=["deadletter"],
)
async def replay_pending(
    request: Request[Any, Any, Any], data: ReplayPendingRequest, mutation: Mutation
) -> Response[ReplayPendingAccepted]:
    mutation.dry_run = data.dry_run
    if data.dry_run:
        preview = await replay.preview_pending(mutation.session, mutation.caller, data)
        return await mutation.commit(target=None, status=200, content=preview)
    accepted = await replay.start_pending(mutation.session, mutation.caller, data)
    return await mutation.commit(
        target=str(accepted.operation_run_id),
        status=202,
        content=accepted,
        headers={"Location": location(request, f"/api/admin/operations/{accepted.operation_run_id}")},
    )


# -- a running replay by filter ------------------------------------------------------------------------

OperationRunId = Annotated[
    int,
    Parameter(
        description="The replay-by-filter run's operation run id (another tenant's or project's run, or a run "
        "of another type, is 404)",
        ge=1,
        le=2**63 - 1,
    ),
]
REPLAY_RUN_ANSWER = "`run_not_active` (the run has finished: completed, canceled or reconciled), or the " \
    "Idempotency-Key is in flight"


@post(
    "/jobengine/deadletter/replays/{operationRunId:int}/cancel",
    **protected(
        "orch:backfill", action="deadletter.replay_cancel", target="operationRunId", problems=(404,),
        s409=REPLAY_RUN_ANSWER,
    ),
    status_code=200,
    summary="Cancel a replay by filter",
    description="Stops an active `deadletter.replay_pending` run: no chunk starts after the cancel is "
    "committed (a chunk in progress finishes first and is counted). Entries already replayed stay replayed "
    "(their jobs run); the others stay `pending`. The run ends `completed` with outcome `failed` and the "
    "failure code `run.canceled` (the lifecycle of a canceled run), and its `summary_counts` say what was done "
    "and what was not: `matched` = `replayed` + `skipped` + `failed` + `canceled`. Answers the run and those "
    "counts. Of concurrent cancels exactly one succeeds; a finished run is 409 `run_not_active`. No request "
    "body.",
    tags=["deadletter"],
)
async def cancel_replay_run(operationRunId: OperationRunId, mutation: Mutation) -> Response[ReplayRunView]:
    run = await replay_runs.cancel(mutation.session, mutation.caller, operationRunId)
    return await mutation.commit(target=str(operationRunId), status=200, content=run)


@patch(
    "/jobengine/deadletter/replays/{operationRunId:int}",
    **protected(
        "orch:backfill", action="deadletter.replay_rate", target="operationRunId", problems=(404,),
        s409=REPLAY_RUN_ANSWER,
    ),
    status_code=200,
    summary="Change the pace of a replay by filter",
    description=f"`ratePerSecond` (1-{RATE_MAX}, as in the replay-by-filter request) of an active "
    "`deadletter.replay_pending` run, from its next chunk on (a run waiting for its pace is due at once). "
    "Answers the run and its counts. A finished run is 409 `run_not_active`.",
    tags=["deadletter"],
)
async def change_replay_run(
    operationRunId: OperationRunId, data: ReplayRunChange, mutation: Mutation
) -> Response[ReplayRunView]:
    run = await replay_runs.change_rate(mutation.session, mutation.caller, operationRunId, data.rate_per_second)
    return await mutation.commit(target=str(operationRunId), status=200, content=run)


# -- discards ----------------------------------------------------------------------------------------


@post(
    "/jobengine/deadletter/{entryId:str}/discard",
    **protected(
        "orch:backfill",
        action="deadletter.discard",
        target="entryId",
        problems=(404,),
        s409="`replay_in_progress` (the entry is replaying), `entry_not_pending` (replayed or discarded "
        "already), or the Idempotency-Key is in flight",
    ),
    status_code=200,
    summary="Discard one dead-letter entry",
    description="A pending entry becomes `discarded`: it is kept (and counted as discarded) but no longer "
    "replayed, and can be restored. The transition is one guarded statement, so of concurrent discards of one "
    "entry exactly one succeeds. Answers the entry. No request body.",
    tags=["deadletter"],
)
async def discard_entry(entryId: EntryId, mutation: Mutation) -> Response[EntryView]:
    entry = await discard.discard_one(mutation.session, mutation.caller, entryId)
    view = await service.view_one(mutation.session, entry)
    return await mutation.commit(target=entryId, status=200, content=view)


@post(
    "/jobengine/deadletter/{entryId:str}/restore",
    **protected(
        "orch:backfill",
        action="deadletter.restore",
        target="entryId",
        problems=(404,),
        s409="`entry_not_discarded` (the entry is not discarded), or the Idempotency-Key is in flight",
    ),
    status_code=200,
    summary="Restore a discarded dead-letter entry",
    description="A discarded entry becomes `pending` again (replayable, discardable). Entries are kept until "
    "deleted (there is no retention window), so a discarded entry can be restored for as long as it exists. "
    "One guarded statement. Answers the entry. No request body.",
    tags=["deadletter"],
)
async def restore_entry(entryId: EntryId, mutation: Mutation) -> Response[EntryView]:
    entry = await discard.restore_one(mutation.session, mutation.caller, entryId)
    view = await service.view_one(mutation.session, entry)
    return await mutation.commit(target=entryId, status=200, content=view)


@post(
    "/jobengine/deadletter/discard/batch",
    **protected("orch:backfill", action="deadletter.discard_batch"),
    status_code=200,
    summary="Discard a set of dead-letter entries",
    description=f"1-{BATCH_MAX} `entryIds` (more is 400). Duplicate ids are discarded once and reported once, in "
    "first-occurrence order. Each id's outcome: `discarded`, `skipped` with `reason` (`replay_in_progress`, "
    "`entry_not_pending`), or `not_found` (also another tenant's or project's id, which is left untouched). "
    "Synchronous, one transaction, one guarded statement. `dryRun: true` changes nothing: it reports what would "
    "happen.",
    tags=["deadletter"],
)
async def discard_batch(data: BatchDiscardRequest, mutation: Mutation) -> Response[BatchDiscardResult]:
    mutation.dry_run = data.dry_run
    result = await discard.discard_batch(mutation.session, mutation.caller, data)
    return await mutation.commit(target=None, status=200, content=result)


@post(
    "/jobengine/deadletter/discard/pending",
    **protected("orch:backfill", action="deadletter.discard_pending"),
    status_code=200,
    summary="Discard pending dead-letter entries by filter",
    description="`filter` as for a replay by filter (at least one criterion; an empty filter is 400). Only "
    "`pending` entries dead-lettered before this request are taken, oldest first, at most `maxEntries` "
    f"(1-{DISCARD_MAX_ENTRIES_MAX}, default {DISCARD_MAX_ENTRIES_DEFAULT}). `dryRun: true` answers the number "
    f"of matching entries (`matched`), how many would be discarded (`wouldDiscard`) and the ids of the first "
    f"{SAMPLE_SIZE} (`sample`), and changes nothing. Otherwise the entries are discarded in one transaction "
    "with an operation run of type `deadletter.discard_pending`, created and completed in it (`summary_counts` "
    "matched, discarded); the answer carries its id and counts. Entries another action holds at that moment "
    "(a replay taking them) are left alone.",
    tags=["deadletter"],
)
async def discard_pending(
    data: DiscardPendingRequest, mutation: Mutation
) -> Response[DiscardPendingPreview | DiscardPendingResult]:
    mutation.dry_run = data.dry_run
    if data.dry_run:
        preview = await discard.preview_pending(mutation.session, mutation.caller, data)
        return await mutation.commit(target=None, status=200, content=preview)
    done = await discard.discard_pending(mutation.session, mutation.caller, data)
    return await mutation.commit(target=str(done.operation_run_id), status=200, content=done)


ROUTES = [
    deadletter_stats,
    deadletter_summary,
    list_entries,
    replay_batch,
    replay_pending,
    discard_batch,
    discard_pending,
    cancel_replay_run,
    change_replay_run,
    get_entry,
    replay_entry,
    discard_entry,
    restore_entry,
]

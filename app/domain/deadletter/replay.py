"""Dead-letter replays: where a replay changes the database.

Every replay — single, batch or by filter — goes through :func:`replay_entries`: ONE guarded
statement moves entries from ``pending`` to ``replaying`` (``UPDATE … WHERE status = 'pending'
RETURNING …``) and the new jobs are inserted in the same transaction. Two replays of one entry,
in any process, cannot both pass the guard, so an entry is replayed exactly once per
``pending`` period.

Rows are locked in ``entry_id`` order inside that statement, so two replays over overlapping
sets wait for each other instead of deadlocking; the background runner takes its chunks with
``SKIP LOCKED`` and never waits on an entry another replay holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql import expression

from app.core.caller import Caller
from app.core.problems import FieldError, Problem, not_found
from app.domain.deadletter.schemas import (
    SAMPLE_SIZE,
    BatchReplayRequest,
    BatchReplayResult,
    EntryOutcome,
    ReplayFilter,
    ReplayPendingAccepted,
    ReplayPendingPreview,
    ReplayPendingRequest,
)
from app.domain.deadletter.service import EntryFilter, views
from app.domain.operations import ledger
from app.domain.operations.ledger import failure_item
from app.instants import iso, parse_iso
from app.storage.models import DeadLetterEntry as Entry
from app.storage.models import Job, Source, UTCDateTime

DEFAULT_MAX_ATTEMPTS = 3
ID_LIST_MAX = 900
# Entry status -> the reason a replay skips it (and the code of the single replay's 409).
SKIP_REASONS = {
    "replaying": "replay_in_progress",
    "replayed": "already_replayed",
    "discarded": "entry_discarded",
}
SKIP_DETAILS = {
    "replay_in_progress": "The entry is being replayed; its replay job has not finished.",
    "already_replayed": "The entry was replayed successfully already.",
    "entry_discarded": "The entry was discarded and cannot be replayed.",
}


class new_job_id(expression.FunctionElement[str]):
    """A random UUID v4 text per row, made by the database (so a chunk needs no id list)."""

    type = String()
    inherit_cache = True


@compiles(new_job_id, "postgresql")
def _new_job_id_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "gen_random_uuid()::text"


@compiles(new_job_id)
def _new_job_id_generic(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLite: the UUID v4 layout from random bytes.
    return (
        "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' "
        "|| substr('89AB', 1 + abs(random()) % 4, 1) || substr(hex(randomblob(2)), 2) || '-' "
        "|| hex(randomblob(6)))"
    )


@dataclass(frozen=True)
class Replayed:
    entry_id: str
    job_id: str
    replay_count: int
    replayed_at: datetime
    dead_lettered_at: datetime


def _visible_pending(tenant_id: int, project_id: str | None) -> list[Any]:
    scope = [Entry.tenant_id == tenant_id, Entry.status == "pending"]
    if project_id is not None:
        scope.append(Entry.project_id == project_id)
    return scope


def by_ids(tenant_id: int, project_id: str | None, entry_ids: Iterable[str]):  # type: ignore[no-untyped-def]
    """The pending entries among ``entry_ids``, locked in ``entry_id`` order (waits for other
    replays of the same entries, never in a cycle)."""
    return (
        select(Entry.entry_id)
        .where(*_visible_pending(tenant_id, project_id), Entry.entry_id.in_(list(dict.fromkeys(entry_ids))))
        .order_by(Entry.entry_id)
        .with_for_update()
    )


async def replay_entries(
    session: AsyncSession,
    *,
    tenant_id: int,
    project_id: str | None,
    selection: Any,
    now: datetime | None = None,
) -> list[Replayed]:
    """Replay the pending entries that ``selection`` (a locking SELECT of entry ids) yields.

    Not committed: the caller commits with its audit row or run update."""
    now = now or datetime.now(UTC)
    # A CTE is evaluated once: the locked selection cannot be re-run (and grow) inside the UPDATE.
    picked = selection.cte("picked")
    guarded = (
        update(Entry)
        .where(*_visible_pending(tenant_id, project_id), Entry.entry_id.in_(select(picked.c.entry_id)))
        .values(
            status="replaying",
            replay_count=Entry.replay_count + 1,
            last_replayed_at=now,
            last_replay_job_id=new_job_id(),
            updated_at=now,
        )
        .returning(
            Entry.entry_id,
            Entry.source_id,
            Entry.replay_count,
            Entry.last_replay_job_id,
            Entry.dead_lettered_at,
        )
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(guarded)).all()
    if not rows:
        return []
    # The new jobs, copied from the entries just moved (same transaction) and their original jobs.
    original = aliased(Job)
    columns = (
        "tenant_id",
        "job_id",
        "project_id",
        "source_id",
        "job_type",
        "payload",
        "priority",
        "status",
        "attempt",
        "max_attempts",
        "run_after",
        "replay_of_entry_id",
        "cancel_requested",
        "created_at",
        "updated_at",
    )
    copied = (
        select(
            Entry.tenant_id,
            Entry.last_replay_job_id,
            Entry.project_id,
            Entry.source_id,
            Entry.job_type,
            Entry.payload,
            func.coalesce(original.priority, 0),
            literal("pending"),
            literal(0),
            func.coalesce(original.max_attempts, DEFAULT_MAX_ATTEMPTS),
            literal(now, UTCDateTime()),
            Entry.entry_id,
            literal(False),
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        )
        .select_from(Entry)
        .outerjoin(original, (original.tenant_id == Entry.tenant_id) & (original.job_id == Entry.job_id))
        .where(Entry.tenant_id == tenant_id)
    )
    ids = [r.entry_id for r in rows]
    for start in range(0, len(ids), ID_LIST_MAX):  # bounded id lists (SQLite's parameter limit)
        part = copied.where(Entry.entry_id.in_(ids[start : start + ID_LIST_MAX]))
        await session.execute(insert(Job).from_select(columns, part))
    # Source counters count replay jobs like submitted ones (jobs_submitted, last_job_at). Sources
    # are updated after the entries and in a fixed order, so replays never wait in a cycle.
    per_source: dict[str, int] = {}
    for row in rows:
        per_source[row.source_id] = per_source.get(row.source_id, 0) + 1
    for source_id in sorted(per_source):
        count = per_source[source_id]
        await session.execute(
            update(Source)
            .where(Source.tenant_id == tenant_id, Source.source_id == source_id)
            .values(jobs_submitted=Source.jobs_submitted + count, last_job_at=now)
            .execution_options(synchronize_session=False)
        )
    return [Replayed(r.entry_id, r.last_replay_job_id, r.replay_count, now, r.dead_lettered_at) for r in rows]


async def statuses(
    session: AsyncSession, *, tenant_id: int, project_id: str | None, entry_ids: Iterable[str]
) -> dict[str, str]:
    """The current status of each visible entry among ``entry_ids`` (others are absent)."""
    ids = list(dict.fromkeys(entry_ids))
    if not ids:
        return {}
    stmt = select(Entry.entry_id, Entry.status).where(Entry.tenant_id == tenant_id, Entry.entry_id.in_(ids))
    if project_id is not None:
        stmt = stmt.where(Entry.project_id == project_id)
    return {entry_id: status for entry_id, status in await session.execute(stmt)}


# -- replay by filter ------------------------------------------------------------------------------

FILTER_FIELDS = ("jobType", "category", "errorCode", "sourceId")




def normalised_filter(data: ReplayFilter) -> dict[str, str]:
    """The filter as stored and hashed: only the given fields, instants in UTC."""
    values = {
        "jobType": data.job_type,
        "category": data.category,
        "errorCode": data.error_code,
        "sourceId": data.source_id,
        "deadLetteredFrom": iso(data.dead_lettered_from) if data.dead_lettered_from else None,
        "deadLetteredTo": iso(data.dead_lettered_to) if data.dead_lettered_to else None,
    }
    return {key: value for key, value in sorted(values.items()) if value is not None}


def entry_filter(stored: Mapping[str, str]) -> EntryFilter:
    return EntryFilter(
        dead_lettered_from=parse_iso(stored["deadLetteredFrom"]) if "deadLetteredFrom" in stored else None,
        dead_lettered_to=parse_iso(stored["deadLetteredTo"]) if "deadLetteredTo" in stored else None,
        **{key: stored.get(key) for key in FILTER_FIELDS},
    )


def pending_before(
    stored_filter: Mapping[str, str],
    *,
    tenant_id: int,
    project_id: str | None,
    cutoff: datetime,
    columns: Any = None,
):  # type: ignore[no-untyped-def]
    """Pending entries matching the filter, dead-lettered before ``cutoff`` (the request's time)."""
    stmt = select(*(columns if columns is not None else (Entry,))).where(
        Entry.tenant_id == tenant_id, Entry.status == "pending", Entry.dead_lettered_at < cutoff
    )
    if project_id is not None:
        stmt = stmt.where(Entry.project_id == project_id)
    return entry_filter(stored_filter).apply(stmt)


async def count_pending(
    session: AsyncSession,
    stored_filter: Mapping[str, str],
    *,
    tenant_id: int,
    project_id: str | None,
    cutoff: datetime,
) -> int:
    stmt = pending_before(
        stored_filter, tenant_id=tenant_id, project_id=project_id, cutoff=cutoff, columns=(func.count(),)
    )
    return int((await session.execute(stmt)).scalar_one())


# Processing order of a replay by filter (and of a dry run's sample): oldest first.
PROCESSING_ORDER = (Entry.dead_lettered_at.asc(), Entry.entry_id.asc())


# -- the three operator actions ----------------------------------------------------------------------


async def replay_one(session: AsyncSession, caller: Caller, entry_id: str) -> Replayed:
    """Replay one entry, or raise the 404/409 that says why not."""
    for _ in range(2):  # a second look only if the entry came back to pending in between
        done = await replay_entries(
            session,
            tenant_id=caller.tenant_id,
            project_id=caller.project,
            selection=by_ids(caller.tenant_id, caller.project, [entry_id]),
        )
        if done:
            return done[0]
        status = (
            await statuses(
                session, tenant_id=caller.tenant_id, project_id=caller.project, entry_ids=[entry_id]
            )
        ).get(entry_id)
        if status is None:
            raise not_found("Dead-letter entry")
        if status in SKIP_REASONS:
            code = SKIP_REASONS[status]
            raise Problem(409, code, SKIP_DETAILS[code])
    raise Problem(409, "conflict", "The entry changed during the replay; retry.")


def _batch_outcome(counts: Mapping[str, int]) -> tuple[str, list[dict[str, str]]]:
    """succeeded when every id was found (replayed or skipped); partially_succeeded when some were
    not found; failed when none was."""
    if counts["not_found"] == 0:
        return "succeeded", []
    failures = [
        failure_item("deadletter.entries_not_found", f"{counts['not_found']} entry id(s) were not found.")
    ]
    return ("failed" if counts["not_found"] == counts["total"] else "partially_succeeded"), failures


async def replay_batch(session: AsyncSession, caller: Caller, data: BatchReplayRequest) -> BatchReplayResult:
    ids = list(dict.fromkeys(data.entry_ids))
    scope = {"tenant_id": caller.tenant_id, "project_id": caller.project}
    run = None
    replayed: dict[str, Replayed] = {}
    if data.dry_run:
        current = await statuses(session, entry_ids=ids, **scope)
    else:
        opened = await ledger.open_run_for(
            session,
            caller,
            run_type="deadletter.replay_batch",
            context={"entry_ids": ids, "dryRun": False, "trace_id": caller.trace_id},
            summary_counts={"total": len(ids)},
            status="running",
        )
        run = opened.run
        selection = by_ids(caller.tenant_id, caller.project, ids)
        replayed = {r.entry_id: r for r in await replay_entries(session, selection=selection, **scope)}
        current = await statuses(session, entry_ids=[i for i in ids if i not in replayed], **scope)
    results: list[EntryOutcome] = []
    for entry_id in ids:
        if entry_id in replayed:
            results.append(EntryOutcome(entry_id, "replayed", job_id=replayed[entry_id].job_id))
            continue
        status = current.get(entry_id)
        if status is None:
            results.append(EntryOutcome(entry_id, "not_found"))
        elif status == "pending":  # only in a dry run
            results.append(EntryOutcome(entry_id, "replayed"))
        else:
            reason = SKIP_REASONS[status]
            results.append(EntryOutcome(entry_id, "skipped", reason=reason))  # type: ignore[arg-type]
    counts = {
        "total": len(ids),
        "replayed": sum(r.outcome == "replayed" for r in results),
        "skipped": sum(r.outcome == "skipped" for r in results),
        "not_found": sum(r.outcome == "not_found" for r in results),
    }
    if run is not None:
        outcome, failures = _batch_outcome(counts)
        ledger.complete(
            run,
            outcome,
            counts=counts,
            failures=failures,
            message=f"Replayed {counts['replayed']}, skipped {counts['skipped']}, "
            f"not found {counts['not_found']}.",
        )
        await session.flush()
    return BatchReplayResult(
        dry_run=data.dry_run,
        operation_run_id=run.id if run is not None else None,
        total=counts["total"],
        replayed=counts["replayed"],
        skipped=counts["skipped"],
        not_found=counts["not_found"],
        results=results,
    )


def _check_filter(data: ReplayFilter) -> dict[str, str]:
    stored = normalised_filter(data)
    if not stored:
        raise Problem(
            400,
            "validation_failed",
            "The request is invalid: filter: name at least one of jobType, category, errorCode, sourceId, "
            "deadLetteredFrom, deadLetteredTo.",
            errors=[FieldError(field="filter", message="must name at least one criterion")],
        )
    return stored


async def preview_pending(
    session: AsyncSession, caller: Caller, data: ReplayPendingRequest
) -> ReplayPendingPreview:
    stored = _check_filter(data.filter)
    now = datetime.now(UTC)
    scope = {"tenant_id": caller.tenant_id, "project_id": caller.project, "cutoff": now}
    matched = await count_pending(session, stored, **scope)
    sample = (
        await session.execute(pending_before(stored, **scope).order_by(*PROCESSING_ORDER).limit(SAMPLE_SIZE))
    ).scalars()
    return ReplayPendingPreview(
        dry_run=True,
        matched=matched,
        would_replay=min(matched, data.max_entries),
        sample=await views(session, caller.tenant_id, list(sample)),
    )


async def start_pending(
    session: AsyncSession, caller: Caller, data: ReplayPendingRequest
) -> ReplayPendingAccepted:
    """Create the run (before any work) or return the active run of the same filter."""
    stored = _check_filter(data.filter)
    now = datetime.now(UTC)
    opened = await ledger.open_run_for(
        session,
        caller,
        run_type="deadletter.replay_pending",
        identity={"filter": stored, "project": caller.project},
        context={
            "filter": stored,
            "maxEntries": data.max_entries,
            "ratePerSecond": data.rate_per_second,
            "cutoff": iso(now),
            "trace_id": caller.trace_id,
        },
        summary_counts={"matched": 0, "replayed": 0, "skipped": 0, "failed": 0},
        operator_message="Replay by filter is queued.",
        now=now,
    )
    run = opened.run
    if opened.created:
        matched = await count_pending(
            session, stored, tenant_id=caller.tenant_id, project_id=caller.project, cutoff=now
        )
        run.summary_counts = {
            "matched": min(matched, data.max_entries),
            "replayed": 0,
            "skipped": 0,
            "failed": 0,
        }
        await session.flush()
    return ReplayPendingAccepted(operation_run_id=run.id, status=run.status, deduplicated=not opened.created)

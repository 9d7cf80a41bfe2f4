"""Discarding dead-letter entries, and restoring them.

Every change — single, batch, by filter, restore — is ONE guarded statement
(``UPDATE … WHERE status = <from> RETURNING …``) over a locking selection of entry ids, like the
replays (:mod:`app.domain.deadletter.replay`): two actions on one entry, in any process, cannot
both pass the guard. The maintained aggregates (migration 0004) follow through their triggers.

A discarded entry stays in the table (there is no retention or purge of entries): it can be
restored to ``pending`` for as long as it exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem, not_found
from app.domain.deadletter.replay import (
    PROCESSING_ORDER,
    _check_filter,
    count_pending,
    pending_before,
    statuses,
)
from app.domain.deadletter.schemas import (
    SAMPLE_SIZE,
    BatchDiscardRequest,
    BatchDiscardResult,
    DiscardEntryOutcome,
    DiscardPendingPreview,
    DiscardPendingRequest,
    DiscardPendingResult,
)
from app.domain.operations import ledger
from app.instants import iso
from app.storage.models import DeadLetterEntry as Entry

# Entry status -> why a discard refuses it (the single discard's 409 code, a batch item's reason).
DISCARD_REFUSALS = {
    "replaying": "replay_in_progress",
    "replayed": "entry_not_pending",
    "discarded": "entry_not_pending",
}
DETAILS = {
    "replay_in_progress": "The entry is being replayed; it cannot be discarded until its replay job ends.",
    "entry_not_pending": "Only a pending entry can be discarded.",
    "entry_not_discarded": "Only a discarded entry can be restored.",
}


def _scope(tenant_id: int, project_id: str | None, status: str) -> list[Any]:
    where = [Entry.tenant_id == tenant_id, Entry.status == status]
    if project_id is not None:
        where.append(Entry.project_id == project_id)
    return where


def _by_ids(tenant_id: int, project_id: str | None, status: str, entry_ids: Iterable[str]):  # type: ignore[no-untyped-def]
    """The entries in ``status`` among ``entry_ids``, locked in ``entry_id`` order (the replays' order,
    so a discard and a replay over overlapping sets wait for each other, never in a cycle)."""
    return (
        select(Entry.entry_id)
        .where(*_scope(tenant_id, project_id, status), Entry.entry_id.in_(list(dict.fromkeys(entry_ids))))
        .order_by(Entry.entry_id)
        .with_for_update()
    )


def _guarded(tenant_id: int, project_id: str | None, selection: Any, source: str, target: str, now: datetime):  # type: ignore[no-untyped-def]
    """``UPDATE … SET status = target WHERE status = source AND entry_id IN (selection)``.

    The selection is a CTE (evaluated once); the guard is checked again on the locked rows."""
    picked = selection.cte("picked")
    return (
        update(Entry)
        .where(*_scope(tenant_id, project_id, source), Entry.entry_id.in_(select(picked.c.entry_id)))
        .values(status=target, updated_at=now)
        .execution_options(synchronize_session=False)
    )


async def _move_one(session: AsyncSession, caller: Caller, entry_id: str, source: str, target: str) -> Entry | None:
    stmt = _guarded(
        caller.tenant_id,
        caller.project,
        _by_ids(caller.tenant_id, caller.project, source, [entry_id]),
        source,
        target,
        datetime.now(UTC),
    ).returning(Entry)
    return (await session.scalars(stmt)).one_or_none()


async def _status_of(session: AsyncSession, caller: Caller, entry_id: str) -> str:
    status = (
        await statuses(session, tenant_id=caller.tenant_id, project_id=caller.project, entry_ids=[entry_id])
    ).get(entry_id)
    if status is None:
        raise not_found("Dead-letter entry")
    return status


async def discard_one(session: AsyncSession, caller: Caller, entry_id: str) -> Entry:
    """``pending`` -> ``discarded``, or raise the 404/409 that says why not."""
    for _ in range(2):  # a second look only if the entry came back to pending in between
        entry = await _move_one(session, caller, entry_id, "pending", "discarded")
        if entry is not None:
            return entry
        status = await _status_of(session, caller, entry_id)
        if status in DISCARD_REFUSALS:
            code = DISCARD_REFUSALS[status]
            raise Problem(409, code, DETAILS[code])
    raise Problem(409, "conflict", "The entry changed during the discard; retry.")


async def restore_one(session: AsyncSession, caller: Caller, entry_id: str) -> Entry:
    """``discarded`` -> ``pending``, or raise the 404/409 that says why not."""
    entry = await _move_one(session, caller, entry_id, "discarded", "pending")
    if entry is not None:
        return entry
    await _status_of(session, caller, entry_id)  # 404 when not visible
    raise Problem(409, "entry_not_discarded", DETAILS["entry_not_discarded"])


async def discard_batch(session: AsyncSession, caller: Caller, data: BatchDiscardRequest) -> BatchDiscardResult:
    ids = list(dict.fromkeys(data.entry_ids))
    scope = {"tenant_id": caller.tenant_id, "project_id": caller.project}
    discarded: set[str] = set()
    if not data.dry_run:
        stmt = _guarded(
            caller.tenant_id,
            caller.project,
            _by_ids(caller.tenant_id, caller.project, "pending", ids),
            "pending",
            "discarded",
            datetime.now(UTC),
        ).returning(Entry.entry_id)
        discarded = set((await session.scalars(stmt)).all())
    current = await statuses(session, entry_ids=[i for i in ids if i not in discarded], **scope)
    results: list[DiscardEntryOutcome] = []
    for entry_id in ids:
        status = "pending" if entry_id in discarded else current.get(entry_id)
        if status is None:
            results.append(DiscardEntryOutcome(entry_id, "not_found"))
        elif status == "pending":  # discarded now, or (dry run) would be
            results.append(DiscardEntryOutcome(entry_id, "discarded"))
        else:
            reason = DISCARD_REFUSALS[status]
            results.append(DiscardEntryOutcome(entry_id, "skipped", reason=reason))  # type: ignore[arg-type]
    return BatchDiscardResult(
        dry_run=data.dry_run,
        total=len(ids),
        discarded=sum(r.outcome == "discarded" for r in results),
        skipped=sum(r.outcome == "skipped" for r in results),
        not_found=sum(r.outcome == "not_found" for r in results),
        results=results,
    )


async def preview_pending(
    session: AsyncSession, caller: Caller, data: DiscardPendingRequest
) -> DiscardPendingPreview:
    stored = _check_filter(data.filter)
    scope = {"tenant_id": caller.tenant_id, "project_id": caller.project, "cutoff": datetime.now(UTC)}
    matched = await count_pending(session, stored, **scope)
    sample = await session.scalars(
        pending_before(stored, columns=(Entry.entry_id,), **scope).order_by(*PROCESSING_ORDER).limit(SAMPLE_SIZE)
    )
    return DiscardPendingPreview(
        dry_run=True, matched=matched, would_discard=min(matched, data.max_entries), sample=list(sample)
    )


async def discard_pending(
    session: AsyncSession, caller: Caller, data: DiscardPendingRequest
) -> DiscardPendingResult:
    """Discard up to ``maxEntries`` matching pending entries (oldest first) in the caller's
    transaction, with an operation run created and completed in it. Entries another action holds
    at that moment (a replay taking them) are skipped, not waited for."""
    stored = _check_filter(data.filter)
    now = datetime.now(UTC)
    opened = await ledger.open_run_for(
        session,
        caller,
        run_type="deadletter.discard_pending",
        context={
            "filter": stored,
            "maxEntries": data.max_entries,
            "cutoff": iso(now),
            "trace_id": caller.trace_id,
        },
        summary_counts={"matched": 0, "discarded": 0},
        status="running",
        now=now,
    )
    run = opened.run
    scope = {"tenant_id": caller.tenant_id, "project_id": caller.project, "cutoff": now}
    matched = await count_pending(session, stored, **scope)
    selection = (
        pending_before(stored, columns=(Entry.entry_id,), **scope)
        .order_by(*PROCESSING_ORDER)
        .limit(data.max_entries)
        .with_for_update(skip_locked=True)
    )
    stmt = _guarded(caller.tenant_id, caller.project, selection, "pending", "discarded", now).returning(
        Entry.entry_id
    )
    discarded = len((await session.scalars(stmt)).all())
    counts = {"matched": matched, "discarded": discarded}
    ledger.complete(run, "succeeded", counts=counts, message=f"Discarded {discarded} of {matched} matching entries.")
    await session.flush()
    return DiscardPendingResult(
        dry_run=False,
        operation_run_id=run.id,
        status=run.status,
        outcome=run.outcome,
        matched=matched,
        discarded=discarded,
    )

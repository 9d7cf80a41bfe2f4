"""The replay-by-filter runner: advances active ``deadletter.replay_pending`` operation runs.

Each call takes due runs one at a time with ``FOR UPDATE SKIP LOCKED`` on the run row (two
workers never advance one run at once), replays the run's next chunk of matching pending
entries through the one guarded transition (:func:`app.domain.deadletter.replay.replay_entries`),
updates the run's ``summary_counts`` and heartbeat in the same transaction, and completes the run
when nothing is left. It runs in every worker process (``app/engine/steps.py``) and can be called
directly (tests, benchmarks) without a worker.

Pacing: a token bucket per run, kept in the run's ``context`` (``tokens``, ``tokensAt``): tokens
accrue at ``ratePerSecond`` up to ``min(ratePerSecond, CHUNK)``, each replayed entry spends one,
and a run without tokens is not due before ``nextAt``. Over any interval of T seconds a run
replays at most ``ratePerSecond × (T + 1)`` entries. An operator may change ``ratePerSecond`` of an
active run (``PATCH /jobengine/deadletter/replays/{id}``): the bucket is capped by the new rate
at the next chunk.

Operators may cancel a run (:mod:`app.domain.deadletter.replay_runs`). A chunk takes its run with
the same guarded statement as a cancel (``replay_runs.claim_active``) before it reads anything of
it, so no chunk starts after a cancel has committed, and a cancel waits for a chunk in progress
and counts it.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.domain.deadletter import replay, replay_runs
from app.domain.operations import ledger
from app.storage.models import ACTIVE_RUN_STATUSES, OperationRun

if TYPE_CHECKING:
    from app.engine.context import EngineContext

log = logging.getLogger("jobgate.replays")

RUN_TYPE = "deadletter.replay_pending"
CHUNK = 5000  # entries per transaction
MAX_ERRORS = 3  # consecutive failed chunks before the run gives up
LOCKED_RETRY = timedelta(milliseconds=200)  # wait when the remaining entries are held by another replay
ERROR_RETRY = timedelta(seconds=1)


def _due(now: datetime):  # type: ignore[no-untyped-def]
    next_at = OperationRun.context["nextAt"].as_string()
    return (
        select(OperationRun)
        .where(OperationRun.type == RUN_TYPE, OperationRun.status.in_(ACTIVE_RUN_STATUSES))
        .where(or_(next_at.is_(None), next_at <= replay.iso(now)))
        .order_by(OperationRun.updated_at, OperationRun.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def _counts(run: OperationRun) -> dict[str, int]:
    counts = replay_runs.run_counts(run.summary_counts)
    del counts["canceled"]  # only a cancel sets it (app/domain/deadletter/replay_runs.py)
    return counts


def _take_tokens(context: dict[str, Any], now: datetime, wanted: int) -> tuple[int, float]:
    """Spend up to ``wanted`` tokens; returns (taken, tokens left)."""
    rate = float(context["ratePerSecond"])
    capacity = max(1.0, min(rate, float(CHUNK)))
    if "tokensAt" in context:
        elapsed = max(0.0, (now - replay.parse_iso(context["tokensAt"])).total_seconds())
        tokens = min(capacity, float(context.get("tokens", 0.0)) + elapsed * rate)
    else:
        tokens = capacity
    taken = max(0, min(wanted, math.floor(tokens)))
    return taken, tokens - taken


def _finish(run: OperationRun, counts: dict[str, int], now: datetime) -> None:
    counts["skipped"] = max(0, counts["matched"] - counts["replayed"] - counts["failed"])
    metrics.count_replays(failed=counts["failed"], skipped=counts["skipped"])
    if counts["failed"] == 0:
        outcome = "succeeded"
    else:
        outcome = "partially_succeeded" if counts["replayed"] > 0 else "failed"
    failures = list(run.failure_summary or [])
    ledger.complete(
        run,
        outcome,
        counts=counts,
        failures=failures,
        message=f"Replayed {counts['replayed']} of {counts['matched']} matching entries; "
        f"skipped {counts['skipped']}, failed {counts['failed']}.",
        now=now,
    )
    run.context = {key: value for key, value in run.context.items() if key not in ("nextAt",)}


async def _advance(session: AsyncSession, run: OperationRun, now: datetime) -> int:
    """One chunk of one run (the run row is locked). Returns the entries replayed."""
    context = dict(run.context)
    counts = _counts(run)
    ledger.start(run, now)
    cutoff = replay.parse_iso(context["cutoff"])
    scope = {"tenant_id": run.tenant_id, "project_id": run.project_id}
    remaining = int(context["maxEntries"]) - counts["replayed"] - counts["failed"]
    taken, tokens = _take_tokens(context, now, min(CHUNK, max(0, remaining)))
    context.update(tokens=tokens, tokensAt=replay.iso(now))
    context.pop("nextAt", None)
    replayed = 0
    if remaining <= 0:
        run.context = context
        _finish(run, counts, now)
        return 0
    if taken == 0:
        rate = float(context["ratePerSecond"])
        context["nextAt"] = replay.iso(now + timedelta(seconds=max(0.001, (1.0 - tokens) / rate)))
        run.context = context
        ledger.heartbeat(run, counts, now)
        return 0
    chunk = replay.pending_before(context["filter"], cutoff=cutoff, columns=(replay.Entry.entry_id,), **scope)
    resumed = "after" in context
    if resumed:  # continue behind the last chunk instead of reading the replayed rows again
        after_at, after_id = context["after"]
        position = tuple_(replay.Entry.dead_lettered_at, replay.Entry.entry_id)
        chunk = chunk.where(position > tuple_(replay.parse_iso(after_at), after_id))
    chunk = chunk.order_by(*replay.PROCESSING_ORDER).limit(taken).with_for_update(skip_locked=True)
    done = await replay.replay_entries(session, selection=chunk, now=now, **scope)
    replayed = len(done)
    metrics.count_replays(replayed=replayed)
    counts["replayed"] += replayed
    context["tokens"] = tokens + (taken - replayed)  # tokens not used are given back
    context["errors"] = 0
    if done:
        last = max(done, key=lambda r: (r.dead_lettered_at, r.entry_id))
        context["after"] = [replay.iso(last.dead_lettered_at), last.entry_id]
    if counts["replayed"] + counts["failed"] >= int(context["maxEntries"]):
        run.context = context
        _finish(run, counts, now)
    elif replayed < taken:
        # The forward pass is through. Done, unless entries were passed over because another
        # transaction held them: then one more pass from the start.
        left = await replay.count_pending(session, context["filter"], cutoff=cutoff, **scope)
        if left == 0:
            run.context = context
            _finish(run, counts, now)
        else:
            context.pop("after", None)
            if not resumed:  # a whole pass found only held entries: give their holder a moment
                context["nextAt"] = replay.iso(now + LOCKED_RETRY)
            run.context = context
            ledger.heartbeat(run, counts, now)
    else:
        run.context = context
        ledger.heartbeat(run, counts, now)
    return replayed


async def _record_error(context: EngineContext, run_id: int, error: Exception) -> None:
    """A failed chunk changed nothing; count it, and give up after MAX_ERRORS in a row."""
    now = datetime.now(UTC)
    async with context.sessions.begin() as session:
        run = await replay_runs.claim_active(session, run_id)
        if run is None:  # completed (or canceled) meanwhile
            return
        run_context = dict(run.context)
        run_context["errors"] = int(run_context.get("errors", 0)) + 1
        run_context["nextAt"] = replay.iso(now + ERROR_RETRY)
        run.context = run_context
        counts = _counts(run)
        if run_context["errors"] >= MAX_ERRORS:
            left = await replay.count_pending(
                session,
                run_context["filter"],
                tenant_id=run.tenant_id,
                project_id=run.project_id,
                cutoff=replay.parse_iso(run_context["cutoff"]),
            )
            counts["failed"] += min(left, int(run_context["maxEntries"]) - counts["replayed"] - counts["failed"])
            run.failure_summary = [
                *(run.failure_summary or []),
                ledger.failure_item(
                    "replay.chunk_failed", f"Replaying a chunk failed ({type(error).__name__})."
                ),
            ]
            _finish(run, counts, now)
        else:
            ledger.heartbeat(run, counts, now)


async def advance_replays(context: EngineContext, *, budget_seconds: float = 1.0) -> int:
    """Advance due replay runs chunk by chunk for about ``budget_seconds``; returns entries replayed.

    Safe in any number of processes at once; returns at once when no run is due."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        now = datetime.now(UTC)
        run_id: int | None = None
        try:
            async with context.sessions.begin() as session:
                due = (await session.execute(_due(now))).scalar_one_or_none()
                if due is None:
                    return total
                run_id = due.id
                # Re-checked under the run's lock: a cancel that committed since the pick (or
                # holds the run now, and commits first) leaves nothing to do; a rate changed
                # meanwhile is read here.
                run = await replay_runs.claim_active(session, run_id)
                if run is not None:
                    total += await _advance(session, run, now)
        except Exception as exc:
            if run_id is None:
                raise
            log.error("replay run %s: chunk failed (%s)", run_id, type(exc).__name__)
            await _record_error(context, run_id, exc)
        if time.monotonic() >= deadline:
            return total

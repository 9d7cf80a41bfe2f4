"""Operator control of a running replay by filter (a ``deadletter.replay_pending`` operation run):
cancel it, change its pace.

Both actions and the runner's chunk step (:mod:`app.engine.replays`) first take the run with
:func:`claim_active`: ONE guarded statement (``UPDATE … WHERE status IN ('queued', 'running')``)
that waits for whoever holds the run (PostgreSQL: its row lock; the embedded SQLite default: the
database's write lock) and passes only while the run is still active. The run is read only after
it, so it is read as the last transaction that held it left it. Hence a cancel and a chunk never
interleave: a chunk that started first is counted in the cancel's counts, and a chunk that comes
after the cancel's commit finds the run completed and replays nothing; of two cancels exactly one
passes.

Cancel follows the lifecycle mapping of a canceled run (spec §7): ``completed`` / ``failed`` with
the failure code ``run.canceled``. Entries replayed before it stay replayed (their jobs run); the
entries it did not reach stay ``pending`` and are counted ``canceled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem, not_found
from app.domain.deadletter.schemas import ReplayRunView
from app.domain.operations import ledger
from app.instants import iso
from app.storage.models import ACTIVE_RUN_STATUSES, OperationRun

RUN_TYPE = "deadletter.replay_pending"
COUNTS = ("matched", "replayed", "skipped", "failed", "canceled")


def run_counts(summary_counts: Mapping[str, Any] | None) -> dict[str, int]:
    """A replay run's counts, every key present (missing ones are 0)."""
    counts = dict.fromkeys(COUNTS, 0)
    counts.update({k: int(v) for k, v in (summary_counts or {}).items() if k in counts})
    return counts


async def claim_active(session: AsyncSession, run_id: int, *conditions: Any) -> OperationRun | None:
    """The run, held for the rest of the transaction, while it is active (else None).

    The guarded statement comes first, so that the read after it cannot be older than the lock
    (SQLite's driver starts a transaction only at the first write)."""
    held = await session.execute(
        update(OperationRun)
        .where(OperationRun.id == run_id, OperationRun.status.in_(ACTIVE_RUN_STATUSES), *conditions)
        .values(updated_at=OperationRun.updated_at)
        .returning(OperationRun.id)
        .execution_options(synchronize_session=False)
    )
    if held.scalar_one_or_none() is None:
        return None
    stmt = select(OperationRun).where(OperationRun.id == run_id).execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one()


def _visible(caller: Caller) -> list[Any]:
    """A replay-by-filter run of the caller's tenant (and project); anything else is 404."""
    where = [OperationRun.tenant_id == caller.tenant_id, OperationRun.type == RUN_TYPE]
    if caller.project is not None:
        where.append(OperationRun.project_id == caller.project)
    return where


async def _active(session: AsyncSession, caller: Caller, run_id: int, verb: str) -> OperationRun:
    run = await claim_active(session, run_id, *_visible(caller))
    if run is not None:
        return run
    found = await session.execute(select(OperationRun.id).where(OperationRun.id == run_id, *_visible(caller)))
    if found.scalar_one_or_none() is None:
        raise not_found("Replay run")
    raise Problem(409, "run_not_active", f"The replay run has finished; only an active run can be {verb}.")


def view(run: OperationRun) -> ReplayRunView:
    counts = run_counts(run.summary_counts)
    context = run.context or {}
    return ReplayRunView(
        operation_run_id=run.id,
        status=run.status,  # type: ignore[arg-type]
        outcome=run.outcome,  # type: ignore[arg-type]
        rate_per_second=int(context.get("ratePerSecond", 0)),
        max_entries=int(context.get("maxEntries", 0)),
        **counts,
    )


async def cancel(session: AsyncSession, caller: Caller, run_id: int) -> ReplayRunView:
    """Stop the run: no further chunk; it ends ``completed``/``failed`` (``run.canceled``)."""
    now = datetime.now(UTC)
    run = await _active(session, caller, run_id, "canceled")
    counts = run_counts(run.summary_counts)
    done = counts["replayed"] + counts["skipped"] + counts["failed"]
    counts["canceled"] = max(0, counts["matched"] - done)
    message = (
        f"Canceled by an operator after replaying {counts['replayed']} of {counts['matched']} matching entries; "
        f"{counts['canceled']} not replayed."
    )
    ledger.complete(
        run,
        "failed",
        counts=counts,
        failures=[*(run.failure_summary or []), ledger.failure_item("run.canceled", message)],
        message=message,
        now=now,
    )
    context = {key: value for key, value in (run.context or {}).items() if key != "nextAt"}
    context.update(canceledBy=caller.subject, canceledAt=iso(now))
    run.context = context
    await session.flush()
    return view(run)


async def change_rate(session: AsyncSession, caller: Caller, run_id: int, rate_per_second: int) -> ReplayRunView:
    """The run's pace from its next chunk on. The token bucket is capped by the new rate when the
    runner next looks (``app/engine/replays.py``); a run waiting for tokens is due at once."""
    run = await _active(session, caller, run_id, "changed")
    context = {key: value for key, value in (run.context or {}).items() if key != "nextAt"}
    context["ratePerSecond"] = rate_per_second
    run.context = context
    await session.flush()
    return view(run)

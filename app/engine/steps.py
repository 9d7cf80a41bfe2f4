"""Background steps that every worker process runs periodically, beside claiming jobs.

Each step does a bounded amount of work per call and is safe to run in several processes at
once (it claims its work with guarded single statements or ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.engine.context import EngineContext


@dataclass(frozen=True)
class Step:
    name: str
    interval_seconds: float
    run: Callable[[EngineContext], Awaitable[None]]


def background_steps() -> list[Step]:
    """The steps of a worker process, imported here so the worker does not depend on each module."""
    from app.engine.outcomes import expire_leases

    steps: list[Step] = [Step("expire_leases", 1.0, expire_leases)]
    from app.engine.replays import advance_replays

    steps.append(Step("replay_pending", 0.5, advance_replays))
    from app.engine.reconciler import reconcile_step

    steps.append(Step("reconcile", 30.0, reconcile_step))
    from app.storage.aggregates import fold_stripes

    async def fold_aggregate_stripes(context: EngineContext) -> None:
        await fold_stripes(context.engine)

    steps.append(Step("fold_aggregate_stripes", 60.0, fold_aggregate_stripes))
    from app.storage.idempotency import purge_expired

    async def purge_idempotency_records(context: EngineContext) -> None:
        await purge_expired(context.sessions)

    steps.append(Step("purge_idempotency_records", 60.0, purge_idempotency_records))
    return steps

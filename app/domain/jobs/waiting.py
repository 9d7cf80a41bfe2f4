"""Why a job waits: one pure function (no I/O, the clock passed in), from the rules the dispatcher
applies (``app/domain/jobs/queue.py`` for what it may claim, ``app/domain/quotas/rules.py`` for
what a quota lets start), so what the API says is what the dispatcher does.

For a ``pending`` or ``scheduled`` job, the first that holds, in this order:

| reason | when |
|---|---|
| ``scheduled`` | ``runAfter`` is in the future |
| ``pack_step_waiting`` | a pack step whose previous step has not succeeded |
| ``source_disabled`` | its source is disabled (a job outside a pack run) |
| ``no_worker_for_job_type`` | no live worker that claims this tenant's jobs serves its job type |
| ``quota_paused`` / ``quota_max_active`` / ``quota_rate`` | its quota holds it (``rules.quota_hold`` at its rank among its type's claimable jobs) |
| ``worker_capacity`` | every live worker serving the type runs as many jobs as its concurrency |

None otherwise: nothing holds the job, a worker claims it at its next poll. A job that is leased,
running, ``cancel_requested`` or terminal is not waiting (None).

:func:`tally` counts the reasons of a job type's waiting jobs from a few counts, by asking the same
function about one job of each kind (the summaries read those counts over the scheduled jobs and
the head of each type's queue: ``app/domain/jobs/why.py``, ``waiting_by_type``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from app.domain.quotas import rules

WaitingReason = Literal[
    "scheduled",
    "pack_step_waiting",
    "source_disabled",
    "no_worker_for_job_type",
    "quota_paused",
    "quota_max_active",
    "quota_rate",
    "worker_capacity",
]
REASONS: tuple[str, ...] = WaitingReason.__args__  # type: ignore[attr-defined]
WAITING_STATUSES = ("pending", "scheduled")
NO_RANK = 0
HEAD = 500
"""How many due waiting jobs of each type the summaries attribute a reason to: the tenant's first
of the type in dispatch order (what holds the next jobs to start). The due jobs past them are
counted (``WaitingCounts.unattributed``), not attributed (``app/domain/jobs/why.py``)."""


@dataclass(frozen=True)
class JobFacts:
    status: str
    run_after: datetime
    in_pack: bool = False
    previous_step_succeeded: bool = True  # True outside a pack run and for a pack's first step
    source_enabled: bool = True
    rank: int = NO_RANK  # among its tenant's claimable jobs of its type, in dispatch order (0-based)


@dataclass(frozen=True)
class TypeFacts:
    """What the dispatcher sees of one (tenant, job type)."""

    quota: rules.Limits | None
    observed: rules.Observed
    workers: int  # live workers that claim this tenant's jobs of this type
    free_slots: int  # their concurrency minus their running jobs, summed


def waiting_reason(job: JobFacts, kind: TypeFacts, now: datetime) -> str | None:
    if job.status not in WAITING_STATUSES:
        return None
    if job.run_after > now:
        return "scheduled"
    if not job.previous_step_succeeded:
        return "pack_step_waiting"
    if not job.source_enabled and not job.in_pack:
        return "source_disabled"
    if kind.workers == 0:
        return "no_worker_for_job_type"
    if kind.quota is not None:
        held = rules.quota_hold(kind.quota, kind.observed, job.rank)
        if held is not None:
            return held
    if kind.free_slots <= 0:
        return "worker_capacity"
    return None


def startable(kind: TypeFacts) -> int | None:
    """How many claimable jobs of the type the quota lets start now (None: no quota)."""
    return None if kind.quota is None else rules.startable(kind.quota, kind.observed)


@dataclass(frozen=True)
class WaitingCounts:
    """Waiting jobs of one job type (``pending`` or ``scheduled``), by what they wait on."""

    waiting: int = 0
    scheduled: int = 0  # run_after in the future
    pack_step_waiting: int = 0  # due pack steps whose previous step has not succeeded
    source_disabled: int = 0  # due jobs outside a pack run whose source is disabled
    claimable: int = 0  # due jobs the dispatcher may claim
    first: int = 0  # of the claimable, those among the first ``startable`` of the tenant's (rank below it)
    unattributed: int = 0  # due, but past the head of the queue whose reasons were read: in none of the above


def tally(counts: WaitingCounts, kind: TypeFacts, now: datetime) -> dict[str | None, int]:
    """The waiting jobs of the type whose reason was read, by reason (None: nothing holds them),
    each group's reason from :func:`waiting_reason`; the ``unattributed`` jobs are in no group.
    Every claimable job at or after rank ``startable`` has the reason of that rank
    (``rules.quota_hold`` depends on the rank only through that bound)."""
    due = now - timedelta(microseconds=1)
    later = now + timedelta(days=1)
    bound = startable(kind)
    groups = (
        (JobFacts("scheduled", later), counts.scheduled),
        (JobFacts("pending", due, in_pack=True, previous_step_succeeded=False), counts.pack_step_waiting),
        (JobFacts("pending", due, source_enabled=False), counts.source_disabled),
        (JobFacts("pending", due, rank=0), counts.first),
        (JobFacts("pending", due, rank=bound or 0), counts.claimable - counts.first),
    )
    reasons: dict[str | None, int] = {}
    for facts, n in groups:
        if n > 0:
            reason = waiting_reason(facts, kind, now)
            reasons[reason] = reasons.get(reason, 0) + n
    other = counts.waiting - counts.unattributed - sum(n for _, n in groups)
    if other > 0:  # cancel already requested: nothing holds them but they will not run either
        reasons[None] = reasons.get(None, 0) + other
    return reasons


def dominant(reasons: dict[str | None, int]) -> str | None:
    """The reason most waiting jobs share (ties: the earlier in :data:`REASONS`); None when none has one."""
    ranked = [(n, -REASONS.index(r), r) for r, n in reasons.items() if r is not None and n > 0]
    return max(ranked)[2] if ranked else None

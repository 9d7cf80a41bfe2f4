"""Quota maths: pure functions, no I/O, shared by the quota summary and the dispatcher.

A quota of a job type allows at most ``maxActive`` jobs leased or running at once, at most
``maxPerHour`` starts in any rolling hour and at most ``burst`` starts in any rolling minute
(``burst ≤ maxPerHour``). A paused quota starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

ELEVATED_UTILISATION = 0.8


@dataclass(frozen=True)
class Limits:
    max_active: int
    max_per_hour: int
    burst: int
    paused: bool


@dataclass(frozen=True)
class Observed:
    active: int
    queued: int
    dispatched_last_hour: int
    dispatched_last_minute: int


def rate_budget(limits: Limits, observed: Observed) -> int:
    """Starts still allowed now by the hourly rate and the per-minute burst."""
    hourly = limits.max_per_hour - observed.dispatched_last_hour
    minutely = limits.burst - observed.dispatched_last_minute
    return max(0, min(hourly, minutely))


def startable(limits: Limits, observed: Observed) -> int:
    """How many queued jobs may start now."""
    if limits.paused:
        return 0
    free_slots = max(0, limits.max_active - observed.active)
    return min(observed.queued, free_slots, rate_budget(limits, observed))


def quota_hold(limits: Limits, observed: Observed, rank: int) -> str | None:
    """Why the quota holds back the claimable job at ``rank`` (0-based, in dispatch order among its
    type's claimable jobs), or None when it may start now: the dispatcher starts the first
    :func:`startable` of them. ``quota_paused``; else ``quota_max_active`` when the free slots
    bind (no more than the rate budget); else ``quota_rate``."""
    if rank < startable(limits, observed):
        return None
    if limits.paused:
        return "quota_paused"
    if max(0, limits.max_active - observed.active) <= rate_budget(limits, observed):
        return "quota_max_active"
    return "quota_rate"


def throttled(limits: Limits, observed: Observed) -> int:
    """Queued jobs held back by the quota (paused, no free slot or no rate budget)."""
    return observed.queued - startable(limits, observed)


def utilisation(limits: Limits, observed: Observed) -> float:
    """Share of the concurrency limit in use (may exceed 1 after a limit was lowered)."""
    return round(observed.active / limits.max_active, 4) if limits.max_active > 0 else 0.0


def backpressure(limits: Limits, observed: Observed) -> str:
    """``paused`` when paused; ``saturated`` when every slot is taken or waiting jobs can start
    none; ``elevated`` at 80 % utilisation, when some waiting jobs are held back, or while any due
    job of the type waits (whatever holds it: a worker, a pack step, its source); else ``none``."""
    if limits.paused:
        return "paused"
    held = throttled(limits, observed)
    if observed.active >= limits.max_active or (observed.queued > 0 and held == observed.queued):
        return "saturated"
    if utilisation(limits, observed) >= ELEVATED_UTILISATION or held > 0 or observed.queued > 0:
        return "elevated"
    return "none"

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


def throttled(limits: Limits, observed: Observed) -> int:
    """Queued jobs held back by the quota (paused, no free slot or no rate budget)."""
    return observed.queued - startable(limits, observed)


def utilisation(limits: Limits, observed: Observed) -> float:
    """Share of the concurrency limit in use (may exceed 1 after a limit was lowered)."""
    return round(observed.active / limits.max_active, 4) if limits.max_active > 0 else 0.0


def backpressure(limits: Limits, observed: Observed) -> str:
    """``paused`` when paused; ``saturated`` when every slot is taken or waiting jobs can start
    none; ``elevated`` at 80 % utilisation or when some waiting jobs are held back; else ``none``."""
    if limits.paused:
        return "paused"
    held = throttled(limits, observed)
    if observed.active >= limits.max_active or (observed.queued > 0 and held == observed.queued):
        return "saturated"
    if utilisation(limits, observed) >= ELEVATED_UTILISATION or held > 0:
        return "elevated"
    return "none"

"""The quota maths (app/domain/quotas/rules.py): worked examples and properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain.quotas.rules import (
    ELEVATED_UTILISATION,
    Limits,
    Observed,
    backpressure,
    quota_hold,
    rate_budget,
    startable,
    throttled,
    utilisation,
)

LEVELS = ("none", "elevated", "saturated", "paused")


def limits(max_active: int = 10, max_per_hour: int = 100, burst: int = 10, paused: bool = False) -> Limits:
    return Limits(max_active, max_per_hour, burst, paused)


def seen(active: int = 0, queued: int = 0, last_hour: int = 0, last_minute: int = 0) -> Observed:
    return Observed(active, queued, last_hour, last_minute)


@pytest.mark.parametrize(
    ("quota", "observed", "expected"),
    [
        # (startable, throttled, utilisation, backpressure)
        (limits(), seen(), (0, 0, 0.0, "none")),
        (limits(), seen(active=1, queued=2), (2, 0, 0.1, "elevated")),  # due jobs wait: never none
        (limits(paused=True), seen(active=1, queued=3), (0, 3, 0.1, "paused")),
        (limits(paused=True), seen(), (0, 0, 0.0, "paused")),
        (limits(max_active=2), seen(active=2, queued=1), (0, 1, 1.0, "saturated")),
        (limits(max_active=2), seen(active=2), (0, 0, 1.0, "saturated")),
        (limits(max_active=2), seen(active=3, queued=3), (0, 3, 1.5, "saturated")),  # the limit was lowered
        (limits(max_active=5), seen(active=4), (0, 0, 0.8, "elevated")),
        (limits(max_active=5), seen(active=3, queued=3), (2, 1, 0.6, "elevated")),
        (limits(max_per_hour=4, burst=4), seen(queued=2, last_hour=4), (0, 2, 0.0, "saturated")),
        (
            limits(max_per_hour=10, burst=3),
            seen(queued=4, last_hour=1, last_minute=1),
            (2, 2, 0.0, "elevated"),
        ),
        (limits(max_per_hour=10, burst=3), seen(queued=2, last_hour=1, last_minute=1), (2, 0, 0.0, "elevated")),
        (limits(max_per_hour=10, burst=3), seen(active=1, last_hour=1, last_minute=1), (0, 0, 0.1, "none")),
        (
            limits(max_per_hour=5, burst=5),
            seen(queued=9, last_hour=7),
            (0, 9, 0.0, "saturated"),
        ),  # over budget
    ],
)
def test_worked_examples(quota, observed, expected):
    assert (
        startable(quota, observed),
        throttled(quota, observed),
        utilisation(quota, observed),
        backpressure(quota, observed),
    ) == expected


def test_rate_budget_is_the_smaller_of_the_hourly_and_the_minute_budget_never_negative():
    assert rate_budget(limits(max_per_hour=100, burst=10), seen(last_hour=95, last_minute=2)) == 5
    assert rate_budget(limits(max_per_hour=100, burst=10), seen(last_hour=20, last_minute=7)) == 3
    assert rate_budget(limits(max_per_hour=100, burst=10), seen(last_hour=120, last_minute=20)) == 0


def test_utilisation_of_a_zero_limit_is_zero_not_a_division_error():
    assert utilisation(limits(max_active=0), seen(active=3)) == 0.0


# -- properties ---------------------------------------------------------------------------------


@st.composite
def quotas(draw: st.DrawFn) -> Limits:
    max_per_hour = draw(st.integers(1, 500))
    return Limits(
        max_active=draw(st.integers(1, 50)),
        max_per_hour=max_per_hour,
        burst=draw(st.integers(1, max_per_hour)),
        paused=draw(st.booleans()),
    )


@st.composite
def loads(draw: st.DrawFn) -> Observed:
    # Limits may have been lowered, so observed values may exceed them; a start within the last
    # minute is also within the last hour.
    last_hour = draw(st.integers(0, 600))
    return Observed(
        active=draw(st.integers(0, 80)),
        queued=draw(st.integers(0, 300)),
        dispatched_last_hour=last_hour,
        dispatched_last_minute=draw(st.integers(0, last_hour)),
    )


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_startable_never_exceeds_free_slots_rate_budget_or_queued(quota, load):
    n = startable(quota, load)
    assert 0 <= n <= load.queued
    assert load.active + n <= max(quota.max_active, load.active)
    assert n <= max(0, quota.max_per_hour - load.dispatched_last_hour)
    assert n <= max(0, quota.burst - load.dispatched_last_minute)


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_startable_is_as_large_as_the_limits_allow(quota, load):
    """Holding a job back needs a reason: paused, no free slot, or no rate budget left."""
    n = startable(quota, load)
    if n < load.queued:
        assert (
            quota.paused
            or load.active + n >= quota.max_active
            or load.dispatched_last_hour + n >= quota.max_per_hour
            or load.dispatched_last_minute + n >= quota.burst
        )


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_throttled_and_startable_add_up_to_queued(quota, load):
    assert throttled(quota, load) + startable(quota, load) == load.queued
    assert throttled(quota, load) >= 0


@settings(max_examples=200, deadline=None)
@given(quotas(), loads())
def test_paused_quota_starts_nothing_and_holds_everything(quota, load):
    paused = Limits(quota.max_active, quota.max_per_hour, quota.burst, True)
    assert startable(paused, load) == 0
    assert throttled(paused, load) == load.queued
    assert backpressure(paused, load) == "paused"


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_starting_the_startable_jobs_leaves_nothing_startable(quota, load):
    """The dispatcher's next round sees its own starts: it never exceeds a limit in two steps."""
    n = startable(quota, load)
    after = Observed(
        load.active + n, load.queued - n, load.dispatched_last_hour + n, load.dispatched_last_minute + n
    )
    assert startable(quota, after) == 0


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_backpressure_level_follows_its_documented_rule(quota, load):
    level = backpressure(quota, load)
    assert level in LEVELS
    held = throttled(quota, load)
    if quota.paused:
        assert level == "paused"
    elif load.active >= quota.max_active or (load.queued > 0 and startable(quota, load) == 0):
        assert level == "saturated"
    elif utilisation(quota, load) >= ELEVATED_UTILISATION or held > 0 or load.queued > 0:
        assert level == "elevated"
    else:
        assert level == "none"
        assert held == 0 and load.active < quota.max_active and load.queued == 0


@settings(max_examples=300, deadline=None)
@given(quotas(), loads())
def test_backpressure_is_never_none_while_due_jobs_wait(quota, load):
    if load.queued > 0:
        assert backpressure(quota, load) != "none"


@settings(max_examples=300, deadline=None)
@given(quotas(), loads(), st.integers(0, 400))
def test_quota_hold_lets_exactly_the_first_startable_ranks_start_and_names_the_binding_limit(quota, load, rank):
    """A rank is a due job's place among the queued ones, so it is below ``queued``."""
    assume(load.queued > 0)
    rank %= load.queued
    held = quota_hold(quota, load, rank)
    n = startable(quota, load)
    assert (held is None) == (rank < n)
    if held == "quota_max_active":
        assert not quota.paused and load.active + n >= quota.max_active
    elif held == "quota_rate":
        assert not quota.paused and rate_budget(quota, load) == n < max(0, quota.max_active - load.active)
    elif held is not None:
        assert held == "quota_paused" and quota.paused


@settings(max_examples=300, deadline=None)
@given(quotas(), loads(), st.integers(1, 20), st.integers(0, 20))
def test_more_waiting_or_active_jobs_never_lower_the_backpressure(quota, load, more_queued, more_active):
    heavier = Observed(
        load.active + more_active,
        load.queued + more_queued,
        load.dispatched_last_hour,
        load.dispatched_last_minute,
    )
    assert LEVELS.index(backpressure(quota, heavier)) >= LEVELS.index(backpressure(quota, load))


@settings(max_examples=200, deadline=None)
@given(quotas(), loads())
def test_utilisation_is_the_share_of_slots_in_use(quota, load):
    assert utilisation(quota, load) == pytest.approx(load.active / quota.max_active, abs=1e-4)

"""Retry delays: exponential in the attempt, capped, with jitter (a pure function)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from app.engine.outcomes import backoff_seconds


@given(attempt=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_delay_is_between_half_and_all_of_the_capped_exponential_step(attempt, seed):
    step = min(300.0, 2.0 * 2 ** (attempt - 1))
    delay = backoff_seconds(attempt, 2.0, 300.0, random.Random(seed))
    assert step / 2 <= delay <= step


def test_delays_grow_with_the_attempt_until_the_cap():
    rng = random.Random(7)
    lows = [min(backoff_seconds(a, 1.0, 60.0, rng) for _ in range(50)) for a in range(1, 7)]  # steps 1..32 s
    assert lows == sorted(lows) and lows[0] < 1.0
    assert max(backoff_seconds(30, 1.0, 60.0, rng) for _ in range(50)) <= 60.0


def test_jitter_spreads_workers_that_failed_together():
    rng = random.Random(1)
    assert len({round(backoff_seconds(3, 2.0, 300.0, rng), 6) for _ in range(20)}) == 20

"""Per-process access to the shared rate-limit buckets (the GCRA buckets of :mod:`app.storage.shared`)."""

from __future__ import annotations

import time

from app.storage.shared import SharedStore, Verdict

ALLOWED = Verdict(True)


class RateShares:
    """A process's way into the shared rate-limit buckets: where a budget is large, requests are
    taken from the shared bucket in small reservations that this process then spends locally.

    One shared-bucket call per request would cost every request a Redis round trip. A tenant
    whose budget admits at least 40 requests a second is instead reserved :meth:`batch` requests
    at once (5 % of a second's budget, at most 100), atomically in the shared bucket like any
    other take, and those are spent here within :data:`HOLD_SECONDS`; what is left then lapses.
    Nothing is admitted that was not taken from the shared budget: in any window a process admits
    at most one reservation more than the bucket itself would have (what it held when the window
    began), and a lapsed remainder admits fewer. Near the limit, when a reservation is refused,
    requests are taken one by one, so the refusal and its ``Retry-After`` are the bucket's own.
    Smaller budgets (the default 600/minute) take every request from the shared bucket."""

    HOLD_SECONDS = 1.0
    SHARE = 0.05
    MAX_BATCH = 100

    def __init__(self, store: SharedStore, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self._clock = clock
        self._held: dict[str, list[float]] = {}  # key -> [requests left, lapses at]
        self._near: dict[str, float] = {}  # key -> until when requests are taken one by one

    @classmethod
    def batch(cls, limit: int, period_seconds: int) -> int:
        return max(1, min(cls.MAX_BATCH, int(limit / period_seconds * cls.SHARE)))

    async def take(self, key: str, limit: int, period_seconds: int) -> Verdict:
        held = self._held.get(key)
        if held is not None and held[0] >= 1 and held[1] > self._clock():
            held[0] -= 1
            return ALLOWED
        batch = self.batch(limit, period_seconds)
        if batch > 1 and self._near.get(key, 0.0) <= self._clock():
            verdict = await self.store.take(key, limit, period_seconds, batch)
            if verdict.allowed:
                self._keep(key, batch - 1)
                return verdict
            self._near[key] = self._clock() + self.HOLD_SECONDS  # one by one for a while
        return await self.store.take(key, limit, period_seconds)

    def _keep(self, key: str, requests: int) -> None:
        now = self._clock()
        held = self._held.get(key)
        if held is not None and held[1] > now:  # reserved concurrently: added, lapsing with the first
            held[0] += requests
            return
        if len(self._held) > 10_000:
            self._held = {k: v for k, v in self._held.items() if v[1] > now}
            self._near = {k: v for k, v in self._near.items() if v > now}
        self._held[key] = [requests, now + self.HOLD_SECONDS]

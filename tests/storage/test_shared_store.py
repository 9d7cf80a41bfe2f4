"""The shared store: one rate-limit rule in Redis and in memory, and the pause after a Redis failure."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.storage.rates import RateShares
from app.storage.shared import MemoryStore, RedisStore, StoreUnavailable


@pytest.fixture
async def redis_store(services):
    store = RedisStore(services.redis_url, services.redis_prefix)
    yield store
    await store.close()


async def test_redis_bucket_allows_the_budget_at_once_then_refuses_with_a_retry_time(redis_store):
    key = f"rl:{uuid.uuid4().hex}"
    verdicts = [await redis_store.take(key, 5, 60) for _ in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert 1 <= verdicts[-1].retry_after_seconds <= 12  # one request refills every 12 s


async def test_memory_bucket_follows_the_same_rule():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    verdicts = [await store.take("k", 5, 60) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    now[0] += 12.0
    assert (await store.take("k", 5, 60)).allowed


async def test_add_once_is_true_only_the_first_time(redis_store):
    key = f"jti:{uuid.uuid4().hex}"
    assert await redis_store.add_once(key, 30) is True
    assert await redis_store.add_once(key, 30) is False


async def test_after_a_redis_failure_calls_fail_at_once_until_the_pause_is_over():
    now = [0.0]
    store = RedisStore("redis://127.0.0.1:1/0", "x:", clock=lambda: now[0], pause=2.0)
    try:
        with pytest.raises(RedisConnectionError) as first:
            await store.take("k", 1, 1)
        assert not isinstance(first.value, StoreUnavailable)  # Redis itself was asked
        with pytest.raises(StoreUnavailable):
            await store.add_once("k", 1)  # within the pause: not asked
        now[0] = 2.5
        with pytest.raises(RedisConnectionError) as again:
            await store.take("k", 1, 1)
        assert not isinstance(again.value, StoreUnavailable)  # after the pause Redis is asked again
    finally:
        await store.close()


async def test_redis_bucket_takes_several_requests_together_or_none(redis_store):
    key = f"rl:{uuid.uuid4().hex}"
    assert (await redis_store.take(key, 5, 60, 3)).allowed
    refused = await redis_store.take(key, 5, 60, 3)  # only two are left
    assert not refused.allowed and refused.retry_after_seconds >= 1
    assert [(await redis_store.take(key, 5, 60)).allowed for _ in range(3)] == [True, True, False]


class CountingStore(MemoryStore):
    def __init__(self, clock) -> None:  # type: ignore[no-untyped-def]
        super().__init__(clock)
        self.calls: list[int] = []

    async def take(self, key: str, limit: int, period_seconds: int, count: int = 1):  # type: ignore[no-untyped-def]
        self.calls.append(count)
        return await super().take(key, limit, period_seconds, count)


async def test_a_large_budget_is_taken_in_reservations_spent_locally():
    now = [1000.0]
    store = CountingStore(clock=lambda: now[0])
    shares = RateShares(store, clock=lambda: now[0])
    assert RateShares.batch(2000, 1) == 100
    verdicts = [await shares.take("k", 2000, 1) for _ in range(250)]
    assert all(v.allowed for v in verdicts)
    assert store.calls == [100, 100, 100]  # 300 taken from the shared bucket for 250 requests
    now[0] += RateShares.HOLD_SECONDS  # the 50 left lapse
    await shares.take("k", 2000, 1)
    assert store.calls == [100, 100, 100, 100]


async def test_a_small_budget_takes_every_request_from_the_shared_bucket():
    store = CountingStore(clock=lambda: 1000.0)
    shares = RateShares(store, clock=lambda: 1000.0)
    verdicts = [await shares.take("k", 600, 60) for _ in range(601)]
    assert store.calls == [1] * 601
    assert [v.allowed for v in verdicts] == [True] * 600 + [False]


async def test_processes_sharing_a_budget_never_admit_more_than_it_near_the_limit():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])  # one shared bucket, two processes
    first, second = RateShares(store, clock=lambda: now[0]), RateShares(store, clock=lambda: now[0])
    admitted = 0
    refusals = []
    for i in range(3000):
        verdict = await (first if i % 3 else second).take("k", 2000, 1)
        admitted += verdict.allowed
        if not verdict.allowed:
            refusals.append(verdict)
    # The bucket admits 2000 at once; reservations only lose requests (at most one batch per
    # process left unspent), they never add any.
    assert 2000 - 2 * RateShares.batch(2000, 1) <= admitted <= 2000
    assert refusals and all(r.retry_after_seconds >= 1 for r in refusals)


async def test_concurrent_reads_share_one_round_trip_and_each_gets_its_own_counter(redis_store, monkeypatch):
    keys = [f"epoch:{uuid.uuid4().hex}" for _ in range(3)]
    for times, key in enumerate(keys):
        for _ in range(times):
            await redis_store.bump(key)
    mget = redis_store.redis.mget
    sent: list[list[str]] = []

    async def counted(names):  # type: ignore[no-untyped-def]
        sent.append(list(names))
        return await mget(names)

    monkeypatch.setattr(redis_store.redis, "mget", counted)
    values = await asyncio.gather(*(redis_store.read(key) for key in [*keys, *keys, "never-bumped"]))
    assert values == [0, 1, 2, 0, 1, 2, 0]
    assert len(sent) == 1 and len(sent[0]) == 4  # each key asked for once


async def test_a_read_that_begins_after_a_write_sees_it_even_while_an_earlier_read_is_in_flight(
    redis_store, services, monkeypatch
):
    """A read never joins a round trip sent before it began: the write acknowledged in between
    is seen (what the revalidation guarantee rests on)."""
    key = f"epoch:{uuid.uuid4().hex}"
    writer = RedisStore(services.redis_url, services.redis_prefix)
    mget = redis_store.redis.mget
    in_flight, release = asyncio.Event(), asyncio.Event()

    async def held(names):  # type: ignore[no-untyped-def]
        values = await mget(names)  # answered by Redis before the write below
        in_flight.set()
        await release.wait()
        return values

    monkeypatch.setattr(redis_store.redis, "mget", held)
    try:
        earlier = asyncio.create_task(redis_store.read(key))
        await in_flight.wait()
        assert await writer.bump(key) == 1
        later = asyncio.create_task(redis_store.read(key))
        await asyncio.sleep(0)
        release.set()
        assert await earlier == 0
        assert await later == 1
    finally:
        await writer.close()


async def test_reads_waiting_together_all_fail_when_redis_does():
    store = RedisStore("redis://127.0.0.1:1/0", "x:")
    try:
        results = await asyncio.gather(store.read("a"), store.read("b"), return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results)
        with pytest.raises(StoreUnavailable):
            await store.read("a")  # within the pause: not asked
    finally:
        await store.close()


async def test_a_value_that_is_no_number_fails_the_read_with_an_error_not_a_cancel(redis_store):
    """The revalidation catches ordinary errors and asks the database; a cancel would end the request."""
    key = f"epoch:{uuid.uuid4().hex}"
    await redis_store.redis.set(redis_store.prefix + key, "not-a-number")
    with pytest.raises(ValueError):
        await asyncio.wait_for(redis_store.read(key), 5)

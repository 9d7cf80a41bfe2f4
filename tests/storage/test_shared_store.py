"""The shared store: one rate-limit rule in Redis and in memory, and the pause after a Redis failure."""

from __future__ import annotations

import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

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

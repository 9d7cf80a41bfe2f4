"""State shared by every gateway process: rate-limit buckets, single-use markers, counters and leases.

Redis in production (atomic Lua, shared across processes and machines); an in-process store
for the embedded single-process default. Both implement the same two operations.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

# GCRA: one bucket per key; ``period`` ms lets ``limit`` requests through at once, then one per
# ``period / limit`` ms. ARGV[3] requests are taken together, or none. Returns {allowed,
# retry_after_ms}. TIME makes every process use one clock.
_GCRA = """
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission * count
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1)
return {1, 0}
"""

# A bounded set of leases: drop the expired, then add ``member`` (or renew it) unless ``limit``
# others hold one. Returns 1 when held. Scores are expiry instants in Redis' own milliseconds.
_LEASE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_ms: int = 0

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / 1000))


class SharedStore(Protocol):
    async def take(self, key: str, limit: int, period_seconds: int, count: int = 1) -> Verdict:
        """Take ``count`` requests from the bucket ``key``, all or none."""

    async def add_once(self, key: str, ttl_seconds: int) -> bool:
        """Mark ``key`` as used; False if it already was (within its TTL)."""

    async def bump(self, key: str) -> int:
        """Advance the counter ``key`` by one; its new value."""

    async def read(self, key: str) -> int:
        """The counter ``key`` (0 when never bumped), as the store holds it at some instant after
        this call began."""

    async def lease(self, key: str, member: str, limit: int, ttl_seconds: int) -> bool:
        """Hold (or renew) ``member``'s lease in the set ``key`` for ``ttl_seconds``, unless
        ``limit`` other unexpired leases are held; False then."""

    async def release(self, key: str, member: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# A Redis call waits at most this long; after a failure, calls fail at once for the pause.
REDIS_TIMEOUT_SECONDS = 0.5
PAUSE_AFTER_FAILURE_SECONDS = 2.0


class StoreUnavailable(ConnectionError):
    """Redis failed recently; calls fail at once until the pause is over."""


class RedisStore:
    """After a failure, calls fail immediately for :attr:`pause` seconds instead of each waiting for
    the timeout again, so a Redis outage costs requests at most one timeout per pause.

    Concurrent :meth:`read` calls share round trips: a read waits for the next ``MGET`` of this
    process, which is sent once the one in flight (if any) has answered, and carries every key
    asked for meanwhile. Each read is still answered by a command sent after it began, so it sees
    every write Redis acknowledged before then; under load one round trip answers many reads."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        url: str,
        prefix: str,
        *,
        timeout: float = REDIS_TIMEOUT_SECONDS,
        pause: float = PAUSE_AFTER_FAILURE_SECONDS,
        clock=time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.pause = pause
        self._clock = clock
        self._open_until = 0.0
        self.redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._gcra = self.redis.register_script(_GCRA)
        self._lease = self.redis.register_script(_LEASE)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the reads below belong to
        self._waiting: list[tuple[str, asyncio.Future[int]]] = []  # reads for the next MGET
        self._reader: asyncio.Task[None] | None = None  # sends the MGETs while reads wait

    async def _call(self, awaitable: Any) -> Any:
        if self._clock() < self._open_until:
            awaitable.close()
            raise StoreUnavailable("redis paused after a recent failure")
        try:
            return await awaitable
        except Exception:
            self._open_until = self._clock() + self.pause
            raise

    async def take(self, key: str, limit: int, period_seconds: int, count: int = 1) -> Verdict:
        period_ms = period_seconds * 1000
        allowed, retry = await self._call(
            self._gcra(keys=[self.prefix + key], args=[period_ms / limit, period_ms, count])
        )
        return Verdict(bool(allowed), int(retry))

    async def add_once(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self._call(self.redis.set(self.prefix + key, b"1", nx=True, ex=ttl_seconds)))

    async def bump(self, key: str) -> int:
        return int(await self._call(self.redis.incr(self.prefix + key)))

    async def read(self, key: str) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a store used from a new event loop forgets the old one's reads
            self._loop, self._waiting, self._reader = loop, [], None
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiting.append((key, waiter))
        if self._reader is None:
            self._reader = loop.create_task(self._read_waiting())
        return await waiter

    async def _read_waiting(self) -> None:
        """Answer the waiting reads, one MGET per batch, until none wait."""
        batch: list[tuple[str, asyncio.Future[int]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                keys = list(dict.fromkeys(key for key, _ in batch))
                try:
                    values = await self._call(self.redis.mget([self.prefix + key for key in keys]))
                    found = {key: int(value or 0) for key, value in zip(keys, values)}
                except Exception as exc:  # noqa: BLE001 - each read fails as its own call would
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for key, waiter in batch:
                    if not waiter.done():
                        waiter.set_result(found[key])
                batch = []
        finally:
            for _, waiter in (*batch, *self._waiting):  # only when cancelled (the loop is ending)
                waiter.cancel()
            self._waiting, self._reader = [], None

    async def lease(self, key: str, member: str, limit: int, ttl_seconds: int) -> bool:
        return bool(await self._call(self._lease(keys=[self.prefix + key], args=[member, limit, ttl_seconds * 1000])))

    async def release(self, key: str, member: str) -> None:
        await self._call(self.redis.zrem(self.prefix + key, member))

    async def ping(self) -> None:
        # Readiness always asks Redis itself, so it notices recovery at once.
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    """Single-process only: the embedded default and nothing else."""

    def __init__(self, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._used: dict[str, float] = {}
        self._counters: dict[str, int] = {}
        self._leases: dict[str, dict[str, float]] = {}

    async def take(self, key: str, limit: int, period_seconds: int, count: int = 1) -> Verdict:
        now = self._clock() * 1000
        period_ms = period_seconds * 1000
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + period_ms / limit * count
        allow_at = new_tat - period_ms
        if allow_at > now:
            return Verdict(False, int(allow_at - now))
        self._tat[key] = new_tat
        return Verdict(True)

    async def add_once(self, key: str, ttl_seconds: int) -> bool:
        now = self._clock()
        if len(self._used) > 100_000:
            self._used = {k: v for k, v in self._used.items() if v > now}
        if self._used.get(key, 0) > now:
            return False
        self._used[key] = now + ttl_seconds
        return True

    async def bump(self, key: str) -> int:
        self._counters[key] = self._counters.get(key, 0) + 1
        return self._counters[key]

    async def read(self, key: str) -> int:
        return self._counters.get(key, 0)

    async def lease(self, key: str, member: str, limit: int, ttl_seconds: int) -> bool:
        now = self._clock()
        held = {m: until for m, until in self._leases.get(key, {}).items() if until > now}
        if member not in held and len(held) >= limit:
            self._leases[key] = held
            return False
        held[member] = now + ttl_seconds
        self._leases[key] = held
        return True

    async def release(self, key: str, member: str) -> None:
        self._leases.get(key, {}).pop(member, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def create_store(redis_url: str | None, prefix: str) -> SharedStore:
    return RedisStore(redis_url, prefix) if redis_url else MemoryStore()

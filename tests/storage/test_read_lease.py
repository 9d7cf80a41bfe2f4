"""The pool keeps the driver reads' connections between reads (``LeasingPool``, app/storage/reads.py).

A read takes the connection the last read kept, or the one an ending read hands over, without a
checkout of the pool; whoever else asks the pool gets a kept connection at once, and goes before
waiting reads; a connection unused for a while, or one the pool would no longer hand out, goes
back to the pool. Each test has a pool of its own, of one to three connections, so that every
connection it sees is one of these.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.http.problems import to_problem
from app.storage.reads import LEASE_IDLE_SECONDS, LeasingPool
from tests.storage.test_reads import BACKEND_PID, driver_rows, own_runtime

SLOW_PID = select(func.pg_backend_pid(), func.pg_sleep(0.02))


def checkouts(runtime: Any) -> list[int]:
    """A list that grows by one at every checkout of the runtime's pool."""
    seen: list[int] = []
    event.listen(runtime.engine.sync_engine, "checkout", lambda *_: seen.append(1))
    return seen


async def pid(runtime: Any, stmt: Any = BACKEND_PID) -> int:
    return (await driver_rows(runtime, stmt))[0][0]


async def session_pid(runtime: Any) -> int:
    async with runtime.sessions() as session:
        return (await session.execute(BACKEND_PID)).scalar_one()


async def closed(services: Any, backend: int) -> None:
    """Wait (at most 5 s) until PostgreSQL no longer has the connection of ``backend``."""
    admin = await asyncpg.connect(services.pg_url)
    try:
        deadline = time.monotonic() + 5
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend):
            assert time.monotonic() < deadline, f"the connection of backend {backend} is still open"
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def pool_of(runtime: Any) -> LeasingPool:
    pool = runtime.engine.sync_engine.pool
    assert isinstance(pool, LeasingPool)
    return pool


async def test_the_next_read_takes_the_connection_the_last_read_kept(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="3") as runtime:
        first = await pid(runtime)
        seen = checkouts(runtime)
        assert [await pid(runtime) for _ in range(5)] == [first] * 5
        assert seen == []  # no checkout of the pool: the kept connection was taken back
        assert pool_of(runtime).checkedout() == 1


@pytest.mark.parametrize("size", ["1", "3"])
async def test_a_session_gets_the_connection_the_reads_keep_at_once(gateway_env, size):
    """With a pool at its full size as with one that could open another connection."""
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE=size) as runtime:
        kept = await pid(runtime)
        started = time.monotonic()
        assert await session_pid(runtime) == kept  # the pool's one connection, handed over
        assert time.monotonic() - started < 1.0  # not after the pool's timeout (5 s)
        assert await pid(runtime) == kept


async def test_reads_waiting_for_the_pool_are_handed_the_connections_of_ending_reads(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        seen = checkouts(runtime)
        pids = await asyncio.gather(*(pid(runtime, SLOW_PID) for _ in range(40)))
        assert len(pids) == 40 and len(set(pids)) <= 2
        assert len(seen) <= 4  # forty reads, a handful of checkouts: the rest were handed over
        assert pool_of(runtime).checkedout() <= 2


async def test_a_session_waiting_for_the_pool_goes_before_waiting_reads(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="1") as runtime:
        done: list[str] = []

        async def reads() -> None:
            for _ in range(15):
                await pid(runtime, SLOW_PID)
                done.append("read")

        readers = [asyncio.create_task(reads()) for _ in range(4)]
        await asyncio.sleep(0.1)  # the reads hold and hand over the one connection
        await session_pid(runtime)
        done.append("session")
        await asyncio.gather(*readers)
        # 60 reads of 20 ms through one connection take over a second; the session waited
        # for one read to end, not for all reads waiting before it.
        assert done.index("session") < 20


async def test_a_read_waiting_longer_than_the_pool_timeout_is_a_503_and_the_next_read_works(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="1") as runtime:
        pool_of(runtime)._timeout = 0.3
        async with runtime.sessions() as holder:
            held = (await holder.execute(BACKEND_PID)).scalar_one()  # the session holds the connection
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError) as waited:
                await pid(runtime)
            assert 0.25 < time.monotonic() - started < 2.0
            assert to_problem(waited.value).status == 503
        assert await pid(runtime) == held


async def test_a_read_cancelled_while_waiting_leaves_no_connection_behind(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="1") as runtime:
        pool = pool_of(runtime)
        async with runtime.sessions() as holder:
            held = (await holder.execute(BACKEND_PID)).scalar_one()
            waiting = asyncio.create_task(pid(runtime))
            await asyncio.sleep(0.05)
            assert len(pool._readers) == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert await pid(runtime) == held
        assert pool.checkedout() == 1  # the read's, kept


async def test_a_connection_handed_to_a_read_cancelled_meanwhile_is_kept_for_the_next(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        pool = pool_of(runtime)
        one, other = await runtime.engine.raw_connection(), await runtime.engine.raw_connection()
        waiting = asyncio.create_task(pool.lease())
        await asyncio.sleep(0.05)
        assert len(pool._readers) == 1
        assert pool.release(one)  # handed to the waiting read ...
        waiting.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert [fairy for fairy, _ in pool._kept] == [one]
        assert pool.release(other)
        assert pool.checkedout() == 2 and len(pool._kept) == 2


async def test_connections_the_reads_keep_go_back_to_the_pool_once_unused(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="3") as runtime:
        pool = pool_of(runtime)
        await asyncio.gather(*(pid(runtime, SLOW_PID) for _ in range(3)))
        assert pool.checkedout() == 3
        deadline = time.monotonic() + 4 * LEASE_IDLE_SECONDS
        while pool.checkedout() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert pool.checkedout() == 0 and pool.checkedin() == 3


async def test_a_disconnect_retires_every_kept_connection_opened_before_it(gateway_env, services):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        old = set(await asyncio.gather(pid(runtime, SLOW_PID), pid(runtime, SLOW_PID)))
        assert len(old) == 2 and len(pool_of(runtime)._kept) == 2
        admin = await asyncpg.connect(services.pg_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", max(old))
        finally:
            await admin.close()
        # Two reads at once take both kept connections: the terminated one fails its read.
        results = await asyncio.gather(pid(runtime, SLOW_PID), pid(runtime, SLOW_PID), return_exceptions=True)
        failed = [result for result in results if isinstance(result, BaseException)]
        assert len(failed) == 1 and to_problem(failed[0]).status == 503, results
        new = set(await asyncio.gather(pid(runtime, SLOW_PID), pid(runtime, SLOW_PID)))
        assert new.isdisjoint(old)  # the live one, opened before the disconnect, was not reused


async def test_stopping_the_runtime_closes_the_connections_the_reads_keep(gateway_env, services):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        kept = await pid(runtime)
        pool = pool_of(runtime)
    assert pool.checkedout() == 0 and pool._kept == []
    await closed(services, kept)


async def test_reads_and_sessions_at_once_share_a_small_pool_without_a_failure(gateway_env):
    """A hundred and sixty reads and forty session queries at once on three connections: every one
    answers, no connection serves two at a time (asyncpg would refuse it), and afterwards every
    connection goes back to the pool."""
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="3") as runtime:
        pool = pool_of(runtime)
        quick = select(func.pg_backend_pid(), func.pg_sleep(0.001))
        pids = await asyncio.gather(*(session_pid(runtime) if i % 5 == 0 else pid(runtime, quick) for i in range(200)))
        assert len(pids) == 200 and len(set(pids)) <= 3
        deadline = time.monotonic() + 4 * LEASE_IDLE_SECONDS
        while pool.checkedout() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert pool.checkedout() == 0 and pool.checkedin() == 3
        assert all(waiting.done() for waiting in pool._readers)


async def test_a_waiting_read_takes_the_connection_a_waiting_session_gave_up(gateway_env):
    """A session waiting before a read is woken for a returned connection, then cancelled
    before it takes it: the read takes it at once, not after the pool's timeout."""
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="1") as runtime:
        pool = pool_of(runtime)
        pool._timeout = 3.0
        holder = runtime.sessions()
        held = (await holder.execute(BACKEND_PID)).scalar_one()
        read = asyncio.create_task(pid(runtime))
        await asyncio.sleep(0.05)
        session = asyncio.create_task(session_pid(runtime))
        await asyncio.sleep(0.05)
        assert len(pool._readers) == 1 and pool._waiting == 1
        await holder.close()  # the connection goes to the queue, for the waiting session ...
        session.cancel()  # ... which gives up before it runs again
        started = time.monotonic()
        assert await asyncio.wait_for(read, 2.0) == held
        assert time.monotonic() - started < 1.0
        with pytest.raises(asyncio.CancelledError):
            await session


async def test_stopping_the_runtime_returns_the_connections_about_to_be_returned(gateway_env, services):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        kept = await pid(runtime)
        pool = pool_of(runtime)
        (fairy, _), = pool._kept
        pool._kept.clear()
        pool._close_soon([fairy])  # as the idle return does; its task has not run yet
    assert pool._returning == [] and pool.checkedout() == 0
    await closed(services, kept)

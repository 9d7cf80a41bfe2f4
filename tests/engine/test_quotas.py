"""The dispatcher keeps each job type within its quota (rows inserted directly; pausing is the
row's `paused` flag), observed from the handlers' own start/end records."""

from __future__ import annotations

import asyncio
import time

from tests.engine.conftest import eventually
from tests.engine.handlers import max_overlap, read_log
from tests.engine.support import add_quota, jobs_of, set_paused, submit, submit_pack


async def _statuses(runtime, tenant):
    return sorted(j.status for j in await jobs_of(runtime, tenant))


async def _hold(check, seconds):
    """Assert ``check`` stays true for ``seconds`` (the dispatcher polls every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await check()
        await asyncio.sleep(0.05)


async def test_max_active_two_never_runs_more_than_two_jobs_of_the_type(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    await add_quota(runtime, tenant, "test.record", max_active=2)
    for _ in range(8):
        await submit(client, factory, tenant, source["sourceId"], "test.record",
                     payload={"log": log_path, "seconds": 0.3})
    workers(tenant, concurrency=4)
    workers(tenant, concurrency=4)

    async def all_succeeded():
        return set(await _statuses(runtime, tenant)) == {"succeeded"}

    await eventually(all_succeeded, timeout=30)
    rows = read_log(log_path)
    assert len([r for r in rows if r[0] == "start"]) == 8
    assert max_overlap(rows) == 2


async def test_paused_quota_starts_nothing_until_resumed(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    quota = await add_quota(runtime, tenant, "test.record", paused=True)
    for _ in range(3):
        await submit(client, factory, tenant, source["sourceId"], "test.record", payload={"log": log_path})
    other = await submit(client, factory, tenant, source["sourceId"], "demo.noop")
    workers(tenant)

    async def other_done():
        return any(j.job_id == other["jobId"] and j.status == "succeeded" for j in await jobs_of(runtime, tenant))

    await eventually(other_done)  # the worker is up and dispatching other types

    async def still_waiting():
        return [j.status for j in await jobs_of(runtime, tenant) if j.job_type == "test.record"] == ["pending"] * 3

    await _hold(still_waiting, 1.0)
    assert read_log(log_path) == []
    await set_paused(runtime, quota, False)

    async def all_succeeded():
        return set(await _statuses(runtime, tenant)) == {"succeeded"}

    await eventually(all_succeeded)
    assert len(read_log(log_path)) == 6


async def test_rate_budget_limits_starts_per_minute(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    await add_quota(runtime, tenant, "test.record", max_active=10, max_per_hour=100, burst=2)
    for _ in range(5):
        await submit(client, factory, tenant, source["sourceId"], "test.record", payload={"log": log_path})
    workers(tenant)

    async def two_done():
        statuses = await _statuses(runtime, tenant)
        return statuses.count("succeeded") == 2

    await eventually(two_done)

    async def three_waiting():
        return await _statuses(runtime, tenant) == ["pending"] * 3 + ["succeeded"] * 2

    await _hold(three_waiting, 1.0)
    assert len([r for r in read_log(log_path) if r[0] == "start"]) == 2


async def test_cancelled_running_job_frees_its_slot_at_once(client, factory, runtime, workers, log_path):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    await add_quota(runtime, tenant, "test.record", max_active=1)
    pack = await submit_pack(client, factory, tenant, source["sourceId"],
                             [{"jobType": "test.record", "payload": {"log": log_path, "seconds": 60}}])
    workers(tenant)
    await eventually(lambda: _starts(log_path, 1))
    waiting = await submit(client, factory, tenant, source["sourceId"], "test.record", payload={"log": log_path})

    async def waiting_status():
        return next(j.status for j in await jobs_of(runtime, tenant) if j.job_id == waiting["jobId"])

    await _hold(lambda: _equals(waiting_status, "pending"), 0.5)  # the only slot is taken
    canceled_at = time.monotonic()
    response = await client.post(f"/jobengine/pack-runs/{pack['packRunId']}/cancel", headers=factory.headers(tenant))
    assert response.status_code == 202 and response.json()["status"] == "cancel_requested"
    await eventually(lambda: _equals(waiting_status, "succeeded"), timeout=10)
    # stopped at the next heartbeat (0.3 s) and the slot went straight to the waiting job
    assert time.monotonic() - canceled_at < 3.0
    starts = [r for r in read_log(log_path) if r[0] == "start"]
    assert [r[1] for r in starts] == [next(j.job_id for j in await jobs_of(runtime, tenant) if j.pack_run_id), waiting["jobId"]]


async def _starts(path, count):
    return len([r for r in read_log(path) if r[0] == "start"]) >= count


async def _equals(check, expected):
    return await check() == expected

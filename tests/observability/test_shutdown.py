"""Graceful shutdown: on SIGTERM the served gateway stops accepting, lets the request in flight
finish and exits 0 within its grace; a worker releases the job it could not finish, and another
worker runs it. (A worker letting a short job finish is tests/engine/test_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from app.storage.models import Job
from tests.engine.conftest import WorkerProcess
from tests.observability.support import Served
from tests.operations.support import tenant_of


async def _refused(url: str, timeout: float) -> bool:
    """Whether new connections are refused within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                await http.get(f"{url}/healthz")
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    return False


@asynccontextmanager
async def _row_locked(services, tenant_id: int, source_id: str) -> AsyncIterator[asyncpg.Connection]:  # type: ignore[no-untyped-def]
    """Holds the source's row lock, so that a request writing it waits while the test acts."""
    connection = await asyncpg.connect(services.pg_url)
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(
            "SELECT 1 FROM sources WHERE tenant_id = $1 AND source_id = $2 FOR UPDATE", tenant_id, source_id
        )
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def _waiting_on_a_lock(services, request: asyncio.Task, timeout: float = 20) -> None:  # type: ignore[no-untyped-def,type-arg]
    # Its own connection, outside the lock's transaction (which would see one frozen snapshot of the view).
    connection = await asyncpg.connect(services.pg_url)
    try:
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        while not await connection.fetchval(query, services.database):
            assert not request.done(), f"the request did not wait: {request.result().status_code}"
            assert time.monotonic() < deadline, "the request never reached the locked row"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _held_put(served, services, client, factory, runtime):  # type: ignore[no-untyped-def]
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    info = await tenant_of(runtime, tenant)
    body = {"name": "renamed", "sourceType": "scanner", "enabled": True, "projectId": None, "description": None}
    http = httpx.AsyncClient(timeout=60)
    put = lambda: http.put(  # noqa: E731
        f"{served.url}/jobengine/sources/{source['sourceId']}", json=body, headers=factory.headers(tenant)
    )
    return http, put, info.id, source["sourceId"]


async def test_sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0(
    gateway_env, services, client, factory, runtime
):
    grace = 10
    served = Served(gateway_env, JOBGATE_SHUTDOWN_GRACE_SECONDS=str(grace))
    try:
        served.wait_ready()
        http, put, tenant_id, source_id = await _held_put(served, services, client, factory, runtime)
        async with http:
            async with _row_locked(services, tenant_id, source_id):
                in_flight = asyncio.create_task(put())
                await _waiting_on_a_lock(services, in_flight)
                served.process.send_signal(signal.SIGTERM)
                terminated = time.monotonic()
                assert await _refused(served.url, timeout=5), "still accepting after SIGTERM"
                assert not in_flight.done()
            try:
                response = await in_flight  # the lock is gone: the request goes on to its normal answer
            except httpx.HTTPError as exc:
                raise AssertionError(f"the request in flight was cut ({exc!r}): {served.output()[-3000:]}") from None
        assert response.status_code == 200 and response.json()["name"] == "renamed"
        exit_code = await asyncio.to_thread(served.process.wait, grace + 10)
        assert exit_code == 0
        assert time.monotonic() - terminated < grace
    finally:
        served.close()


async def test_request_outlasting_the_grace_does_not_hold_the_exit_back(
    gateway_env, services, client, factory, runtime
):
    grace = 2
    served = Served(gateway_env, JOBGATE_SHUTDOWN_GRACE_SECONDS=str(grace))
    try:
        served.wait_ready()
        http, put, tenant_id, source_id = await _held_put(served, services, client, factory, runtime)
        async with http:
            async with _row_locked(services, tenant_id, source_id):
                in_flight = asyncio.create_task(put())
                await _waiting_on_a_lock(services, in_flight)
                served.process.send_signal(signal.SIGTERM)
                terminated = time.monotonic()
                exit_code = await asyncio.to_thread(served.process.wait, grace + 15)
                elapsed = time.monotonic() - terminated
            outcome = await asyncio.gather(in_flight, return_exceptions=True)
        assert elapsed < grace + 5, elapsed
        assert exit_code == 0
        assert isinstance(outcome[0], httpx.HTTPError)  # cut off with its process, never answered
    finally:
        served.close()


async def _job(runtime, tenant: str, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    info = await tenant_of(runtime, tenant)
    async with runtime.sessions() as session:
        job = await session.get(Job, (info.id, job_id))
        assert job is not None
        return job


async def _until(check, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)
    return value


async def test_job_released_at_worker_shutdown_is_run_by_another_worker(gateway_env, client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    response = await client.post(
        "/jobengine/jobs",
        json={"jobType": "demo.sleep", "sourceId": source["sourceId"], "payload": {"seconds": 3}},
        headers=factory.headers(tenant, reason=None),
    )
    job_id = response.json()["jobId"]
    first = WorkerProcess(gateway_env, tenant, JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS="0.3")
    second = None
    try:
        async def running_on_first():  # type: ignore[no-untyped-def]
            job = await _job(runtime, tenant, job_id)
            return job.status == "running" and job.lease_owner == first.worker_id

        await _until(running_on_first)
        assert await asyncio.to_thread(first.terminate) == 0
        released = await _job(runtime, tenant, job_id)
        assert (released.status, released.attempt, released.lease_owner) == ("pending", 0, None)

        second = WorkerProcess(gateway_env, tenant)

        async def succeeded():  # type: ignore[no-untyped-def]
            job = await _job(runtime, tenant, job_id)
            return job if job.status == "succeeded" else None

        done = await _until(succeeded)
        assert done.attempt == 1
    finally:
        first.close()
        if second is not None:
            second.close()

"""A worker killed with SIGKILL in the middle of a job: nothing releases its lease, so the job is
taken again only once the lease has run out, by another worker, and then completes exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import httpx
import pytest_asyncio

from tests.engine.conftest import eventually
from tests.engine.handlers import read_log
from tests.engine.support import entries_of, job, submit

LEASE = "3"


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_client(start_gateways) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    [gateway] = start_gateways()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


async def test_job_of_a_sigkilled_worker_runs_again_after_its_lease_expires_and_completes_once(
    gateway_client, drill_runtime, drill_factory, start_worker, log_path
):
    tenant = await drill_factory.tenant()
    source = await drill_factory.source(gateway_client, tenant)
    submitted = await submit(
        gateway_client,
        drill_factory,
        tenant,
        source["sourceId"],
        "test.record",
        payload={"log": log_path, "firstAttemptSeconds": 60, "seconds": 0.2},
    )
    first = start_worker(tenant, JOBGATE_WORKER_LEASE_SECONDS=LEASE)
    await eventually(lambda: _lines(log_path, "start", 1))
    second = start_worker(tenant, JOBGATE_WORKER_LEASE_SECONDS=LEASE)
    await second.ready()  # idle beside the first, so it can only take the job once the lease is free

    first.kill()  # SIGKILL: no release, no failure recorded
    killed = await job(drill_runtime, tenant, submitted["jobId"])
    assert (killed.status, killed.attempt, killed.lease_owner) == ("running", 1, first.worker_id)
    lease_ran_out = killed.lease_expires_at.astimezone(UTC).timestamp()

    async def succeeded():
        current = await job(drill_runtime, tenant, submitted["jobId"])
        return current if current.status == "succeeded" else None

    done = await eventually(succeeded, timeout=float(LEASE) + 20)
    runs = read_log(log_path)
    assert [(kind, attempt, worker) for kind, _, attempt, _, worker in runs] == [
        ("start", 1, first.worker_id),
        ("start", 2, second.worker_id),
        ("end", 2, second.worker_id),
    ]
    taken_again = runs[1][3]
    print(f"taken again {taken_again - lease_ran_out:.2f}s after the lease ran out")
    assert taken_again >= lease_ran_out - 0.05  # never while the killed worker's lease held
    assert (done.attempt, done.lease_owner) == (2, None)
    assert await entries_of(drill_runtime, tenant) == []  # it completed, it did not dead-letter
    counts = (
        await gateway_client.get(
            f"/jobengine/sources/{source['sourceId']}", headers=drill_factory.headers(tenant)
        )
    ).json()["jobCounts"]
    assert counts == {"submitted": 1, "active": 0, "failed": 0}


async def _lines(path: str, kind: str, count: int) -> bool:
    return len([r for r in read_log(path) if r[0] == kind]) >= count

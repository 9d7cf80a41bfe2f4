"""The revalidation guarantee, across two gateway processes and a worker on PostgreSQL and Redis.

Writes through every write path (gateway mutations on either process, job submissions run by a
worker process, the reconciler, replays and discards, rows written by hand) interleave, in a seeded
random order, with revalidations of every list on both processes. Any 304 is checked against the
truth (the list read from the database at the same moment): a revalidation that begins after a
mutation's answer was received is never answered a stale 304; after a write that has no answer
(the worker, the reconciler, SQL), none once the bound has passed (docs/design.md: the window is
the feed's delivery time; measured in docs/benchmarks.md, tested here with a generous margin)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from app.engine.reconciler import reconcile_once
from app.storage.models import Job
from tests.actions.test_replay import dead_letters
from tests.engine.conftest import WorkerProcess
from tests.observability.support import samples
from tests.operations.support import add_run

pytestmark = pytest.mark.backends("postgresql")

LISTS = ("/jobengine/sources", "/jobengine/quotas", "/jobengine/jobs", "/jobengine/deadletter",
         "/jobengine/pack-runs", "/jobengine/audit", "/jobengine/jobs/summary", "/jobengine/deadletter/summary")
BOUND_MARGIN_SECONDS = 1.0  # the documented bound for writes without an answer, with a wide margin
STEPS = 30


class Harness:
    def __init__(self, gateways: list[Any], factory: Any, runtime: Any, tenant: str, rng: random.Random) -> None:
        self.gateways = gateways
        self.factory = factory
        self.runtime = runtime
        self.tenant = tenant
        self.rng = rng
        self.http = httpx.AsyncClient(timeout=20)
        self.held: dict[str, str] = {}
        self.sources: list[str] = []
        self.quotas: list[str] = []
        self.entries: list[str] = []
        self.checked_304 = 0

    def url(self, path: str) -> str:
        return self.rng.choice(self.gateways).url + path

    def headers(self, **kwargs: Any) -> dict[str, str]:
        return self.factory.headers(self.tenant, reason="guarantee", **kwargs)

    async def mutate(self, method: str, path: str, body: Any = None, *, submission: bool = False) -> httpx.Response:
        headers = self.factory.headers(self.tenant, reason=None) if submission else self.headers()
        response = await self.http.request(method, self.url(path), json=body, headers=headers)
        assert response.status_code < 300, response.text
        return response

    # -- write paths -------------------------------------------------------------------------------

    async def create_source(self) -> bool:
        body = {"name": f"s-{uuid.uuid4().hex[:6]}", "sourceType": "scanner"}
        self.sources.append((await self.mutate("POST", "/jobengine/sources", body)).json()["sourceId"])
        return True

    async def replace_source(self) -> bool:
        if not self.sources:
            return await self.create_source()
        body = {"name": f"r-{uuid.uuid4().hex[:6]}", "sourceType": "scanner"}
        await self.mutate("PUT", f"/jobengine/sources/{self.rng.choice(self.sources)}", body)
        return True

    async def quota(self) -> bool:
        if not self.quotas or self.rng.random() < 0.3:
            body = {"jobType": f"t.{uuid.uuid4().hex[:6]}", "maxActive": 3, "maxPerHour": 100, "burst": 10}
            self.quotas.append((await self.mutate("POST", "/jobengine/quotas", body)).json()["quotaId"])
        else:
            action = self.rng.choice(("pause", "resume"))
            await self.mutate("POST", f"/jobengine/quotas/{self.rng.choice(self.quotas)}/{action}")
        return True

    async def discard_or_restore(self) -> bool:
        entry = self.rng.choice(self.entries)
        action = self.rng.choice(("discard", "restore"))
        response = await self.http.post(self.url(f"/jobengine/deadletter/{entry}/{action}"), headers=self.headers())
        assert response.status_code in (200, 409), response.text  # 409: not in the state to leave
        return True

    async def submit_job(self) -> bool:
        if not self.sources:
            await self.create_source()
        body = {"jobType": "demo.noop", "sourceId": self.rng.choice(self.sources)}
        await self.mutate("POST", "/jobengine/jobs", body, submission=True)
        await self.quiet()  # the worker runs it: outcomes that have no answer
        return False

    async def replay(self) -> bool:
        entry = self.rng.choice(self.entries)
        response = await self.http.post(self.url(f"/jobengine/deadletter/{entry}/replay"), headers=self.headers())
        assert response.status_code in (202, 409), response.text
        await self.quiet()
        return False

    async def reconcile(self) -> bool:
        info = await self.runtime.tenants.get(self.tenant)
        await add_run(self.runtime, info, status="running", age=86400 * 3, heartbeat_age=86400 * 3)
        await reconcile_once(self.runtime, workspace_ids=[info.workspace_id])
        return False

    async def by_hand(self) -> bool:
        info = await self.runtime.tenants.get(self.tenant)
        async with self.runtime.sessions.begin() as session:
            await session.execute(text("UPDATE sources SET description = :d WHERE tenant_id = :t"),
                                  {"d": uuid.uuid4().hex, "t": info.id})
        return False

    async def quiet(self) -> None:
        """Until the worker has run every job of the tenant."""
        info = await self.runtime.tenants.get(self.tenant)
        deadline = time.monotonic() + 30
        while True:
            async with self.runtime.sessions() as session:
                active = (await session.execute(
                    select(func.count()).select_from(Job).where(
                        Job.tenant_id == info.id, Job.status.in_(("pending", "scheduled", "leased", "running"))
                    )
                )).scalar_one()
            if not active:
                return
            assert time.monotonic() < deadline, "the worker did not finish the tenant's jobs in 30 s"
            await asyncio.sleep(0.05)

    # -- the check ---------------------------------------------------------------------------------

    async def check(self) -> None:
        """Revalidate every held tag on both processes at once, right away; then read the truth
        (nothing writes meanwhile, so it is the truth the revalidations began with)."""
        held = dict(self.held)
        revalidations = await asyncio.gather(*(
            self.http.get(gateway.url + path, headers={**self.headers(), "If-None-Match": tag})
            for path, tag in held.items() for gateway in self.gateways
        ))
        answers = iter(revalidations)
        truths = {}
        for path in LISTS:
            truth = await self.http.get(self.url(path), headers=self.headers())
            assert truth.status_code == 200, truth.text
            truths[path] = truth.headers["etag"]
        for path, tag in held.items():
            for gateway in self.gateways:
                response = next(answers)
                if response.status_code == 304:
                    self.checked_304 += 1
                    assert tag == truths[path], f"stale 304 on {gateway.url}{path}"
                else:
                    assert response.status_code == 200, response.text
        for path in LISTS:
            # the current tag, revalidated twice on each process: remembered, then from memory
            for gateway in self.gateways:
                for _ in range(2):
                    response = await self.http.get(
                        gateway.url + path, headers={**self.headers(), "If-None-Match": truths[path]}
                    )
                    assert response.status_code in (200, 304), response.text
            self.held[path] = truths[path]


async def in_memory_answers(url: str) -> float:
    async with httpx.AsyncClient() as client:
        page = (await client.get(f"{url}/metrics")).text
    return sum(samples(page, "jobgate_revalidations_in_memory_total").values())


async def test_no_stale_304_across_processes_and_write_paths(backend, factory, runtime, two_gateways, gateway_env):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 4, job_type="demo.noop", project_id=None)
    worker = WorkerProcess(gateway_env, tenant, concurrency=2)
    harness = Harness(two_gateways, factory, runtime, tenant, random.Random(20261206))
    harness.entries = [entry.entry_id for entry in entries]
    before = [await in_memory_answers(g.url) for g in two_gateways]
    try:
        await worker.ready()
        await harness.quiet()
        await asyncio.sleep(BOUND_MARGIN_SECONDS)
        await harness.check()
        paths = [harness.create_source, harness.replace_source, harness.quota, harness.discard_or_restore,
                 harness.submit_job, harness.replay, harness.reconcile, harness.by_hand]
        for _ in range(STEPS):
            answered = await harness.rng.choice(paths)()
            if not answered:  # a write without an answer: its bound, then no stale 304
                await asyncio.sleep(BOUND_MARGIN_SECONDS)
            await harness.check()  # a mutation's answer received: no wait at all
    finally:
        await harness.http.aclose()
        worker.close()
    assert harness.checked_304 > 0
    after = [await in_memory_answers(g.url) for g in two_gateways]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

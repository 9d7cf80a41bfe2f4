"""Redis stopped, and paused with ``CLIENT PAUSE``, under requests: rate limiting fails open and is
counted, DPoP fails closed with 503, a route that needs Redis only for its rate limit is not slowed
beyond the Redis timeout, and once Redis is back everything is normal again."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from app.storage.shared import PAUSE_AFTER_FAILURE_SECONDS, REDIS_TIMEOUT_SECONDS
from tests.conftest import GatewayProcess
from tests.engine.conftest import eventually
from tests.support.keys import DPoPKey

# What a request may take beyond the one Redis timeout it can meet: the gateway's own work on a
# shared two-core machine. Far below the pause, so a request that waited for Redis fails the bound.
MARGIN_SECONDS = 1.0
PAUSE_MS = 5000
OUTAGE_SECONDS = 2 * PAUSE_AFTER_FAILURE_SECONDS + 1  # long enough to meet Redis again after a pause
READ = "/jobengine/sources?limit=5"
_FAIL_OPEN = re.compile(r"^jobgate_rate_limit_fail_open_total(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass
class Timed:
    status: int
    seconds: float
    code: str | None
    retry_after: str | None


@dataclass
class Gateway:
    process: GatewayProcess
    client: httpx.AsyncClient
    headers: dict[str, str]
    dpop_key: DPoPKey
    dpop_token: str

    async def read(self) -> Timed:
        return await self._timed(self.headers)

    async def dpop_read(self) -> Timed:
        proof = self.dpop_key.proof("GET", self.process.url + READ.split("?")[0], self.dpop_token)
        headers = {**self.headers, "Authorization": f"DPoP {self.dpop_token}", "DPoP": proof}
        return await self._timed(headers)

    async def _timed(self, headers: dict[str, str]) -> Timed:
        started = time.monotonic()
        response = await self.client.get(READ, headers=headers)
        seconds = time.monotonic() - started
        problem = response.headers.get("content-type", "").startswith("application/problem+json")
        return Timed(
            response.status_code,
            seconds,
            response.json()["code"] if problem else None,
            response.headers.get("retry-after"),
        )

    async def fail_open_count(self) -> float:
        text = (await self.client.get("/metrics")).text
        return sum(float(value) for value in _FAIL_OPEN.findall(text))


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(drill_gateway, drill_factory) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    tenant = await drill_factory.tenant()
    dpop_key = DPoPKey.generate()
    token = drill_factory.keys.token(tenant=tenant, scope="orch:read", cnf={"jkt": dpop_key.thumbprint})
    async with httpx.AsyncClient(base_url=drill_gateway.url, timeout=10) as client:
        gateway = Gateway(drill_gateway, client, drill_factory.headers(tenant, reason=None), dpop_key, token)
        assert (await gateway.read()).status == 200
        assert (await gateway.dpop_read()).status == 200
        yield gateway


async def _under_outage(gateway: Gateway, seconds: float) -> tuple[list[Timed], list[Timed]]:
    """Reads and DPoP reads, one after the other, for ``seconds``."""
    reads: list[Timed] = []
    dpop: list[Timed] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reads.append(await gateway.read())
        dpop.append(await gateway.dpop_read())
    return reads, dpop


def _assert_fails_open_and_closed(reads: list[Timed], dpop: list[Timed]) -> None:
    bound = REDIS_TIMEOUT_SECONDS + MARGIN_SECONDS
    assert reads and all(r.status == 200 for r in reads), [r for r in reads if r.status != 200][:3]
    slowest = max(r.seconds for r in reads + dpop)
    print(f"{len(reads)} reads and {len(dpop)} DPoP reads, slowest {slowest:.3f}s (bound {bound}s)")
    assert slowest <= bound
    assert all((d.status, d.code) == (503, "replay_store_unavailable") and d.retry_after for d in dpop), dpop[
        :3
    ]


async def _assert_normal_again(gateway: Gateway) -> None:
    async def dpop_accepted() -> bool:
        return (await gateway.dpop_read()).status == 200

    await eventually(dpop_accepted, timeout=PAUSE_MS / 1000 + PAUSE_AFTER_FAILURE_SECONDS + 5, interval=0.2)
    counted = await gateway.fail_open_count()
    for _ in range(5):
        assert (await gateway.read()).status == 200
        assert (await gateway.dpop_read()).status == 200
    assert await gateway.fail_open_count() == counted  # nothing let through unchecked any more


async def test_redis_stopped_lets_reads_through_counted_and_refuses_dpop_until_it_returns(
    drill_services, gateway
):
    before = await gateway.fail_open_count()
    drill_services.redis.stop()
    try:
        reads, dpop = await _under_outage(gateway, OUTAGE_SECONDS)
    finally:
        drill_services.redis.start()
    _assert_fails_open_and_closed(reads, dpop)
    assert await gateway.fail_open_count() > before
    await _assert_normal_again(gateway)


@pytest.mark.parametrize("mode", ["ALL", "WRITE"])
async def test_redis_paused_does_not_slow_reads_beyond_its_timeout_and_refuses_dpop(
    mode, drill_services, gateway
):
    before = await gateway.fail_open_count()
    admin = drill_services.redis.client()
    try:
        await asyncio.to_thread(admin.execute_command, "CLIENT", "PAUSE", str(PAUSE_MS), mode)
    finally:
        admin.close()
    reads, dpop = await _under_outage(gateway, PAUSE_MS / 1000 - 1)
    _assert_fails_open_and_closed(reads, dpop)
    assert await gateway.fail_open_count() > before
    await _assert_normal_again(gateway)

"""Per-tenant rate limit, shared by every gateway process through Redis; fails open when Redis is down
(while DPoP replay checks fail closed)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import GatewayProcess, free_port, make_app, serving
from tests.envelope import audit_rows
from tests.support.keys import DPoPKey

SOURCES = "/jobengine/sources"
BUDGET = 10
REFUSING_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once


@pytest.fixture(scope="module")
def limited_gateways(gateway_env: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes on the same PostgreSQL and Redis with a budget of 10 requests an hour
    (one request refills every 6 minutes, so nothing refills while the test runs, however slow)."""
    env = {**gateway_env, "JOBGATE_RATE_LIMIT": f"{BUDGET}/hour"}
    gateways = [GatewayProcess(env, free_port()) for _ in range(2)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


async def test_budget_is_per_tenant_and_shared_by_two_processes(limited_gateways, factory):
    tenant, bystander = await factory.tenant(), await factory.tenant()
    urls = [g.url + SOURCES for g in limited_gateways]
    headers = factory.headers(tenant, scope="orch:read")
    async with httpx.AsyncClient(timeout=10) as http:
        responses = await asyncio.gather(*(http.get(urls[i % 2], headers=headers) for i in range(3 * BUDGET)))
        bystanders = [
            await http.get(url, headers=factory.headers(bystander, scope="orch:read")) for url in urls
        ]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == BUDGET, statuses
    assert statuses.count(429) == 2 * BUDGET, statuses
    # each process saw 15 requests: with a budget per process 20 would have been served
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(refused.headers["retry-after"]) <= 360
    assert [r.status_code for r in bystanders] == [200, 200]


async def test_budget_spent_half_on_each_process_is_spent_on_both(limited_gateways, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant, scope="orch:read")
    urls = [g.url + SOURCES for g in limited_gateways]
    async with httpx.AsyncClient(timeout=10) as http:
        spent = [await http.get(urls[i % 2], headers=headers) for i in range(BUDGET)]
        after = [await http.get(url, headers=headers) for url in urls]
    assert [r.status_code for r in spent] == [200] * BUDGET
    assert [r.status_code for r in after] == [429, 429]


async def test_mutation_refused_by_the_rate_limit_is_audited(gateway_env, factory, runtime):
    tenant = await factory.tenant()
    async with serving(make_app(gateway_env, JOBGATE_RATE_LIMIT="1/hour")) as limited:
        body = {"name": "feed", "sourceType": "scanner"}
        allowed = await limited.post(SOURCES, json=body, headers=factory.headers(tenant, reason="first"))
        refused = await limited.post(SOURCES, json=body, headers=factory.headers(tenant, reason="second"))
    assert (allowed.status_code, refused.status_code) == (201, 429)
    assert refused.json()["code"] == "rate_limited"
    rows = await audit_rows(runtime, tenant)
    assert [(r.result_status, r.result_code, r.reason) for r in rows] == [
        (201, None, "first"),
        (429, "rate_limited", "second"),
    ]


# --- Redis down ---------------------------------------------------------------------------------------


def _fail_open_count(metrics_text: str) -> float:
    match = re.search(r"^jobgate_rate_limit_fail_open_total ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    assert match, "jobgate_rate_limit_fail_open_total is not exposed"
    return float(match.group(1))


@pytest.fixture
async def redis_down_client(gateway_env):  # type: ignore[no-untyped-def]
    async with serving(make_app(gateway_env, JOBGATE_REDIS_URL=REFUSING_REDIS)) as down:
        yield down


async def test_redis_down_still_serves_plain_requests_and_counts_them(redis_down_client, factory):
    tenant = await factory.tenant()
    before = _fail_open_count((await redis_down_client.get("/metrics")).text)
    responses = [await redis_down_client.get(SOURCES, headers=factory.headers(tenant)) for _ in range(3)]
    after = _fail_open_count((await redis_down_client.get("/metrics")).text)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert after - before == 3


async def test_redis_down_refuses_dpop_requests_with_503(redis_down_client, client, factory, keys):
    tenant = await factory.tenant()
    dpop = DPoPKey.generate()
    token = keys.token(tenant=tenant, scope="orch:read", cnf={"jkt": dpop.thumbprint})

    def headers() -> dict[str, str]:
        proof = dpop.proof("GET", "http://gateway.test" + SOURCES, token)
        return {"Authorization": f"DPoP {token}", "DPoP": proof, "X-Stella-Tenant": tenant}

    refused = await redis_down_client.get(SOURCES, headers=headers())
    assert refused.status_code == 503
    assert refused.json()["code"] == "replay_store_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    # the same kind of request is served where Redis is up: the 503 is the replay store, not the proof
    served = await client.get(SOURCES, headers=headers())
    assert served.status_code == 200, served.text

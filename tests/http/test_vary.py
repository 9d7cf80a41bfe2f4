"""One merged ``Vary`` on every response of every GET route, with and without ``Origin``.

A browser keys its cache by URL and the ``Vary`` members only: a response whose ``Vary`` lacks
the tenant, the credentials, the project or the origin may be shown for another tenant's,
caller's or origin's request of the same URL. The walk reads ``app.routes``, so a GET route
added later is covered without touching this file.
"""

from __future__ import annotations

import time

import pytest

from app.http.caching import merge_vary
from tests.conftest import make_app, serving
from tests.envelope.test_scopes import endpoints

CONSOLE = "https://console.example"
REQUIRED = {"authorization", "x-stella-tenant", "x-stella-project", "origin"}


def vary_members(response) -> set[str]:  # type: ignore[no-untyped-def]
    values = response.headers.get_list("vary")
    assert len(values) <= 1, f"more than one Vary header: {values}"
    return {m.strip().lower() for v in values for m in v.split(",") if m.strip()}


@pytest.fixture(scope="module")
def cors_app(gateway_env):  # type: ignore[no-untyped-def]
    return make_app(gateway_env, JOBGATE_CORS_ORIGINS=CONSOLE)


@pytest.mark.parametrize(
    "origin", [None, CONSOLE, "https://elsewhere.example"], ids=["no-origin", "allowed", "foreign"]
)
async def test_every_get_route_answers_one_vary_with_every_member(cors_app, factory, origin):
    async with serving(cors_app) as client:
        tenant = await factory.tenant()
        await factory.source(client, tenant)
        headers = factory.headers(tenant)
        if origin:
            headers["Origin"] = origin
        missing, ok_routes, revalidated = [], 0, 0
        for endpoint in endpoints(cors_app):
            if endpoint.method != "GET":
                continue
            # an event stream ends at its token's expiry: one second lets the in-process client have it
            response = await client.get(endpoint.path, headers=(
                {**headers, **factory.headers(tenant, exp=int(time.time()) + 1)} if endpoint.opt.get("stream") else headers
            ))
            members = vary_members(response)
            if not REQUIRED <= members:
                missing.append(f"{endpoint} {response.status_code}: {sorted(REQUIRED - members)}")
            if origin == CONSOLE and not endpoint.opt.get("public"):
                assert response.headers.get("access-control-allow-origin") == CONSOLE, str(endpoint)
            if origin == "https://elsewhere.example":
                assert "access-control-allow-origin" not in response.headers, str(endpoint)
            if response.status_code != 200 or "etag" not in response.headers:
                continue
            ok_routes += 1
            again = await client.get(
                endpoint.path, headers={**headers, "If-None-Match": response.headers["etag"]}
            )
            if again.status_code == 304:
                revalidated += 1
                assert again.content == b""
                assert again.headers["etag"] == response.headers["etag"], str(endpoint)
                assert vary_members(again) == members, str(endpoint)
                assert again.headers["cache-control"] == response.headers["cache-control"], str(endpoint)
        assert missing == []
        # The walk reached real answers, not only refusals: every list route answers 200 and 304.
        assert ok_routes >= 10 and revalidated >= 10, (ok_routes, revalidated)


async def test_errors_and_mutations_carry_the_same_vary(cors_app, factory):
    async with serving(cors_app) as client:
        tenant = await factory.tenant()
        unauthenticated = await client.get(
            "/jobengine/sources", headers={"X-Stella-Tenant": tenant, "Origin": CONSOLE}
        )
        assert unauthenticated.status_code == 401
        assert REQUIRED <= vary_members(unauthenticated)
        created = await client.post(
            "/jobengine/sources",
            json={"name": "vary", "sourceType": "scanner"},
            headers={**factory.headers(tenant), "Origin": CONSOLE},
        )
        assert created.status_code == 201
        assert REQUIRED <= vary_members(created)
        assert created.headers["access-control-allow-origin"] == CONSOLE


def test_merge_keeps_each_member_once_and_star_absorbs_the_rest():
    assert merge_vary("Authorization, Origin", "origin", "Accept") == "Authorization, Origin, Accept"
    assert merge_vary("Authorization", " , ") == "Authorization"
    assert merge_vary("Authorization", "*") == "*"

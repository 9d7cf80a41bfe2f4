"""Sources routes: listing, detail, registration, replacement, tenancy and project narrowing."""

from __future__ import annotations


async def test_created_source_is_listed_and_readable(client, factory):
    tenant = await factory.tenant()
    created = await factory.source(client, tenant, name="Scanner feed", sourceType="scanner")
    assert created["sourceId"]
    listed = await client.get("/jobengine/sources", headers=factory.headers(tenant))
    assert listed.status_code == 200
    assert [s["sourceId"] for s in listed.json()["items"]] == [created["sourceId"]]
    detail = await client.get(f"/jobengine/sources/{created['sourceId']}", headers=factory.headers(tenant))
    assert detail.json() == created


async def test_other_tenants_source_is_404_identical_to_missing(client, factory):
    owner, other = await factory.tenant(), await factory.tenant()
    source = await factory.source(client, owner)
    foreign = await client.get(f"/jobengine/sources/{source['sourceId']}", headers=factory.headers(other))
    missing = await client.get("/jobengine/sources/does-not-exist", headers=factory.headers(other))
    assert foreign.status_code == missing.status_code == 404
    strip = lambda body: {k: v for k, v in body.items() if k != "traceId"}  # noqa: E731
    assert strip(foreign.json()) == strip(missing.json())

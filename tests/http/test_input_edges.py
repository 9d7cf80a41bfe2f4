"""Input edges the contract names: the body cap in a 413, and the source PUT body."""

from __future__ import annotations

import uuid

from tests.http.test_problems import assert_problem

SOURCES = "/jobengine/sources"


async def test_413_names_the_body_limit_in_bytes(client, factory, runtime):
    tenant = await factory.tenant()
    cap = runtime.settings.max_body_bytes
    oversized = b'{"name": "' + b"x" * cap + b'", "sourceType": "scanner"}'
    for extra in ({}, {"Idempotency-Key": f"too-large-{uuid.uuid4().hex}"}):
        response = await client.post(
            SOURCES, content=oversized, headers={**factory.headers(tenant), "Content-Type": "application/json", **extra}
        )
        problem = assert_problem(response, 413, "body_too_large")
        assert f"{cap} bytes" in problem["detail"], problem


async def test_source_put_takes_the_create_defaults_for_absent_fields(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    source = await factory.source(client, tenant, enabled=False, description="kept?", projectId="p1")
    path = f"{SOURCES}/{source['sourceId']}"
    response = await client.put(path, json={"name": "again", "sourceType": "scanner"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["enabled"], body["projectId"], body["description"]) == ("again", True, None, None)
    full = {"name": "full", "sourceType": "scanner", "enabled": False, "projectId": "p2", "description": "d"}
    body = (await client.put(path, json=full, headers=headers)).json()
    assert (body["enabled"], body["projectId"], body["description"]) == (False, "p2", "d")

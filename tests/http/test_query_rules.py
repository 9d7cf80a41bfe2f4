"""Query strings as the contract states them: canonical integers, one value per name, no `null`
filter; and the headers the contract declares, as sent."""

from __future__ import annotations

import uuid

import pytest

from tests.http.test_problems import assert_problem
from tests.operations.support import tenant_of

SOURCES = "/jobengine/sources"


@pytest.mark.parametrize("value", ["1e2", "5.0", "2.5e1", "+5", "007", " 5", "0x10", "null", "five"])
async def test_limit_is_a_canonical_decimal_integer(client, factory, value):
    tenant = await factory.tenant()
    response = await client.get(SOURCES, params={"limit": value}, headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["limit"], problem


async def test_canonical_integers_are_taken(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    assert (await client.get(SOURCES, params={"limit": "5"}, headers=headers)).status_code == 200
    assert_problem(await client.get(SOURCES, params={"limit": "0"}, headers=headers), 400, "validation_failed")
    assert_problem(await client.get(SOURCES, params={"limit": "-1"}, headers=headers), 400, "validation_failed")


@pytest.mark.parametrize(
    ("path", "name", "values"),
    [
        ("/jobengine/sources", "limit", ("1", "2")),
        ("/jobengine/sources", "enabled", ("true", "false")),
        ("/jobengine/sources", "sourceType", ("a", "b")),
        ("/jobengine/jobs", "status", ("pending", "failed")),
        ("/jobengine/deadletter", "status", ("pending", "pending")),
        ("/jobengine/pack-runs", "packName", ("a", "b")),
        ("/jobengine/audit", "occurredFrom", ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")),
        ("/jobengine/quotas", "paused", ("true", "true")),
        ("/jobengine/jobs/summary", "jobType", ("a", "b")),
        ("/api/admin/operations", "status", ("queued", "running")),
        ("/api/admin/operations", "continuationToken", ("x", "y")),
        ("/admin/operations", "activeTab", ("active", "completed")),
    ],
)
async def test_a_repeated_single_valued_parameter_is_400_on_every_route(client, factory, path, name, values):
    tenant = await factory.tenant()
    response = await client.get(path, params=[(name, v) for v in values], headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert problem["errors"][0]["field"] == name, problem
    assert "more than once" in problem["detail"]


async def test_an_unknown_parameter_is_still_ignored(client, factory):
    tenant = await factory.tenant()
    response = await client.get(
        SOURCES, params=[("unknown", "a"), ("unknown", "b")], headers=factory.headers(tenant)
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/admin/operations", "tenant_id"),
        ("/admin/operations", "tenant"),
        ("/api/admin/operations", "status"),
        ("/api/admin/operations", "reconciled"),
        ("/jobengine/jobs", "status"),
        ("/jobengine/sources", "enabled"),
    ],
)
async def test_null_is_not_a_filter_value(client, factory, path, name):
    tenant = await factory.tenant()
    response = await client.get(path, params={name: "null"}, headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert problem["errors"][0]["field"] == name, problem


async def test_the_lifecycle_tenant_filters_still_filter(client, factory, runtime):
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    headers = factory.headers(key, scope="orch:read")
    assert (await client.get("/api/admin/operations", params={"tenant_id": str(tenant.id)}, headers=headers)).status_code == 200
    assert (await client.get("/admin/operations", params={"tenant": str(tenant.id)}, headers=headers)).status_code == 200
    assert (await client.get("/admin/operations", params={"tenant": "0"}, headers=headers)).status_code == 404
    assert_problem(
        await client.get("/admin/operations", params={"tenant": "1.0"}, headers=headers), 400, "validation_failed"
    )


async def test_a_text_filter_may_be_the_word_null(client, factory):
    tenant = await factory.tenant()
    response = await client.get(SOURCES, params={"sourceType": "null"}, headers=factory.headers(tenant))
    assert response.status_code == 200 and response.json()["items"] == []


async def test_the_declared_answer_headers_are_sent(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    created = await client.post(SOURCES, json={"name": "n", "sourceType": "scanner"}, headers=headers)
    assert created.status_code == 201
    for name in ("location", "etag", "cache-control", "x-stella-trace-id"):
        assert name in created.headers, name
    read = await client.get(SOURCES, headers=headers)
    for name in ("etag", "cache-control", "vary", "x-stella-trace-id"):
        assert name in read.headers, name
    again = await client.get(SOURCES, headers={**headers, "If-None-Match": read.headers["etag"]})
    assert again.status_code == 304 and "x-stella-trace-id" in again.headers
    key = f"replayed-{uuid.uuid4().hex}"
    first = await client.post(
        SOURCES, json={"name": "r", "sourceType": "scanner"}, headers={**headers, "Idempotency-Key": key}
    )
    replay = await client.post(
        SOURCES, json={"name": "r", "sourceType": "scanner"}, headers={**headers, "Idempotency-Key": key}
    )
    assert first.status_code == replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers


async def test_conditional_headers_stay_optional_and_unchecked_by_the_framework(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    source = await factory.source(client, tenant)
    path = f"{SOURCES}/{source['sourceId']}"
    # Any If-None-Match value is taken (no pattern, no required), and so is a PUT without If-Match.
    assert (await client.get(path, headers={**headers, "If-None-Match": "not a tag"})).status_code == 200
    body = {"name": "renamed", "sourceType": "scanner"}
    assert (await client.put(path, json=body, headers=headers)).status_code == 200
    stale = await client.put(path, json=body, headers={**headers, "If-Match": '"stale"'})
    assert_problem(stale, 412, "precondition_failed")

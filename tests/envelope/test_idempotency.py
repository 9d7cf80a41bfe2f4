"""Idempotency-Key on POST (IETF httpapi idempotency-key draft): replay, 422, 409 in flight."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.domain.sources import service as sources_service
from app.storage.idempotency import purge_expired
from app.storage.models import IdempotencyRecord, Tenant
from tests.envelope import audit_rows, source_ids

SOURCES = "/jobengine/sources"


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


def _headers(factory, tenant, key, **options):  # type: ignore[no-untyped-def]
    return {**factory.headers(tenant, **options), "Idempotency-Key": key}


async def test_same_key_and_body_replays_the_first_response(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    body = {
        "name": "feed",
        "sourceType": "scanner",
    }  # no sourceId: a second execution would create a second source
    first = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
    again = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    for header in ("location", "etag", "content-type"):
        assert again.headers[header] == first.headers[header]
    assert await source_ids(runtime, tenant) == [first.json()["sourceId"]]


async def test_replay_is_audited_as_a_replay(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner"}
    await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
    await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
    rows = await audit_rows(runtime, tenant)
    assert [(r.result_status, r.result_code, r.idempotency_key) for r in rows] == [
        (201, None, key),
        (201, "idempotent_replay", key),
    ]


async def test_same_key_with_another_body_is_422_and_changes_nothing(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    first = await client.post(
        SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
    )
    other = await client.post(
        SOURCES, json={"name": "other", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await source_ids(runtime, tenant) == [first.json()["sourceId"]]


async def test_same_key_on_another_route_is_422(client, factory):
    tenant, key = await factory.tenant(), _key()
    source = await factory.source(client, tenant)
    await client.post(
        SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
    )
    body = {"name": "feed", "sourceType": "scanner", "enabled": True, "projectId": None, "description": None}
    response = await client.put(
        f"{SOURCES}/{source['sourceId']}", json=body, headers=_headers(factory, tenant, key)
    )
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"


async def test_same_key_and_body_under_another_project_header_is_422(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner"}
    first = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key, project="alpha"))
    other = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key, project="beta"))
    assert first.status_code == 201
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await source_ids(runtime, tenant) == [first.json()["sourceId"]]


async def test_same_key_while_the_first_request_is_in_flight_is_409(client, factory, runtime, monkeypatch):
    tenant, key = await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner"}
    entered, release = asyncio.Event(), asyncio.Event()
    original = sources_service.create_source
    calls = 0

    async def held_create(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # only the first request is held inside its handler
            entered.set()
            await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(sources_service, "create_source", held_create)
    first = asyncio.create_task(client.post(SOURCES, json=body, headers=_headers(factory, tenant, key)))
    try:
        await asyncio.wait_for(entered.wait(), timeout=10)
        same = await asyncio.wait_for(
            client.post(SOURCES, json=body, headers=_headers(factory, tenant, key)), 10
        )
        other = await asyncio.wait_for(
            client.post(
                SOURCES, json={"name": "x", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
            ),
            10,
        )
    finally:
        release.set()
        first_response = await asyncio.wait_for(first, timeout=10)
    assert same.status_code == 409
    assert same.json()["code"] == "idempotency_in_flight"
    assert int(same.headers["retry-after"]) >= 1
    assert other.status_code == 422
    assert first_response.status_code == 201
    assert calls == 1
    after = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
    assert (after.status_code, after.content) == (201, first_response.content)
    assert await source_ids(runtime, tenant) == [first_response.json()["sourceId"]]


async def test_concurrent_requests_with_one_key_create_exactly_one_source(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner"}
    responses = await asyncio.gather(
        *(client.post(SOURCES, json=body, headers=_headers(factory, tenant, key)) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = {r.content for r in responses if r.status_code == 201}
    assert len(created) == 1  # every 201 is the one first response
    assert len(await source_ids(runtime, tenant)) == 1


async def test_keys_are_per_subject(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner"}
    alice = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key, subject="alice"))
    bob = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key, subject="bob"))
    assert alice.status_code == bob.status_code == 201
    assert "idempotent-replayed" not in bob.headers
    assert alice.json()["sourceId"] != bob.json()["sourceId"]
    assert len(await source_ids(runtime, tenant)) == 2


async def test_keys_are_per_tenant(client, factory, runtime):
    first, second, key = await factory.tenant(), await factory.tenant(), _key()
    body = {"name": "feed", "sourceType": "scanner", "sourceId": "same-id"}
    grants = [first, second]
    one = await client.post(SOURCES, json=body, headers=_headers(factory, first, key, tenants=grants))
    two = await client.post(SOURCES, json=body, headers=_headers(factory, second, key, tenants=grants))
    assert one.status_code == two.status_code == 201
    assert "idempotent-replayed" not in two.headers
    assert await source_ids(runtime, first) == await source_ids(runtime, second) == ["same-id"]


async def test_failed_first_request_releases_the_key(client, factory, runtime):
    tenant, key = await factory.tenant(), _key()
    await factory.source(client, tenant, sourceId="taken")
    conflict = {"name": "feed", "sourceType": "scanner", "sourceId": "taken"}
    failed = await client.post(SOURCES, json=conflict, headers=_headers(factory, tenant, key))
    assert (failed.status_code, failed.json()["code"]) == (409, "source_exists")
    retried = await client.post(SOURCES, json=conflict, headers=_headers(factory, tenant, key))
    assert (retried.status_code, retried.json()["code"]) == (409, "source_exists")
    assert "idempotent-replayed" not in retried.headers  # executed again, not replayed
    fixed = await client.post(
        SOURCES, json={**conflict, "sourceId": "fresh"}, headers=_headers(factory, tenant, key)
    )
    assert fixed.status_code == 201  # not 422: the failed requests left no claim on the key
    assert await source_ids(runtime, tenant) == ["fresh", "taken"]


async def test_request_refused_by_validation_releases_the_key(client, factory):
    tenant, key = await factory.tenant(), _key()
    invalid = await client.post(SOURCES, json={"name": ""}, headers=_headers(factory, tenant, key))
    assert invalid.status_code == 400
    valid = await client.post(
        SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
    )
    assert valid.status_code == 201


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"k" * 200, id="200-characters"),
        pytest.param(b"k" * 129, id="129-characters"),
        pytest.param(b"has space", id="space"),
        pytest.param(b"", id="empty"),
        pytest.param(b"tab\tkey", id="tab"),
        pytest.param("cl\u00e9".encode(), id="non-ascii"),
    ],
)
async def test_invalid_key_is_400_and_nothing_is_created(client, factory, runtime, key):
    tenant = await factory.tenant()
    headers = [(k.encode(), v.encode()) for k, v in factory.headers(tenant).items()] + [
        (b"Idempotency-Key", key)
    ]
    response = await client.post(SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"
    assert await source_ids(runtime, tenant) == []


async def test_two_key_headers_are_400(client, factory, runtime):
    tenant = await factory.tenant()
    headers = [(k.encode(), v.encode()) for k, v in factory.headers(tenant).items()]
    headers += [(b"Idempotency-Key", b"first-key"), (b"Idempotency-Key", b"second-key")]
    response = await client.post(SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=headers)
    assert (response.status_code, response.json()["code"]) == (400, "idempotency_key_invalid")


async def test_key_of_128_visible_characters_is_accepted(client, factory):
    tenant = await factory.tenant()
    key = "K" * 120 + "!~#$%&*+"
    response = await client.post(
        SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=_headers(factory, tenant, key)
    )
    assert response.status_code == 201


async def test_records_past_their_retention_are_purged_and_newer_ones_kept(client, factory, runtime):
    """The workers' purge step deletes records whose retention is over; the record of a key used
    within it still answers its retry."""
    tenant = await factory.tenant()
    body = {"name": "feed", "sourceType": "scanner"}
    for key in ("old-key", "new-key"):
        response = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, key))
        assert response.status_code == 201
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "old-key", IdempotencyRecord.tenant_id == (
                select(Tenant.id).where(Tenant.key == tenant).scalar_subquery()))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await purge_expired(runtime.sessions) >= 1

    async def keys() -> set[str]:
        async with runtime.sessions() as session:
            stmt = select(IdempotencyRecord.key).join(Tenant, Tenant.id == IdempotencyRecord.tenant_id)
            return set((await session.execute(stmt.where(Tenant.key == tenant))).scalars())

    assert await keys() == {"new-key"}
    again = await client.post(SOURCES, json=body, headers=_headers(factory, tenant, "new-key"))
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"

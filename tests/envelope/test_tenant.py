"""X-Stella-Tenant and X-Stella-Project: which tenant and project a request acts for."""

from __future__ import annotations

import jwt
import pytest

from tests.envelope import source_ids, without_trace

SOURCES = "/jobengine/sources"


def _with_raw_tenant(headers: dict[str, str], *values: bytes) -> list[tuple[bytes, bytes]]:
    """The headers with X-Stella-Tenant replaced by the given raw byte values."""
    raw = [(k.encode(), v.encode()) for k, v in headers.items() if k.lower() != "x-stella-tenant"]
    return raw + [(b"X-Stella-Tenant", value) for value in values]


async def test_missing_tenant_header_is_400_tenant_header_required(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    del headers["X-Stella-Tenant"]
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "tenant_header_required"


async def test_tenant_not_granted_by_the_token_is_403_tenant_forbidden(client, factory):
    tenant, other = await factory.tenant(), await factory.tenant()
    response = await client.get(SOURCES, headers=factory.headers(other, tenants=tenant))
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_forbidden"


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda key: key.capitalize().encode(), id="capitalised"),
        pytest.param(lambda key: key.upper().encode(), id="upper-case"),
        pytest.param(lambda key: b" " + key.encode(), id="leading-space"),
        pytest.param(lambda key: key.encode() + b"\t", id="trailing-tab"),
        pytest.param(lambda key: (key + "\u200b").encode(), id="zero-width-space-utf8"),
        pytest.param(lambda key: key.encode() + b"\xe2\x80", id="truncated-utf8"),
    ],
)
async def test_tenant_header_must_match_the_granted_tenant_byte_for_byte(client, factory, variant):
    tenant = await factory.tenant(prefix="acme")
    await factory.source(client, tenant)
    headers = _with_raw_tenant(factory.headers(tenant), variant(tenant))
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code in (400, 403)
    assert response.json()["code"] in {"tenant_header_required", "tenant_forbidden"}


async def test_tenant_granted_in_lower_case_refuses_the_capitalised_key_even_when_registered(client, factory):
    granted = await factory.tenant(prefix="acme")
    capitalised = await factory.tenant(prefix="Acme")  # a registered tenant the token does not grant
    headers = factory.headers(capitalised, tenants=[granted, capitalised.lower()])
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_forbidden"


async def test_two_different_tenant_headers_are_400(client, factory):
    first, second = await factory.tenant(), await factory.tenant()
    headers = _with_raw_tenant(
        factory.headers(first, tenants=[first, second]), first.encode(), second.encode()
    )
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "tenant_header_required"


async def test_the_same_tenant_header_twice_is_400(client, factory):
    tenant = await factory.tenant()
    headers = _with_raw_tenant(factory.headers(tenant), tenant.encode(), tenant.encode())
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code == 400


async def test_token_without_tenant_claim_is_403(client, factory, keys):
    tenant = await factory.tenant()
    token = keys.token(tenant=None, scope="orch:read")
    response = await client.get(
        SOURCES, headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_forbidden"


@pytest.mark.parametrize(
    "claim", [None, "", [], {"key": "x"}, 7], ids=["null", "empty", "empty-list", "object", "number"]
)
async def test_tenant_claim_null_or_not_naming_the_tenant_is_403(client, factory, keys, claim):
    tenant = await factory.tenant()
    claims = keys.claims(scope="orch:read")
    claims["tenant"] = claim
    token = jwt.encode(claims, keys.private["es-1"], algorithm="ES256", headers={"kid": "es-1"})
    response = await client.get(
        SOURCES, headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_forbidden"


async def test_token_granting_several_tenants_works_for_each_and_keeps_them_apart(client, factory):
    tenants = [await factory.tenant() for _ in range(3)]
    created = {t: await factory.source(client, t, name=f"feed of {t}") for t in tenants}
    for tenant in tenants:
        response = await client.get(SOURCES, headers=factory.headers(tenant, tenants=tenants))
        assert response.status_code == 200
        assert [s["sourceId"] for s in response.json()["items"]] == [created[tenant]["sourceId"]]


async def test_granted_but_unregistered_tenant_is_403_tenant_unknown(client, factory):
    unregistered = "unregistered-" + (await factory.tenant()).split("-", 1)[1]
    response = await client.get(SOURCES, headers=factory.headers(unregistered))
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_unknown"


async def test_other_tenants_source_is_404_identical_to_a_missing_one(client, factory):
    owner, other = await factory.tenant(), await factory.tenant()
    source = await factory.source(client, owner)
    headers = factory.headers(other)
    foreign = await client.get(f"{SOURCES}/{source['sourceId']}", headers=headers)
    missing = await client.get(f"{SOURCES}/no-such-source", headers=headers)
    assert foreign.status_code == missing.status_code == 404
    assert without_trace(foreign.json()) == without_trace(missing.json())
    assert foreign.headers["content-type"] == missing.headers["content-type"]


async def test_other_tenants_source_cannot_be_replaced_and_stays_unchanged(client, factory, runtime):
    owner, other = await factory.tenant(), await factory.tenant()
    source = await factory.source(client, owner, name="original")
    body = {
        "name": "hijacked",
        "sourceType": "scanner",
        "enabled": False,
        "projectId": None,
        "description": None,
    }
    foreign = await client.put(f"{SOURCES}/{source['sourceId']}", json=body, headers=factory.headers(other))
    missing = await client.put(f"{SOURCES}/no-such-source", json=body, headers=factory.headers(other))
    assert foreign.status_code == missing.status_code == 404
    assert without_trace(foreign.json()) == without_trace(missing.json())
    after = await client.get(f"{SOURCES}/{source['sourceId']}", headers=factory.headers(owner))
    assert after.json()["name"] == "original"
    assert await source_ids(runtime, other) == []


async def test_project_header_narrows_the_list(client, factory):
    tenant = await factory.tenant()
    alpha = await factory.source(client, tenant, name="a", projectId="alpha")
    beta = await factory.source(client, tenant, name="b", projectId="beta")
    unassigned = await factory.source(client, tenant, name="c")
    everything = await client.get(SOURCES, headers=factory.headers(tenant))
    assert {s["sourceId"] for s in everything.json()["items"]} == {
        alpha["sourceId"],
        beta["sourceId"],
        unassigned["sourceId"],
    }
    narrowed = await client.get(SOURCES, headers=factory.headers(tenant, project="alpha"))
    assert narrowed.status_code == 200
    assert [s["sourceId"] for s in narrowed.json()["items"]] == [alpha["sourceId"]]


async def test_source_of_another_project_is_404_under_a_project_header(client, factory):
    tenant = await factory.tenant()
    beta = await factory.source(client, tenant, projectId="beta")
    headers = factory.headers(tenant, project="alpha")
    foreign = await client.get(f"{SOURCES}/{beta['sourceId']}", headers=headers)
    missing = await client.get(f"{SOURCES}/no-such-source", headers=headers)
    assert foreign.status_code == missing.status_code == 404
    assert without_trace(foreign.json()) == without_trace(missing.json())
    own = await client.get(f"{SOURCES}/{beta['sourceId']}", headers=factory.headers(tenant, project="beta"))
    assert own.status_code == 200


async def test_source_of_another_project_cannot_be_replaced_under_a_project_header(client, factory):
    tenant = await factory.tenant()
    beta = await factory.source(client, tenant, name="original", projectId="beta")
    body = {
        "name": "moved",
        "sourceType": "scanner",
        "enabled": True,
        "projectId": "alpha",
        "description": None,
    }
    response = await client.put(
        f"{SOURCES}/{beta['sourceId']}", json=body, headers=factory.headers(tenant, project="alpha")
    )
    assert response.status_code == 404
    after = await client.get(f"{SOURCES}/{beta['sourceId']}", headers=factory.headers(tenant))
    assert (after.json()["name"], after.json()["projectId"]) == ("original", "beta")


async def test_create_with_a_project_id_other_than_the_project_header_is_refused(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(
        SOURCES,
        json={"name": "feed", "sourceType": "scanner", "projectId": "beta"},
        headers=factory.headers(tenant, project="alpha"),
    )
    assert response.status_code == 422
    assert response.json()["code"] == "project_mismatch"
    assert await source_ids(runtime, tenant) == []


async def test_replace_with_a_project_id_other_than_the_project_header_is_refused(client, factory):
    tenant = await factory.tenant()
    alpha = await factory.source(client, tenant, name="original", projectId="alpha")
    body = {
        "name": "moved",
        "sourceType": "scanner",
        "enabled": True,
        "projectId": "beta",
        "description": None,
    }
    response = await client.put(
        f"{SOURCES}/{alpha['sourceId']}", json=body, headers=factory.headers(tenant, project="alpha")
    )
    assert response.status_code == 422
    assert response.json()["code"] == "project_mismatch"
    after = await client.get(f"{SOURCES}/{alpha['sourceId']}", headers=factory.headers(tenant))
    assert (after.json()["name"], after.json()["projectId"]) == ("original", "alpha")


async def test_create_under_a_project_header_lands_in_that_project(client, factory):
    tenant = await factory.tenant()
    response = await client.post(
        SOURCES,
        json={"name": "feed", "sourceType": "scanner"},
        headers=factory.headers(tenant, project="alpha"),
    )
    assert response.status_code == 201
    assert response.json()["projectId"] == "alpha"


@pytest.mark.parametrize(
    "value", [b" alpha", b"al pha", b"alpha\xe2\x80\x8b", b""], ids=["space", "inner-space", "zwsp", "empty"]
)
async def test_malformed_project_header_is_400(client, factory, value):
    tenant = await factory.tenant()
    raw = [(k.encode(), v.encode()) for k, v in factory.headers(tenant).items()] + [
        (b"X-Stella-Project", value)
    ]
    response = await client.get(SOURCES, headers=raw)
    assert response.status_code == 400
    assert response.json()["code"] == "project_header_invalid"

"""Writing sources: POST registers (201, Location, ETag), PUT replaces in full and honours If-Match."""

from __future__ import annotations

from typing import Any

import pytest

LIST = "/jobengine/sources"


def full(**fields: Any) -> dict[str, Any]:
    body = {
        "name": "replaced",
        "sourceType": "feed",
        "enabled": False,
        "projectId": None,
        "description": None,
    }
    body.update(fields)
    return body


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["traceId"]
    return body


async def test_put_replaces_every_mutable_field(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(
        client, tenant, name="old", sourceType="scanner", description="kept?", projectId="billing"
    )
    path = f"{LIST}/{source['sourceId']}"
    body = full(name="new name", sourceType="feed.v2", enabled=False, projectId="scanner", description=None)
    response = await client.put(path, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    replaced = response.json()
    for key, value in body.items():
        assert replaced[key] == value
    assert replaced["sourceId"] == source["sourceId"]
    assert replaced["createdAt"] == source["createdAt"]
    assert replaced["updatedAt"] >= source["updatedAt"]
    assert (await client.get(path, headers=factory.headers(tenant))).json() == replaced


async def test_put_without_an_optional_field_sets_it_to_the_create_default(client, factory):
    """A PUT is a full replace that depends only on its body: an optional field left out takes the
    value a create without it would (``description`` none), not the stored one."""
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, description="replaced by the default")
    path = f"{LIST}/{source['sourceId']}"
    body = full()
    del body["description"]
    response = await client.put(path, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    assert response.json()["description"] is None
    assert (await client.get(path, headers=factory.headers(tenant))).json()["description"] is None


async def test_put_with_the_current_etag_in_if_match_is_200(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    path = f"{LIST}/{source['sourceId']}"
    etag = (await client.get(path, headers=factory.headers(tenant))).headers["etag"]
    response = await client.put(
        path, json=full(name="with if-match"), headers={**factory.headers(tenant), "If-Match": etag}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "with if-match"
    assert response.headers["etag"] != etag
    assert (
        response.headers["etag"] == (await client.get(path, headers=factory.headers(tenant))).headers["etag"]
    )


async def test_put_with_a_stale_etag_is_412_and_the_source_is_unchanged(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, name="original")
    path = f"{LIST}/{source['sourceId']}"
    stale = (await client.get(path, headers=factory.headers(tenant))).headers["etag"]
    first = await client.put(
        path, json=full(name="first writer"), headers={**factory.headers(tenant), "If-Match": stale}
    )
    assert first.status_code == 200
    second = await client.put(
        path, json=full(name="second writer"), headers={**factory.headers(tenant), "If-Match": stale}
    )
    assert_problem(second, 412, "precondition_failed")
    assert (await client.get(path, headers=factory.headers(tenant))).json() == first.json()


@pytest.mark.parametrize("if_match", ['"not-the-etag"', '""', "garbage"])
async def test_put_with_a_foreign_if_match_is_412(client, factory, if_match):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    path = f"{LIST}/{source['sourceId']}"
    response = await client.put(path, json=full(), headers={**factory.headers(tenant), "If-Match": if_match})
    assert_problem(response, 412, "precondition_failed")
    assert (await client.get(path, headers=factory.headers(tenant))).json() == source


async def test_put_with_if_match_star_replaces_an_existing_source(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    response = await client.put(
        f"{LIST}/{source['sourceId']}",
        json=full(name="starred"),
        headers={**factory.headers(tenant), "If-Match": "*"},
    )
    assert response.status_code == 200
    assert response.json()["name"] == "starred"


async def test_put_with_a_weak_form_of_the_current_etag_is_412(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    path = f"{LIST}/{source['sourceId']}"
    etag = (await client.get(path, headers=factory.headers(tenant))).headers["etag"]
    response = await client.put(
        path, json=full(), headers={**factory.headers(tenant), "If-Match": f"W/{etag}"}
    )
    assert response.status_code == 412


async def test_put_of_an_unknown_source_is_404(client, factory):
    tenant = await factory.tenant()
    response = await client.put(f"{LIST}/missing", json=full(), headers=factory.headers(tenant))
    assert_problem(response, 404, "not_found")


async def test_put_of_another_tenants_source_is_404_and_changes_nothing(client, factory):
    owner, other = await factory.tenant(), await factory.tenant()
    source = await factory.source(client, owner)
    path = f"{LIST}/{source['sourceId']}"
    response = await client.put(path, json=full(), headers=factory.headers(other))
    assert_problem(response, 404, "not_found")
    assert (await client.get(path, headers=factory.headers(owner))).json() == source


INVALID_BODIES = {
    "unknown-field": ({"bogus": 1}, "bogus"),
    "wrong-type-name": ({"name": 5}, "name"),
    "wrong-type-enabled": ({"enabled": "yes"}, "enabled"),
    "name-too-long": ({"name": "n" * 201}, "name"),
    "name-empty": ({"name": ""}, "name"),
    "bad-source-type": ({"sourceType": "Bad Type!"}, "sourceType"),
    "bad-project": ({"projectId": "../etc"}, "projectId"),
    "description-too-long": ({"description": "d" * 2001}, "description"),
}


@pytest.mark.parametrize("case", INVALID_BODIES, ids=list(INVALID_BODIES))
async def test_invalid_put_body_is_400_with_field_errors_and_nothing_written(client, factory, case):
    change, field = INVALID_BODIES[case]
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    path = f"{LIST}/{source['sourceId']}"
    response = await client.put(path, json=full(**change), headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert problem["errors"], problem
    assert all(set(error) == {"field", "message"} and error["message"] for error in problem["errors"])
    assert field in [error["field"] for error in problem["errors"]]
    assert (await client.get(path, headers=factory.headers(tenant))).json() == source


@pytest.mark.parametrize("case", INVALID_BODIES, ids=list(INVALID_BODIES))
async def test_invalid_post_body_is_400_with_field_errors_and_nothing_written(client, factory, case):
    change, field = INVALID_BODIES[case]
    tenant = await factory.tenant()
    body = {"name": "valid", "sourceType": "scanner", **change}
    response = await client.post(LIST, json=body, headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert field in [error["field"] for error in problem["errors"]]
    assert (await client.get(LIST, headers=factory.headers(tenant))).json()["items"] == []


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"[1, 2]", b'"text"'], ids=["malformed", "empty", "array", "string"]
)
async def test_body_that_is_not_a_json_object_is_a_400_problem(client, factory, body):
    tenant = await factory.tenant()
    response = await client.post(
        LIST, content=body, headers={**factory.headers(tenant), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "body"
    assert (await client.get(LIST, headers=factory.headers(tenant))).json()["items"] == []


async def test_post_with_an_existing_source_id_is_409_source_exists(client, factory):
    tenant = await factory.tenant()
    first = await factory.source(client, tenant, sourceId="feed-1", name="first")
    response = await client.post(
        LIST,
        json={"sourceId": "feed-1", "name": "second", "sourceType": "scanner"},
        headers=factory.headers(tenant),
    )
    assert_problem(response, 409, "source_exists")
    assert (await client.get(f"{LIST}/feed-1", headers=factory.headers(tenant))).json() == first


async def test_same_source_id_in_two_tenants_is_allowed(client, factory):
    first, second = await factory.tenant(), await factory.tenant()
    await factory.source(client, first, sourceId="shared-id")
    created = await factory.source(client, second, sourceId="shared-id", name="other")
    assert created["sourceId"] == "shared-id" and created["name"] == "other"


async def test_created_source_has_a_location_that_reads_it_and_the_etag_of_that_read(client, factory):
    tenant = await factory.tenant()
    response = await client.post(
        LIST,
        json={"name": "Located", "sourceType": "scanner", "description": "d", "projectId": "billing"},
        headers=factory.headers(tenant),
    )
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.endswith(f"/jobengine/sources/{response.json()['sourceId']}")
    read = await client.get(location, headers=factory.headers(tenant))
    assert read.status_code == 200
    assert read.json() == response.json()
    assert response.headers["etag"] == read.headers["etag"]


async def test_server_assigns_distinct_source_ids(client, factory):
    tenant = await factory.tenant()
    ids = {(await factory.source(client, tenant))["sourceId"] for _ in range(3)}
    assert len(ids) == 3


async def test_location_is_built_on_the_public_url(client, factory, runtime):
    tenant = await factory.tenant()
    created = await client.post(
        LIST, json={"name": "n", "sourceType": "scanner"}, headers=factory.headers(tenant)
    )
    assert created.status_code == 201
    expected = f"{runtime.settings.public_url}/jobengine/sources/{created.json()['sourceId']}"
    assert created.headers["location"] == expected


async def test_a_name_with_a_nul_character_is_a_400_and_nothing_is_written(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(
        "/jobengine/sources", json={"name": "a\u0000b", "sourceType": "scanner"}, headers=factory.headers(tenant)
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_failed"
    listed = await client.get("/jobengine/sources", headers=factory.headers(tenant))
    assert listed.json()["items"] == []

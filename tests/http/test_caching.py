"""Conditional GETs and cache headers: strong ETags over canonical content, 304, Cache-Control, Vary."""

from __future__ import annotations

from typing import Any

import pytest

from app.http.caching import etag_of, matches
from tests.conftest import make_app, serving

LIST = "/jobengine/sources"
CONSOLE = "private, max-age=60, stale-if-error=300"
VARY = "Authorization, X-Stella-Tenant, X-Stella-Project, Origin"


def assert_cacheable(response: Any) -> None:
    assert response.headers["cache-control"] == CONSOLE
    assert response.headers["vary"] == VARY
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")


async def test_same_content_gives_the_same_etag_from_two_separately_created_apps(
    gateway_env, factory, client
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, name="Scanner feed", description="nightly")
    headers = factory.headers(tenant)
    tags = []
    for _ in range(2):
        async with serving(make_app(gateway_env)) as other:
            listed = await other.get(LIST, headers=headers)
            detail = await other.get(f"{LIST}/{source['sourceId']}", headers=headers)
            assert listed.status_code == detail.status_code == 200
            tags.append((listed.headers["etag"], detail.headers["etag"], listed.content, detail.content))
    assert tags[0] == tags[1]
    assert tags[0][0] != tags[0][1]


async def test_etag_does_not_depend_on_the_order_of_keys():
    assert etag_of({"b": 1, "a": [1, {"y": 2, "x": 3}]}) == etag_of({"a": [1, {"x": 3, "y": 2}], "b": 1})
    assert etag_of({"a": 1}) != etag_of({"a": 2})


async def test_if_none_match_with_the_etag_is_304_with_empty_body_and_cache_headers(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    headers = factory.headers(tenant)
    for path in (LIST, f"{LIST}/{source['sourceId']}"):
        first = await client.get(path, headers=headers)
        assert first.status_code == 200
        assert_cacheable(first)
        etag = first.headers["etag"]
        again = await client.get(path, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert_cacheable(again)
        assert "content-type" not in again.headers or not again.content


@pytest.mark.parametrize("form", ["*", "list", "weak", "list-with-spaces"])
async def test_star_and_lists_containing_the_tag_are_304(client, factory, form):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(LIST, headers=headers)).headers["etag"]
    value = {
        "*": "*",
        "list": f'"other", {etag}',
        "weak": f"W/{etag}",
        "list-with-spaces": f'  "a"  ,W/"b",   {etag}  ',
    }[form]
    response = await client.get(LIST, headers={**headers, "If-None-Match": value})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


@pytest.mark.parametrize("value", ['"nope"', '"a", "b"', 'W/"nope"', "", "garbage"])
async def test_if_none_match_without_the_tag_is_200_with_body(client, factory, value):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    response = await client.get(LIST, headers={**headers, "If-None-Match": value})
    assert response.status_code == 200
    assert response.json()["items"]


async def test_etag_of_a_tag_prefix_or_unquoted_tag_does_not_match(client, factory):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(LIST, headers=headers)).headers["etag"]
    for value in (etag[:-2] + '"', etag.strip('"'), etag + etag):
        response = await client.get(LIST, headers={**headers, "If-None-Match": value})
        assert response.status_code == 200, value


async def test_a_new_source_changes_the_list_etag(client, factory):
    tenant = await factory.tenant()
    await factory.source(client, tenant, name="first")
    headers = factory.headers(tenant)
    before = (await client.get(LIST, headers=headers)).headers["etag"]
    await factory.source(client, tenant, name="second")
    after = await client.get(LIST, headers={**headers, "If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["etag"] != before
    assert [s["name"] for s in after.json()["items"]] == ["first", "second"]


async def test_a_put_changes_the_etag_of_the_source_and_the_list(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, name="before")
    headers = factory.headers(tenant)
    path = f"{LIST}/{source['sourceId']}"
    detail_before = (await client.get(path, headers=headers)).headers["etag"]
    list_before = (await client.get(LIST, headers=headers)).headers["etag"]
    body = {"name": "after", "sourceType": "scanner", "enabled": True, "projectId": None, "description": None}
    put = await client.put(path, json=body, headers=headers)
    assert put.status_code == 200, put.text
    detail_after = await client.get(path, headers={**headers, "If-None-Match": detail_before})
    list_after = await client.get(LIST, headers={**headers, "If-None-Match": list_before})
    assert detail_after.status_code == list_after.status_code == 200
    assert detail_after.headers["etag"] not in (detail_before, list_before)
    assert list_after.headers["etag"] != list_before
    assert detail_after.headers["etag"] == put.headers["etag"]


async def test_etag_differs_between_tenants_with_different_content(client, factory):
    first, second = await factory.tenant(), await factory.tenant()
    await factory.source(client, first, name="a")
    await factory.source(client, second, name="b")
    tag_first = (await client.get(LIST, headers=factory.headers(first))).headers["etag"]
    response = await client.get(LIST, headers={**factory.headers(second), "If-None-Match": tag_first})
    assert response.status_code == 200


async def test_get_responses_carry_console_cache_control_and_vary(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    for path in (LIST, f"{LIST}/{source['sourceId']}", f"{LIST}?limit=1&sourceType=scanner"):
        response = await client.get(path, headers=factory.headers(tenant, project=None))
        assert response.status_code == 200
        assert_cacheable(response)


async def test_mutations_carry_no_store(client, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    created = await client.post(LIST, json={"name": "n", "sourceType": "scanner"}, headers=headers)
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    body = {"name": "m", "sourceType": "scanner", "enabled": False, "projectId": None, "description": None}
    replaced = await client.put(f"{LIST}/{created.json()['sourceId']}", json=body, headers=headers)
    assert replaced.status_code == 200
    assert replaced.headers["cache-control"] == "no-store"
    refused = await client.post(LIST, json={"name": ""}, headers=headers)
    assert refused.status_code == 400
    assert refused.headers["cache-control"] == "no-store"


async def test_error_responses_are_not_cacheable_and_carry_no_etag(client, factory):
    tenant = await factory.tenant()
    response = await client.get(f"{LIST}/missing", headers=factory.headers(tenant))
    assert response.status_code == 404
    assert response.headers["cache-control"] == "no-store"
    assert "etag" not in response.headers


def test_if_match_comparison_is_strong_when_asked():
    assert matches('"a"', '"a"', strong=True)
    assert matches("*", '"a"', strong=True)
    assert not matches('W/"a"', '"a"', strong=True)
    assert matches('W/"a"', '"a"')
    assert not matches(None, '"a"')


async def test_a_multi_page_list_keeps_its_etag_as_time_passes_and_revalidates(client, factory, runtime, monkeypatch):
    tenant = await factory.tenant()
    for name in ("a", "b", "c"):
        await factory.source(client, tenant, name=name)
    hour = 1_800_000_000 // 3600 * 3600
    now = [hour + 10.0]
    monkeypatch.setattr(runtime.cursors, "_clock", lambda: now[0])
    first = await client.get("/jobengine/sources?limit=2", headers=factory.headers(tenant))
    assert first.json()["continuationToken"]
    now[0] += 1800  # half an hour later, same content
    later = await client.get("/jobengine/sources?limit=2", headers=factory.headers(tenant))
    assert later.headers["etag"] == first.headers["etag"]
    revalidated = await client.get(
        "/jobengine/sources?limit=2", headers={**factory.headers(tenant), "If-None-Match": first.headers["etag"]}
    )
    assert revalidated.status_code == 304

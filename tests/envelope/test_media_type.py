"""A JSON body is sent as ``application/json`` (with or without a charset); anything else is 415."""

from __future__ import annotations

import json

import pytest

from tests.envelope import source_ids

SOURCES = "/jobengine/sources"
BODY = json.dumps({"name": "feed", "sourceType": "scanner"}).encode()


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None],
)
async def test_a_json_body_under_another_media_type_is_415(client, factory, runtime, content_type):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(SOURCES, content=BODY, headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unsupported_media_type"
    assert await source_ids(runtime, tenant) == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_a_json_body_as_json_is_accepted(client, factory, content_type):
    tenant = await factory.tenant()
    headers = {**factory.headers(tenant), "Content-Type": content_type}
    assert (await client.post(SOURCES, content=BODY, headers=headers)).status_code == 201


async def test_a_post_without_a_body_needs_no_media_type(client, factory):
    tenant = await factory.tenant()
    response = await client.post("/jobengine/quotas/no-such-quota/pause", headers=factory.headers(tenant))
    assert response.status_code == 404

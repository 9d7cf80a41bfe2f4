"""A value the database cannot take (a NUL character) is the client's error: 400, never 500."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/jobengine/deadletter?errorCode=%00", None),
        ("GET", "/jobengine/sources/a%00b", None),
        ("GET", "/jobengine/audit?action=%00", None),
        ("POST", "/jobengine/deadletter/replay/pending", {"filter": {"errorCode": "\u0000x"}}),
        ("POST", "/jobengine/deadletter/replay/batch", {"entryIds": ["a\u0000"]}),
    ],
)
async def test_a_nul_character_in_a_filter_id_or_body_is_a_400_problem(client, factory, method, path, body):
    tenant = await factory.tenant()
    response = await client.request(method, path, headers=factory.headers(tenant), json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "validation_failed"

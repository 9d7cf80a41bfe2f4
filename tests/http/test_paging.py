"""Paging of GET /jobengine/sources: keyset order, strict limits and continuation tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.storage.models import Source

LIST = "/jobengine/sources"


async def insert_sources(runtime: Any, tenant: str, rows: list[dict[str, Any]]) -> None:
    """Rows straight into the database (fast); each dict gives at least ``source_id``."""
    info = await runtime.tenants.get(tenant)
    now = datetime.now(UTC)
    async with runtime.sessions.begin() as session:
        session.add_all(
            Source(
                tenant_id=info.id,
                source_id=row["source_id"],
                project_id=row.get("project_id"),
                name=row.get("name", "same name"),
                source_type=row.get("source_type", "scanner"),
                enabled=row.get("enabled", True),
                description=None,
                created_at=now,
                updated_at=now,
                last_job_at=None,
                jobs_submitted=0,
                jobs_active=0,
                jobs_failed=0,
            )
            for row in rows
        )


async def walk(client: Any, headers: dict[str, str], params: dict[str, Any], *, between=None) -> list[str]:  # type: ignore[no-untyped-def]
    """Every page of the list; ``between(page_number, seen_so_far)`` runs after each page is read."""
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        query = {**params, **({"continuationToken": token} if token else {})}
        response = await client.get(LIST, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        seen.extend(item["sourceId"] for item in body["items"])
        token = body["continuationToken"]
        pages += 1
        if between is not None:
            await between(pages, seen)
        if token is None:
            return seen
        assert len(body["items"]) == params.get("limit", 50)
        assert pages < 10_000


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code


async def first_token(client: Any, headers: dict[str, str], **params: Any) -> str:
    response = await client.get(LIST, params={"limit": 1, **params}, headers=headers)
    assert response.status_code == 200, response.text
    token = response.json()["continuationToken"]
    assert token
    return token


async def test_thousand_sources_with_equal_names_walked_seven_at_a_time_yield_each_once_in_order(
    client, factory, runtime
):
    tenant = await factory.tenant()
    ids = [f"src{i:04d}" for i in range(1000)]
    await insert_sources(runtime, tenant, [{"source_id": i} for i in reversed(ids)])
    seen = await walk(client, factory.headers(tenant), {"limit": 7})
    assert len(seen) == 1000
    assert seen == ids  # (name asc, sourceId asc) with all names equal: sourceId order, each once


async def test_order_is_name_then_source_id(client, factory, runtime):
    tenant = await factory.tenant()
    rows = [("b", "1"), ("a", "9"), ("b", "0"), ("a", "10"), ("c", "00")]
    await insert_sources(runtime, tenant, [{"name": n, "source_id": s} for n, s in rows])
    seen = await walk(client, factory.headers(tenant), {"limit": 2})
    assert seen == [s for _, s in sorted(rows)]


async def test_inserts_during_the_walk_skip_no_row_that_existed_before(client, factory, runtime):
    tenant = await factory.tenant()
    ids = [f"src{i:04d}" for i in range(200)]
    await insert_sources(runtime, tenant, [{"source_id": i} for i in ids])
    behind: list[str] = []
    ahead: list[str] = []

    async def insert_around_the_cursor(page: int, seen: list[str]) -> None:
        if page % 4 or seen[-1] not in ids or ids.index(seen[-1]) + 8 >= len(ids):
            return
        cursor = ids.index(seen[-1])  # the last row served so far
        new_behind = [ids[0] + f"x{page}", ids[cursor - 1] + f"x{page}", f"a{page}"]
        new_ahead = [ids[cursor] + f"x{page}", ids[cursor + 7] + f"x{page}", ids[-1] + f"x{page}", f"z{page}"]
        await insert_sources(
            runtime,
            tenant,
            [{"source_id": s} for s in new_behind[:2] + new_ahead[:3]]
            + [
                {"source_id": new_behind[2], "name": "a name before"},
                {"source_id": new_ahead[3], "name": "z after"},
            ],
        )
        behind.extend(new_behind)
        ahead.extend(new_ahead)

    seen = await walk(client, factory.headers(tenant), {"limit": 7}, between=insert_around_the_cursor)
    assert behind and ahead
    assert [s for s in seen if s in set(ids)] == ids  # every original row exactly once, in order
    assert len(seen) == len(set(seen))
    assert set(ahead) <= set(seen)  # rows inserted ahead of the cursor are reached
    assert not set(behind) & set(seen)  # rows inserted behind it are not served out of order


async def test_token_with_a_flipped_byte_is_400(client, factory, runtime):
    tenant = await factory.tenant()
    await insert_sources(runtime, tenant, [{"source_id": f"s{i}"} for i in range(3)])
    headers = factory.headers(tenant)
    token = await first_token(client, headers)
    assert (
        await client.get(LIST, params={"limit": 1, "continuationToken": token}, headers=headers)
    ).status_code == 200
    for index in (0, len(token) // 2, len(token) - 1):
        flipped = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        response = await client.get(LIST, params={"limit": 1, "continuationToken": flipped}, headers=headers)
        assert_problem(response, 400, "invalid_continuation_token")


async def test_another_tenants_token_is_400(client, factory, runtime):
    owner, other = await factory.tenant(), await factory.tenant()
    for tenant in (owner, other):
        await insert_sources(runtime, tenant, [{"source_id": f"s{i}"} for i in range(3)])
    token = await first_token(client, factory.headers(owner))
    response = await client.get(
        LIST, params={"limit": 1, "continuationToken": token}, headers=factory.headers(other)
    )
    assert_problem(response, 400, "invalid_continuation_token")


async def test_token_granted_for_two_tenants_is_bound_to_the_one_it_was_issued_for(client, factory, runtime):
    first, second = await factory.tenant(), await factory.tenant()
    for tenant in (first, second):
        await insert_sources(runtime, tenant, [{"source_id": f"s{i}"} for i in range(3)])
    token = await first_token(client, factory.headers(first, tenants=[first, second]))
    response = await client.get(
        LIST,
        params={"limit": 1, "continuationToken": token},
        headers=factory.headers(second, tenants=[first, second]),
    )
    assert_problem(response, 400, "invalid_continuation_token")


@pytest.mark.parametrize(
    ("issued_with", "used_with"),
    [
        ({"sourceType": "scanner"}, {"sourceType": "feed"}),
        ({"sourceType": "scanner"}, {}),
        ({}, {"sourceType": "scanner"}),
        ({"enabled": "true"}, {"enabled": "false"}),
        ({"enabled": "true"}, {}),
        ({}, {"enabled": "false"}),
    ],
    ids=["other-type", "type-dropped", "type-added", "other-enabled", "enabled-dropped", "enabled-added"],
)
async def test_token_from_another_filter_is_400(client, factory, runtime, issued_with, used_with):
    tenant = await factory.tenant()
    await insert_sources(
        runtime,
        tenant,
        [
            {"source_id": f"s{i}", "source_type": t, "enabled": e}
            for i, (t, e) in enumerate(
                [(t, e) for t in ("scanner", "feed") for e in (True, False) for _ in range(2)]
            )
        ],
    )
    headers = factory.headers(tenant)
    token = await first_token(client, headers, **issued_with)
    same = await client.get(
        LIST, params={"limit": 1, "continuationToken": token, **issued_with}, headers=headers
    )
    assert same.status_code == 200
    response = await client.get(
        LIST, params={"limit": 1, "continuationToken": token, **used_with}, headers=headers
    )
    assert_problem(response, 400, "invalid_continuation_token")


async def test_filters_narrow_the_walk(client, factory, runtime):
    tenant = await factory.tenant()
    rows = [
        {"source_id": f"s{i:02d}", "source_type": "feed" if i % 3 else "scanner", "enabled": i % 2 == 0}
        for i in range(30)
    ]
    await insert_sources(runtime, tenant, rows)
    headers = factory.headers(tenant)
    seen = await walk(client, headers, {"limit": 4, "sourceType": "feed", "enabled": "false"})
    assert seen == [r["source_id"] for r in rows if r["source_type"] == "feed" and not r["enabled"]]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "", "1.5", "99999999999999999999"])
async def test_limit_outside_1_to_200_is_a_400_problem_never_clamped(client, factory, runtime, limit):
    tenant = await factory.tenant()
    response = await client.get(LIST, params={"limit": limit}, headers=factory.headers(tenant))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 400 and body["code"] and body["traceId"]
    assert any(error["field"] == "limit" for error in body.get("errors", [])), body


@pytest.mark.parametrize("limit", [1, 200])
async def test_limit_1_and_200_are_accepted(client, factory, runtime, limit):
    tenant = await factory.tenant()
    await insert_sources(runtime, tenant, [{"source_id": f"s{i:03d}"} for i in range(201)])
    response = await client.get(LIST, params={"limit": limit}, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == limit
    assert response.json()["continuationToken"]


async def test_default_limit_is_50(client, factory, runtime):
    tenant = await factory.tenant()
    await insert_sources(runtime, tenant, [{"source_id": f"s{i:03d}"} for i in range(51)])
    first = (await client.get(LIST, headers=factory.headers(tenant))).json()
    assert len(first["items"]) == 50
    rest = await client.get(
        LIST, params={"continuationToken": first["continuationToken"]}, headers=factory.headers(tenant)
    )
    assert [i["sourceId"] for i in rest.json()["items"]] == ["s050"]
    assert rest.json()["continuationToken"] is None


async def test_exact_multiple_of_the_limit_ends_without_an_empty_page(client, factory, runtime):
    tenant = await factory.tenant()
    await insert_sources(runtime, tenant, [{"source_id": f"s{i}"} for i in range(6)])
    response = await client.get(LIST, params={"limit": 6}, headers=factory.headers(tenant))
    assert len(response.json()["items"]) == 6
    assert response.json()["continuationToken"] is None


async def test_empty_list_has_no_token(client, factory):
    tenant = await factory.tenant()
    response = await client.get(LIST, headers=factory.headers(tenant))
    assert response.status_code == 200
    assert response.json() == {"items": [], "continuationToken": None}


async def test_project_header_narrows_every_page_and_binds_the_token(client, factory, runtime):
    tenant = await factory.tenant()
    rows = [{"source_id": f"s{i:02d}", "project_id": ["billing", "scanner", None][i % 3]} for i in range(30)]
    await insert_sources(runtime, tenant, rows)
    billing = await walk(client, factory.headers(tenant, project="billing"), {"limit": 3})
    assert billing == [r["source_id"] for r in rows if r["project_id"] == "billing"]
    everything = await walk(client, factory.headers(tenant), {"limit": 7})
    assert everything == [r["source_id"] for r in rows]

    token = await first_token(client, factory.headers(tenant, project="billing"))
    for other in (factory.headers(tenant, project="scanner"), factory.headers(tenant)):
        response = await client.get(LIST, params={"limit": 1, "continuationToken": token}, headers=other)
        assert_problem(response, 400, "invalid_continuation_token")


async def test_overlong_token_is_400(client, factory):
    tenant = await factory.tenant()
    response = await client.get(
        LIST, params={"continuationToken": "x" * 5000}, headers=factory.headers(tenant)
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")

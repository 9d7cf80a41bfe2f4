"""Direct reads (``app/http/direct.py``) answer exactly what the framework's path answers.

Two gateways on one database: the app as built (its read routes answered directly where the
request is usual) and the same app with no direct reads (every request through the framework's
dependency and signature machinery). Every request goes to both with the same trace id; status,
headers and body must be equal, and the direct gateway must have taken the direct path where the
request is usual and left the rest to the framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from app.domain.deadletter import service as deadletter_service
from app.domain.operations import service as operations
from app.http import direct
from tests.api.rows import Rows, at, tenant_rows
from tests.conftest import make_app, serving
from tests.operations.support import add_run, tenant_of

TRACE = "direct-read-equivalence-0001"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def framework(gateway_env: dict[str, str]) -> AsyncIterator[Any]:
    """A gateway that answers every request through the framework."""
    app = make_app(gateway_env)
    app.state.envelope.direct_reads.clear()
    async with serving(app) as client:
        yield client


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each direct read answered: ``direct``, or ``framework`` (an unusual request)."""
    decided: list[str] = []
    answer = direct.DirectRead.answer

    async def recorded(self: direct.DirectRead, scope: Any, receive: Any, send: Any, *, otherwise: Any) -> int:
        left = False

        async def framework_path(*args: Any) -> int:
            nonlocal left
            left = True
            return await otherwise(*args)

        try:
            return await answer(self, scope, receive, send, otherwise=framework_path)
        finally:  # also when the handler raises its problem
            decided.append("framework" if left else "direct")

    monkeypatch.setattr(direct.DirectRead, "answer", recorded)
    return decided


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """Operation runs are projected, and dead-letter ages counted, at request time: one instant
    for both gateways."""
    now = datetime.now(UTC).replace(microsecond=0)
    monkeypatch.setattr(operations, "now_utc", lambda: now)
    monkeypatch.setattr(deadletter_service, "now_utc", lambda: now)
    return now


async def both(client: Any, framework: Any, url: str, headers: dict[str, str]) -> Any:
    headers = {**headers, "X-Stella-Trace-Id": TRACE}
    fast = await client.get(url, headers=headers)
    slow = await framework.get(url, headers=headers)
    assert fast.status_code == slow.status_code, (url, fast.text, slow.text)
    assert sorted(fast.headers.multi_items()) == sorted(slow.headers.multi_items()), url
    assert fast.content == slow.content, url
    return fast


async def seeded(runtime: Any, factory: Any) -> tuple[str, Rows, dict[str, str]]:
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(
        *(rows.source(name=f"s{i % 3}", enabled=i % 2 == 0, project_id="billing" if i % 4 == 0 else None) for i in range(7)),
        *(rows.quota(f"type.{i}", paused=i % 3 == 0) for i in range(5)),
        *(rows.job(job_type=f"type.{i % 2}", status="pending" if i % 2 else "succeeded") for i in range(6)),
        *(rows.entry(f"timeout after {i} ms", dead_lettered_at=at(i), error_code=f"E{i % 2}") for i in range(6)),
        *(rows.pack_run(pack_name=f"pack-{i % 2}") for i in range(4)),
        *(rows.audit(action="quota.pause", target=f"quota-{i}") for i in range(4)),
    )
    info = await tenant_of(runtime, tenant)
    for status in ("running", "completed", "queued"):
        await add_run(runtime, info, status=status, outcome="succeeded" if status == "completed" else "pending", age=600)
    return tenant, rows, {"tenant": str(info.id)}


USUAL = [
    "/jobengine/sources",
    "/jobengine/sources?limit=2",
    "/jobengine/sources?limit=3&enabled=true&sourceType=scanner",
    "/jobengine/sources?enabled=false",
    "/jobengine/quotas?limit=2&paused=false",
    "/jobengine/quotas?jobType=type.1",
    "/jobengine/quotas/summary",
    "/jobengine/jobs?limit=4&status=pending",
    "/jobengine/jobs?jobType=type.0&sourceId=src-a",
    "/jobengine/jobs/summary?jobType=type.1",
    "/jobengine/deadletter?limit=2&errorCode=E1",
    "/jobengine/deadletter?deadLetteredFrom=2026-01-01T00:02:00Z",
    "/jobengine/deadletter/summary?limit=1",
    "/jobengine/deadletter/stats",
    "/jobengine/pack-runs?packName=pack-1",
    "/jobengine/audit?limit=2&action=quota.pause",
    "/api/admin/operations?limit=2",
    "/api/admin/operations?status=running&tenant_id={tenant}",
    "/admin/t/{tenant}/dashboard",
    "/admin/t/{tenant}/operations/progress",
    "/admin/operations?tenant={tenant}",
]

# Each refused or read differently by the framework than by a canonical reading.
UNUSUAL = [
    "/jobengine/sources?limit=02",
    "/jobengine/sources?limit=+2",
    "/jobengine/sources?limit=0",
    "/jobengine/sources?limit=1000000",
    "/jobengine/sources?limit=2&limit=3",
    "/jobengine/sources?limit=x",
    "/jobengine/sources?enabled=1",
    "/jobengine/sources?enabled=TRUE",
    "/jobengine/sources?enabled=maybe",
    "/jobengine/sources?sourceType=",
    "/jobengine/sources?sourceType=" + "x" * 65,
    "/jobengine/sources?unknown=1",
    "/jobengine/quotas?paused=0",
    "/jobengine/jobs?status=sleeping",
    "/jobengine/deadletter?status=Pending",
    "/jobengine/sources/" + "x" * 65,
    "/api/admin/operations?tenant_id=-1",
    "/api/admin/operations?tenant_id=1e3",
]

# Usual requests the handler itself refuses: its problem, through the same exception handler.
REFUSED = [
    "/jobengine/sources?continuationToken=not-a-token",
    "/jobengine/deadletter?deadLetteredFrom=yesterday",
    "/jobengine/sources/no-such-source",
    "/jobengine/quotas/no-such-quota",
    "/api/admin/operations/999999999",
]


@pytest.mark.parametrize("url", USUAL)
async def test_a_usual_read_is_answered_directly_with_the_frameworks_answer(
    client, framework, factory, runtime, taken, fixed_now, url
):
    tenant, _, values = await seeded(runtime, factory)
    response = await both(client, framework, url.format(**values), factory.headers(tenant))
    assert response.status_code == 200
    assert taken == ["direct"]


@pytest.mark.parametrize("url", UNUSUAL)
async def test_an_unusual_read_is_left_to_the_framework(client, framework, factory, runtime, taken, url):
    tenant, _, values = await seeded(runtime, factory)
    await both(client, framework, url.format(**values), factory.headers(tenant))
    assert taken == ["framework"]


@pytest.mark.parametrize("url", REFUSED)
async def test_a_problem_of_the_handler_is_the_frameworks_problem(client, framework, factory, runtime, taken, url):
    tenant, _, _ = await seeded(runtime, factory)
    response = await both(client, framework, url, factory.headers(tenant))
    assert response.status_code in (400, 404)
    assert response.headers["content-type"] == "application/problem+json"
    assert taken == ["direct"]


async def test_details_next_pages_projects_and_revalidation_match(client, framework, factory, runtime, taken):
    tenant, rows, _ = await seeded(runtime, factory)
    source = rows.source(name="detail", project_id="billing")
    await rows.add(source)
    headers = factory.headers(tenant)

    first = await both(client, framework, "/jobengine/sources?limit=2", headers)
    token = first.json()["continuationToken"]
    assert token
    await both(client, framework, f"/jobengine/sources?limit=2&continuationToken={token}", headers)
    await both(client, framework, f"/jobengine/sources/{source.source_id}", headers)
    billing = await both(client, framework, "/jobengine/sources", factory.headers(tenant, project="billing"))
    assert {item["projectId"] for item in billing.json()["items"]} == {"billing"}

    etag = first.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        revalidated = await both(client, framework, "/jobengine/sources?limit=2", {**headers, "If-None-Match": if_none_match})
        assert revalidated.status_code == 304
        assert revalidated.content == b""
    changed = await both(client, framework, "/jobengine/sources?limit=2", {**headers, "If-None-Match": '"stale"'})
    assert changed.status_code == 200
    assert taken == ["direct"] * 9


async def test_several_if_none_match_headers_are_left_to_the_framework(client, framework, factory, runtime, taken):
    tenant, _, _ = await seeded(runtime, factory)
    headers = factory.headers(tenant)
    etag = (await client.get("/jobengine/quotas", headers=headers)).headers["etag"]
    taken.clear()
    several = [*headers.items(), ("X-Stella-Trace-Id", TRACE), ("If-None-Match", '"other"'), ("If-None-Match", etag)]
    fast = await client.get("/jobengine/quotas", headers=several)
    slow = await framework.get("/jobengine/quotas", headers=several)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    assert sorted(fast.headers.multi_items()) == sorted(slow.headers.multi_items())
    assert taken == ["framework"]


async def test_refusals_of_the_envelope_are_unchanged(client, framework, factory, runtime, taken):
    tenant, _, _ = await seeded(runtime, factory)
    missing_scope = await both(client, framework, "/jobengine/quotas", factory.headers(tenant, scope="orch:read"))
    assert missing_scope.status_code == 403
    unauthenticated = await both(client, framework, "/jobengine/quotas", {"X-Stella-Tenant": tenant})
    assert unauthenticated.status_code == 401
    assert taken == []  # refused before any handler


def test_every_read_route_is_planned(app):
    planned = {path for handler in app.state.envelope.direct_reads for path in handler.paths}
    reads = {
        path
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.http_methods == {"GET"} and handler.opt.get("scope")
        for path in handler.paths
    }
    assert planned == reads
    assert len(reads) == 21


async def test_a_head_request_is_not_answered_directly(client, framework, factory, runtime, taken):
    tenant, _, _ = await seeded(runtime, factory)
    headers = {**factory.headers(tenant), "X-Stella-Trace-Id": TRACE}
    fast = await client.head("/jobengine/quotas", headers=headers)
    slow = await framework.head("/jobengine/quotas", headers=headers)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    assert sorted(fast.headers.multi_items()) == sorted(slow.headers.multi_items())
    assert fast.content == b""
    assert "direct" not in taken

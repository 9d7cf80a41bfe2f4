"""Errors: every one is RFC 9457 problem+json with a stable code and the trace id; never a 500 leak."""

from __future__ import annotations

from typing import Any

from app.domain.sources import service
from tests.conftest import make_app, serving

LIST = "/jobengine/sources"
FIELDS = {"type", "title", "status", "detail", "code", "traceId"}
CLOSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
SECRET_MESSAGE = "connect to postgresql://admin:hunter2@db.internal:5432/jobs failed for ops@example.com"


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    body = response.json()
    assert FIELDS <= set(body), body
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    assert body["traceId"] == response.headers["x-stella-trace-id"]
    if code is not None:
        assert body["code"] == code
    return body


def assert_no_leak(response: Any) -> None:
    text = response.text
    for fragment in (
        "hunter2",
        "db.internal",
        "ops@example.com",
        "postgresql://",
        "Traceback",
        "RuntimeError",
        'File "',
        "site-packages",
        "asyncpg",
        "sqlalchemy",
    ):
        assert fragment not in text, fragment


async def requests_that_fail(client: Any, factory: Any) -> dict[str, tuple[Any, int, str]]:
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, sourceId="exists")
    headers = factory.headers(tenant)
    path = f"{LIST}/{source['sourceId']}"
    body = {"name": "n", "sourceType": "scanner", "enabled": True, "projectId": None, "description": None}
    return {
        "limit": (await client.get(LIST, params={"limit": 0}, headers=headers), 400, "validation_failed"),
        "token": (
            await client.get(LIST, params={"continuationToken": "x.y.z"}, headers=headers),
            400,
            "invalid_continuation_token",
        ),
        "body": (await client.post(LIST, json={"name": 1}, headers=headers), 400, "validation_failed"),
        "tenant-header": (
            await client.get(LIST, headers={"Authorization": headers["Authorization"]}),
            400,
            "tenant_header_required",
        ),
        "reason": (
            await client.post(
                LIST, json={"name": "n", "sourceType": "s"}, headers=factory.headers(tenant, reason=None)
            ),
            400,
            "operator_reason_required",
        ),
        "no-credentials": (
            await client.get(LIST, headers={"X-Stella-Tenant": tenant}),
            401,
            "unauthenticated",
        ),
        "bad-token": (
            await client.get(LIST, headers={**headers, "Authorization": "Bearer a.b.c"}),
            401,
            "invalid_token",
        ),
        "tenant-forbidden": (
            await client.get(LIST, headers={**headers, "X-Stella-Tenant": "someone-else"}),
            403,
            "tenant_forbidden",
        ),
        "scope": (
            await client.get(LIST, headers=factory.headers(tenant, scope="orch:quota")),
            403,
            "insufficient_scope",
        ),
        "missing": (await client.get(f"{LIST}/nope", headers=headers), 404, "not_found"),
        "unknown-path": (await client.get("/jobengine/nothing-here", headers=headers), 404, "not_found"),
        "method": (await client.delete(LIST, headers=headers), 405, "method_not_allowed"),
        "exists": (
            await client.post(
                LIST, json={"sourceId": "exists", "name": "n", "sourceType": "s"}, headers=headers
            ),
            409,
            "source_exists",
        ),
        "if-match": (
            await client.put(path, json=body, headers={**headers, "If-Match": '"stale"'}),
            412,
            "precondition_failed",
        ),
    }


async def test_every_error_is_problem_json_with_type_title_status_detail_code_and_trace_id(client, factory):
    failures = await requests_that_fail(client, factory)
    for name, (response, status, code) in failures.items():
        try:
            body = assert_problem(response, status, code)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
        assert response.headers["cache-control"] == "no-store", name
        assert body["type"].endswith(code.replace("_", "-")), name


async def test_problem_carries_the_clients_trace_id(client, factory):
    tenant = await factory.tenant()
    response = await client.get(
        f"{LIST}/nope", headers={**factory.headers(tenant), "X-Stella-Trace-Id": "trace-0001-abc"}
    )
    body = assert_problem(response, 404, "not_found")
    assert body["traceId"] == "trace-0001-abc"


async def test_validation_problem_lists_field_errors(client, factory):
    tenant = await factory.tenant()
    response = await client.post(
        LIST, json={"name": "", "sourceType": "Bad Type"}, headers=factory.headers(tenant)
    )
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"] and all(set(e) == {"field", "message"} for e in body["errors"])


async def test_unexpected_exception_is_a_500_problem_without_trace_or_exception_text(
    client, factory, monkeypatch
):
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET_MESSAGE)

    monkeypatch.setattr(service, "list_sources", broken)
    tenant = await factory.tenant()
    response = await client.get(LIST, headers=factory.headers(tenant))
    body = assert_problem(response, 500, "internal_error")
    assert_no_leak(response)
    assert set(body) == FIELDS


async def test_unexpected_exception_in_a_mutation_is_a_500_problem_and_nothing_is_written(
    client, factory, monkeypatch
):
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET_MESSAGE)

    tenant = await factory.tenant()
    monkeypatch.setattr(service, "create_source", broken)
    response = await client.post(
        LIST, json={"name": "n", "sourceType": "scanner"}, headers=factory.headers(tenant)
    )
    assert_problem(response, 500, "internal_error")
    assert_no_leak(response)
    monkeypatch.undo()
    assert (await client.get(LIST, headers=factory.headers(tenant))).json()["items"] == []


async def test_database_outage_is_503_with_retry_after_never_500(gateway_env, factory):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    async with serving(make_app(gateway_env, JOBGATE_DATABASE_URL=CLOSED_DATABASE)) as down:
        for response in (
            await down.get(LIST, headers=headers),
            await down.get(f"{LIST}/any", headers=headers),
            await down.post(LIST, json={"name": "n", "sourceType": "scanner"}, headers=headers),
        ):
            assert_problem(response, 503, "service_unavailable")
            assert int(response.headers["retry-after"]) > 0
            assert_no_leak(response)


async def test_database_outage_after_the_tenant_is_known_is_503_from_the_handler(
    gateway_env, factory, runtime
):
    """The tenant lookup succeeds (a working registry), so the handler's own queries meet the outage."""
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    app = make_app(gateway_env, JOBGATE_DATABASE_URL=CLOSED_DATABASE)
    app.state.runtime.tenants = runtime.tenants
    async with serving(app) as down:
        for response in (
            await down.get(LIST, headers=headers),
            await down.get(f"{LIST}/any", headers=headers),
            await down.post(LIST, json={"name": "n", "sourceType": "scanner"}, headers=headers),
            await down.put(
                f"{LIST}/any",
                json={
                    "name": "n",
                    "sourceType": "scanner",
                    "enabled": True,
                    "projectId": None,
                    "description": None,
                },
                headers=headers,
            ),
        ):
            assert_problem(response, 503, "service_unavailable")
            assert int(response.headers["retry-after"]) > 0
            assert_no_leak(response)


async def test_body_over_the_size_cap_is_413_body_too_large(client, factory, runtime):
    tenant = await factory.tenant()
    cap = runtime.settings.max_body_bytes
    oversized = b'{"name": "' + b"x" * cap + b'", "sourceType": "scanner"}'
    for extra in ({}, {"Idempotency-Key": "too-large-1"}):
        response = await client.post(
            LIST,
            content=oversized,
            headers={**factory.headers(tenant), "Content-Type": "application/json", **extra},
        )
        assert_problem(response, 413, "body_too_large")
    assert (await client.get(LIST, headers=factory.headers(tenant))).json()["items"] == []


async def test_streamed_body_over_the_size_cap_is_413(client, factory, runtime):
    tenant = await factory.tenant()
    cap = runtime.settings.max_body_bytes

    async def chunks():  # no Content-Length: the cap applies to what arrives
        yield b'{"name": "'
        for _ in range(cap // 65536 + 1):
            yield b"x" * 65536
        yield b'", "sourceType": "scanner"}'

    response = await client.post(
        LIST, content=chunks(), headers={**factory.headers(tenant), "Content-Type": "application/json"}
    )
    assert_problem(response, 413, "body_too_large")


async def test_unknown_path_is_a_404_problem(client):
    for path in ("/nothing", "/jobengine/unknown", "/jobengine/sources/a/b"):
        assert_problem(await client.get(path), 404, "not_found")


async def test_wrong_method_is_a_405_problem_with_allow(client, factory):
    tenant = await factory.tenant()
    response = await client.patch(LIST, json={}, headers=factory.headers(tenant))
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
    response = await client.delete(f"{LIST}/x", headers=factory.headers(tenant))
    assert_problem(response, 405, "method_not_allowed")


def test_database_refusing_connections_is_a_503_not_a_500():
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from app.http.problems import to_problem

    error = DBAPIError("SELECT 1", {}, asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"))
    problem = to_problem(error)
    assert (problem.status, problem.code) == (503, "service_unavailable")
    assert problem.headers["Retry-After"]

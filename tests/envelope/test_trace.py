"""X-Stella-Trace-Id: echoed when well-formed, generated otherwise, on every response."""

from __future__ import annotations

import re

import pytest

from tests.envelope import audit_rows

SOURCES = "/jobengine/sources"
TRACE = "X-Stella-Trace-Id"
GENERATED = re.compile(r"^[0-9a-f]{32}$")


async def test_well_formed_trace_id_is_echoed(client, factory):
    tenant = await factory.tenant()
    for trace in ("abcdefgh", "trace-1.2:3_x", "0af7651916cd43dd8448eb211c80319c", "t" * 128):
        response = await client.get(SOURCES, headers={**factory.headers(tenant), TRACE: trace})
        assert response.status_code == 200
        assert response.headers[TRACE] == trace


async def test_absent_trace_id_is_generated_fresh_for_each_request(client, factory):
    tenant = await factory.tenant()
    traces = [(await client.get(SOURCES, headers=factory.headers(tenant))).headers[TRACE] for _ in range(3)]
    assert all(GENERATED.match(t) for t in traces)
    assert len(set(traces)) == 3


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"short", id="too-short"),
        pytest.param(b"t" * 129, id="too-long"),
        pytest.param(b"has spaces in it", id="spaces"),
        pytest.param(b"semi;colon;trace", id="semicolon"),
        pytest.param(b"newline\\r\\ninjected", id="escaped-crlf"),
        pytest.param("trace-\u00e9\u00e9\u00e9\u00e9".encode(), id="non-ascii"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_malformed_trace_id_is_replaced_by_a_generated_one(client, factory, value):
    tenant = await factory.tenant()
    headers = [(k.encode(), v.encode()) for k, v in factory.headers(tenant).items()] + [
        (TRACE.encode(), value)
    ]
    response = await client.get(SOURCES, headers=headers)
    assert response.status_code == 200
    assert GENERATED.match(response.headers[TRACE])


async def test_two_trace_ids_are_replaced_by_a_generated_one(client, factory):
    tenant = await factory.tenant()
    headers = [(k.encode(), v.encode()) for k, v in factory.headers(tenant).items()]
    headers += [(TRACE.encode(), b"first-trace-1"), (TRACE.encode(), b"second-trace-2")]
    response = await client.get(SOURCES, headers=headers)
    assert response.headers.get_list(TRACE) == [response.headers[TRACE]]
    assert GENERATED.match(response.headers[TRACE])


async def _responses(client, factory, keys):  # type: ignore[no-untyped-def]
    """One response of each kind, all sent with the same trace id: name -> response."""
    tenant = await factory.tenant()
    trace = {TRACE: "trace-every-response"}
    ok = factory.headers(tenant)
    return {
        "200 list": await client.get(SOURCES, headers={**ok, **trace}),
        "201 created": await client.post(
            SOURCES, json={"name": "n", "sourceType": "scanner"}, headers={**ok, **trace}
        ),
        "401 no credentials": await client.get(SOURCES, headers=trace),
        "401 bad token": await client.get(
            SOURCES, headers={"Authorization": f"Bearer {keys.token(key=keys.outsider)}", **trace}
        ),
        "400 no tenant": await client.get(SOURCES, headers={"Authorization": ok["Authorization"], **trace}),
        "403 scope": await client.get(
            SOURCES, headers={**factory.headers(tenant, scope="orch:quota"), **trace}
        ),
        "404 unknown id": await client.get(f"{SOURCES}/missing", headers={**ok, **trace}),
        "404 unknown path": await client.get("/no/such/path", headers=trace),
        "404 unknown path, credentials": await client.get("/jobengine/nothing-here", headers={**ok, **trace}),
        "405 method": await client.delete(SOURCES, headers={**ok, **trace}),
        "400 validation": await client.post(SOURCES, json={"name": ""}, headers={**ok, **trace}),
        "400 limit": await client.get(SOURCES, params={"limit": "0"}, headers={**ok, **trace}),
        "200 health": await client.get("/healthz", headers=trace),
        "200 openapi": await client.get("/schema/openapi.json", headers=trace),
    }


async def test_every_response_carries_the_trace_id(client, factory, keys):
    responses = await _responses(client, factory, keys)
    missing = {
        name: r.headers.get(TRACE)
        for name, r in responses.items()
        if r.headers.get(TRACE) != "trace-every-response"
    }
    assert missing == {}
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {name: int(name.split()[0]) for name in responses}


async def test_every_problem_body_carries_the_trace_id_of_its_header(client, factory, keys):
    responses = await _responses(client, factory, keys)
    problems = {name: r for name, r in responses.items() if r.status_code >= 400}
    assert len(problems) >= 8
    for name, response in problems.items():
        assert response.headers["content-type"].startswith("application/problem+json"), name
        assert response.json()["traceId"] == response.headers[TRACE] == "trace-every-response", name


async def test_generated_trace_id_of_a_problem_equals_its_header(client):
    response = await client.get("/no/such/path")
    assert response.status_code == 404
    assert GENERATED.match(response.headers[TRACE])
    assert response.json()["traceId"] == response.headers[TRACE]


async def test_idempotent_replay_carries_the_replays_own_trace_id(client, factory):
    tenant = await factory.tenant()
    body = {"name": "n", "sourceType": "scanner"}
    headers = {**factory.headers(tenant), "Idempotency-Key": "trace-replay-key"}
    first = await client.post(SOURCES, json=body, headers={**headers, TRACE: "trace-first-call"})
    again = await client.post(SOURCES, json=body, headers={**headers, TRACE: "trace-second-call"})
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers.get_list(TRACE) == ["trace-first-call"]
    assert again.headers.get_list(TRACE) == ["trace-second-call"]


async def test_trace_id_is_carried_into_the_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    await client.post(
        SOURCES,
        json={"name": "n", "sourceType": "scanner"},
        headers={**factory.headers(tenant), TRACE: "trace-into-audit"},
    )
    await client.post(
        SOURCES, json={"name": ""}, headers={**factory.headers(tenant), TRACE: "trace-refusal-audit"}
    )
    assert [r.trace_id for r in await audit_rows(runtime, tenant)] == [
        "trace-into-audit",
        "trace-refusal-audit",
    ]


async def test_generated_trace_id_is_the_one_in_the_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(
        SOURCES, json={"name": "n", "sourceType": "scanner"}, headers=factory.headers(tenant)
    )
    (row,) = await audit_rows(runtime, tenant)
    assert row.trace_id == response.headers[TRACE]

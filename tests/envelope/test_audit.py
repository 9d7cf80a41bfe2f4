"""Operator reason and ticket on mutations, and the append-only audit log they land in."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

import app.http.mutation as mutation_module
from app.storage.audit import INSERT_AUDIT
from tests.envelope import audit_rows, source_ids, tenant_id

SOURCES = "/jobengine/sources"
NEW_SOURCE = {"name": "feed", "sourceType": "scanner"}


def _raw(headers: dict[str, str], **replace: bytes | None) -> list[tuple[bytes, bytes]]:
    """``headers`` as raw pairs, with the named headers (Python names, ``_`` for ``-``) replaced or dropped."""
    names = {name.replace("_", "-").lower(): value for name, value in replace.items()}
    raw = [(k.encode(), v.encode()) for k, v in headers.items() if k.lower() not in names]
    return raw + [(name.encode(), value) for name, value in names.items() if value is not None]


async def _mutations(client, factory, tenant):  # type: ignore[no-untyped-def]
    """One request per mutating route, each with a valid body: (method, path, json)."""
    source = await factory.source(client, tenant)
    replace = {
        "name": "renamed",
        "sourceType": "scanner",
        "enabled": True,
        "projectId": None,
        "description": None,
    }
    return [("POST", SOURCES, NEW_SOURCE), ("PUT", f"{SOURCES}/{source['sourceId']}", replace)]


# --- reason -----------------------------------------------------------------------------------------

REFUSED_REASONS = [
    pytest.param(None, "operator_reason_required", id="missing"),
    pytest.param(b"", "operator_reason_required", id="empty"),
    pytest.param(b"   ", "operator_reason_required", id="blank"),
    pytest.param(b"x" * 513, "operator_reason_invalid", id="513-characters"),
    pytest.param(("\u00e9" * 513).encode(), "operator_reason_invalid", id="513-non-ascii-characters"),
    pytest.param(b"line one\r\nline two", "operator_reason_invalid", id="crlf"),
    pytest.param(b"line one\nline two", "operator_reason_invalid", id="lf"),
    pytest.param(b"line one\rline two", "operator_reason_invalid", id="cr"),
    pytest.param(b"tab\there", "operator_reason_invalid", id="tab"),
    pytest.param(b"nul\x00here", "operator_reason_invalid", id="nul"),
    pytest.param(b"escape\x1b[31m", "operator_reason_invalid", id="ansi-escape"),
    pytest.param(b"delete\x7f", "operator_reason_invalid", id="del"),
    pytest.param("bidi \u202e override".encode(), "operator_reason_invalid", id="bidi-override"),
    pytest.param("c1 \u0085 next line".encode(), "operator_reason_invalid", id="c1-control"),
]


@pytest.mark.parametrize(("reason", "code"), REFUSED_REASONS)
async def test_mutation_with_missing_or_invalid_reason_is_400(client, factory, runtime, reason, code):
    tenant = await factory.tenant()
    requests = await _mutations(client, factory, tenant)
    before = await source_ids(runtime, tenant)
    for method, path, body in requests:
        headers = _raw(factory.headers(tenant), x_stella_operator_reason=reason)
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["code"] == code
    assert await source_ids(runtime, tenant) == before
    listed = await client.get(SOURCES, headers=factory.headers(tenant))
    assert [s["name"] for s in listed.json()["items"]] == ["source"]  # the PUT changed nothing either




@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("r" * 512, id="512-ascii"),
        pytest.param("\u00e9" * 512, id="512-two-byte"),
        pytest.param("\u4e2d" * 511 + "!", id="512-three-byte"),
        pytest.param("\U0001f680" * 512, id="512-four-byte"),
        pytest.param(
            "Zur\u00fcckgesetzt f\u00fcr Kunde", id="short-non-ascii"
        ),
        pytest.param("x", id="one-character"),
    ],
)
async def test_reason_of_up_to_512_printable_characters_is_accepted_and_recorded(
    client, factory, runtime, reason
):
    tenant = await factory.tenant()
    headers = _raw(factory.headers(tenant), x_stella_operator_reason=reason.encode("utf-8"))
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=headers)
    assert response.status_code == 201, response.text
    (row,) = await audit_rows(runtime, tenant)
    assert row.reason == reason


async def test_two_reason_headers_are_refused(client, factory):
    tenant = await factory.tenant()
    headers = _raw(factory.headers(tenant)) + [(b"X-Stella-Operator-Reason", b"second reason")]
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "operator_reason_invalid"


# --- ticket -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ticket",
    [
        pytest.param(b"T" * 129, id="129-characters"),
        pytest.param(b"OPS-1\r\nX: y", id="crlf"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_invalid_ticket_is_400(client, factory, runtime, ticket):
    tenant = await factory.tenant()
    headers = _raw(factory.headers(tenant), x_stella_operator_ticket=ticket)
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "operator_ticket_invalid"
    assert await source_ids(runtime, tenant) == []


async def test_ticket_of_128_characters_is_accepted(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=factory.headers(tenant, ticket="T" * 128))
    assert response.status_code == 201
    (row,) = await audit_rows(runtime, tenant)
    assert row.ticket == "T" * 128


async def test_reads_need_neither_reason_nor_ticket(client, factory):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    headers = factory.headers(tenant, reason=None)
    assert (await client.get(SOURCES, headers=headers)).status_code == 200
    assert (await client.get(f"{SOURCES}/{source['sourceId']}", headers=headers)).status_code == 200


async def test_reads_are_not_audited(client, factory, runtime):
    tenant = await factory.tenant()
    await client.get(SOURCES, headers=factory.headers(tenant))
    await client.get(f"{SOURCES}/missing", headers=factory.headers(tenant))
    assert await audit_rows(runtime, tenant) == []


# --- one audit row per mutation -------------------------------------------------------------------


async def test_allowed_mutation_writes_one_complete_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    headers = factory.headers(
        tenant, reason="rotate feed", ticket="OPS-42", subject="operator-7", client_id="console"
    )
    headers |= {"X-Stella-Trace-Id": "trace-audit-allowed-1", "Idempotency-Key": "create-feed-1"}
    response = await client.post(SOURCES, json={**NEW_SOURCE, "projectId": "alpha"}, headers=headers)
    assert response.status_code == 201
    (row,) = await audit_rows(runtime, tenant)
    assert row.tenant_id == await tenant_id(runtime, tenant)
    assert (row.subject, row.client_id) == ("operator-7", "console")
    assert (row.action, row.method, row.route) == ("source.create", "POST", SOURCES)
    assert row.target == response.json()["sourceId"]
    assert (row.reason, row.ticket) == ("rotate feed", "OPS-42")
    assert row.trace_id == "trace-audit-allowed-1" == response.headers["x-stella-trace-id"]
    assert row.idempotency_key == "create-feed-1"
    assert (row.result_status, row.result_code) == (201, None)
    assert row.project_id is None  # no X-Stella-Project header was sent
    assert row.occurred_at is not None


async def test_allowed_replace_records_its_target_and_project(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, projectId="alpha")
    body = {
        "name": "renamed",
        "sourceType": "scanner",
        "enabled": True,
        "projectId": "alpha",
        "description": None,
    }
    response = await client.put(
        f"{SOURCES}/{source['sourceId']}", json=body, headers=factory.headers(tenant, project="alpha")
    )
    assert response.status_code == 200
    rows = await audit_rows(runtime, tenant)
    assert len(rows) == 2  # the creation and the replacement
    assert (rows[1].action, rows[1].target, rows[1].project_id, rows[1].result_status) == (
        "source.replace",
        source["sourceId"],
        "alpha",
        200,
    )


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing-reason", 400, "operator_reason_required"),
        ("bad-ticket", 400, "operator_ticket_invalid"),
        ("missing-scope", 403, "insufficient_scope"),
        ("invalid-body", 400, "validation_failed"),
        ("duplicate-id", 409, "source_exists"),
        ("unknown-target", 404, "not_found"),
        ("bad-idempotency-key", 400, "idempotency_key_invalid"),
        ("project-mismatch", 422, "project_mismatch"),
    ],
)
async def test_refused_mutation_writes_one_audit_row_with_its_status_and_code(
    client, factory, runtime, case, status, code
):
    tenant = await factory.tenant()
    existing = await factory.source(client, tenant, sourceId="taken")
    created_rows = len(await audit_rows(runtime, tenant))
    headers = factory.headers(tenant, reason="why not", ticket="OPS-1")
    headers["X-Stella-Trace-Id"] = f"trace-refused-{case}"
    headers["Idempotency-Key"] = f"key-{case}"
    method, path, body = "POST", SOURCES, dict(NEW_SOURCE)
    if case == "missing-reason":
        del headers["X-Stella-Operator-Reason"]
    elif case == "bad-ticket":
        headers["X-Stella-Operator-Ticket"] = "T" * 129
    elif case == "missing-scope":
        headers = {
            **factory.headers(tenant, scope="orch:read", reason="why not", ticket="OPS-1"),
            "X-Stella-Trace-Id": headers["X-Stella-Trace-Id"],
            "Idempotency-Key": headers["Idempotency-Key"],
        }
    elif case == "invalid-body":
        body = {"name": "", "sourceType": "Not A Type"}
    elif case == "duplicate-id":
        body["sourceId"] = existing["sourceId"]
    elif case == "unknown-target":
        method, path = "PUT", f"{SOURCES}/no-such-source"
        body = {"name": "n", "sourceType": "scanner", "enabled": True, "projectId": None, "description": None}
    elif case == "bad-idempotency-key":
        headers["Idempotency-Key"] = "has a space"
    elif case == "project-mismatch":
        headers["X-Stella-Project"] = "alpha"
        body["projectId"] = "beta"
    response = await client.request(method, path, json=body, headers=headers)
    assert (response.status_code, response.json()["code"]) == (status, code)
    rows = (await audit_rows(runtime, tenant))[created_rows:]
    assert len(rows) == 1, [(r.result_status, r.result_code) for r in rows]
    row = rows[0]
    assert (row.result_status, row.result_code) == (status, code)
    assert row.subject == "tester"
    assert row.tenant_id == await tenant_id(runtime, tenant)
    assert row.trace_id == f"trace-refused-{case}"
    assert row.method == method
    assert row.ticket == (None if case == "bad-ticket" else "OPS-1")
    assert row.reason == (None if case == "missing-reason" else "why not")
    assert row.idempotency_key == (None if case == "bad-idempotency-key" else f"key-{case}")
    assert row.action == ("source.replace" if method == "PUT" else "source.create")


async def test_mutation_refused_before_the_tenant_is_established_is_not_audited(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=factory.headers(tenant, tenants=other))
    assert response.status_code == 403
    assert await audit_rows(runtime, tenant) == []


# --- the audit row and the change commit together ---------------------------------------------------


@pytest.mark.parametrize(
    "violation",
    [
        "foreign-key",
        "too-long",
    ],
)
async def test_failing_audit_insert_rolls_the_change_back_and_answers_a_problem(
    client, factory, runtime, monkeypatch, violation
):
    tenant = await factory.tenant()

    async def broken_write(session, values):  # type: ignore[no-untyped-def]
        row = dict(values)
        if violation == "foreign-key":
            row["tenant_id"] = -1  # no such tenant: the INSERT violates the foreign key
        else:
            row["route"] = "/" * 300  # longer than the column: the INSERT is refused
        await session.execute(INSERT_AUDIT, row)

    monkeypatch.setattr(mutation_module, "write_audit", broken_write)
    response = await client.post(
        SOURCES, json={**NEW_SOURCE, "sourceId": "must-not-exist"}, headers=factory.headers(tenant)
    )
    monkeypatch.undo()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert 400 <= response.status_code < 600 and response.status_code != 500, response.text
    assert "Traceback" not in response.text and "INSERT" not in response.text
    assert await source_ids(runtime, tenant) == []
    detail = await client.get(f"{SOURCES}/must-not-exist", headers=factory.headers(tenant))
    assert detail.status_code == 404
    assert 201 not in [row.result_status for row in await audit_rows(runtime, tenant)]


# --- append-only ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET reason = 'rewritten' WHERE tenant_id = :tenant",
        "DELETE FROM audit_log WHERE tenant_id = :tenant",
        "TRUNCATE audit_log",
    ],
    ids=["update", "delete", "truncate"],
)
async def test_postgresql_refuses_to_change_audit_rows(client, factory, runtime, statement):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    tid = await tenant_id(runtime, tenant)
    before = [(r.id, r.reason) for r in await audit_rows(runtime, tenant)]
    assert len(before) == 1
    async with runtime.sessions() as session:
        transaction = await session.begin()
        try:
            with pytest.raises(Exception, match="append-only"):
                await session.execute(text(statement), {"tenant": tid} if ":tenant" in statement else {})
        finally:
            await transaction.rollback()  # whatever happened, nothing of this statement is kept
    assert [(r.id, r.reason) for r in await audit_rows(runtime, tenant)] == before


async def test_postgresql_refuses_to_change_audit_rows_through_raw_asyncpg(
    client, factory, runtime, services
):
    import asyncpg

    tenant = await factory.tenant()
    await factory.source(client, tenant)
    tid = await tenant_id(runtime, tenant)
    connection = await asyncpg.connect(services.pg_url)
    try:
        for statement in (
            "UPDATE audit_log SET result_status = 200 WHERE tenant_id = $1",
            "DELETE FROM audit_log WHERE tenant_id = $1",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await connection.execute(statement, tid)
        assert await connection.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", tid) == 1
    finally:
        await connection.close()


async def test_a_refused_mutations_audit_row_is_committed_before_its_answer(factory, runtime, two_gateways):
    """Served by a real server: the audit row of a handler's refusal (404, 409, …) is readable as
    soon as the client has its answer, every time, with and without an Idempotency-Key."""
    tenant = await factory.tenant()
    async with httpx.AsyncClient(base_url=two_gateways[0].url, timeout=30) as client:
        for attempt in range(20):
            headers = factory.headers(tenant)
            if attempt % 2:
                headers["Idempotency-Key"] = f"refusal-{attempt}"
            response = await client.post("/jobengine/deadletter/no-such-entry/replay", headers=headers)
            assert response.status_code == 404
            rows = await audit_rows(runtime, tenant)
            assert len(rows) == attempt + 1, f"attempt {attempt}: the audit row came after the answer"
            assert (rows[-1].result_status, rows[-1].action) == (404, "deadletter.replay")


# --- the headers are UTF-8 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        pytest.param("x_stella_operator_reason", "\u00e9t\u00e9".encode("latin-1"), "operator_reason_invalid", id="latin-1-reason"),
        pytest.param("x_stella_operator_reason", b"ok \xff\xfe", "operator_reason_invalid", id="invalid-bytes-reason"),
        pytest.param("x_stella_operator_ticket", b"OPS-\xe9", "operator_ticket_invalid", id="latin-1-ticket"),
    ],
)
async def test_reason_or_ticket_that_is_not_utf8_is_400(client, factory, runtime, header, value, code):
    tenant = await factory.tenant()
    headers = _raw(factory.headers(tenant), **{header: value})
    response = await client.post(SOURCES, json=NEW_SOURCE, headers=headers)
    assert (response.status_code, response.json()["code"]) == (400, code)
    assert await source_ids(runtime, tenant) == []

"""The committed contract is what the code generates, and it states the whole envelope."""

from __future__ import annotations

import json

import pytest
import yaml
from litestar.serialization import encode_json

from app.cli import render_openapi
from tests.conftest import ROOT

CONTRACT = ROOT / "contracts" / "jobengine-gateway.openapi.yaml"
PUBLIC = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def document(app) -> dict:
    return json.loads(encode_json(app.openapi_schema.to_schema()))


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path not in PUBLIC:
                yield path, method.upper(), operation


def test_committed_contract_matches_the_code(document):
    assert CONTRACT.read_text() == render_openapi(document), (
        "contracts/ drifted from the code: run `jobgate openapi --output contracts/jobengine-gateway.openapi.yaml`"
    )


def test_contract_file_is_valid_yaml_with_every_route(document):
    committed = yaml.safe_load(CONTRACT.read_text())
    assert committed["openapi"].startswith("3.1")
    assert set(committed["paths"]) == set(document["paths"])


def test_every_protected_operation_declares_bearer_security_and_the_tenant_header(document):
    for path, method, operation in operations(document):
        assert operation.get("security") == [{"BearerAuth": []}], (method, path)
        tenant = [p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "X-Stella-Tenant"]
        assert tenant and tenant[0]["required"] is True, (method, path)


def test_every_protected_operation_documents_its_problem_responses(document):
    for path, method, operation in operations(document):
        for status in ("400", "401", "403", "429", "503"):
            response = operation["responses"].get(status)
            assert response is not None, (method, path, status)
            assert "application/problem+json" in response["content"], (method, path, status)
        if method == "GET":
            assert "304" in operation["responses"], (method, path)
        if "{" in path:
            assert "404" in operation["responses"], (method, path)


def test_mutations_document_the_operator_reason_and_idempotency_key(document):
    for path, method, operation in operations(document):
        if method == "GET":
            continue
        names = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert "Idempotency-Key" in names, (method, path)
        if "orch:submit" not in operation.get("description", ""):
            reason = names.get("X-Stella-Operator-Reason")
            if reason is not None:
                assert reason["required"] is True and reason["schema"]["maxLength"] == 512


def test_every_list_states_its_limit_range_and_its_order(document):
    lists = [(p, m, o) for p, m, o in operations(document) if any(q["name"] == "limit" for q in o["parameters"])]
    assert len(lists) >= 7
    for path, method, operation in lists:
        limit = next(q for q in operation["parameters"] if q["name"] == "limit")
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (1, 200, 50)
        assert "continuationToken" in {q["name"] for q in operation["parameters"]}, path
        assert "rdered by" in operation.get("description", ""), f"{path} does not name its order"


def test_request_bodies_refuse_unknown_fields_in_the_contract(document):
    schemas = document["components"]["schemas"]
    for path, method, operation in operations(document):
        body = operation.get("requestBody")
        if body is None:
            continue
        ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert schemas[ref].get("additionalProperties") is False, (method, path, ref)


def test_gateway_contract_paths_and_names_follow_the_gateway_contract(document):
    expected = {
        "/jobengine/sources": {"get"},
        "/jobengine/sources/{sourceId}": {"get"},
        "/jobengine/quotas": {"get"},
        "/jobengine/quotas/{quotaId}": {"get"},
        "/jobengine/quotas/summary": {"get"},
        "/jobengine/jobs/summary": {"get"},
        "/jobengine/deadletter/stats": {"get"},
        "/jobengine/deadletter/summary": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(document["paths"][path]), path
    sources = document["paths"]["/jobengine/sources"]["get"]
    assert {"sourceType", "enabled", "limit", "continuationToken"} <= {p["name"] for p in sources["parameters"]}
    page = document["components"]["schemas"]["SourcePage"]["properties"]
    assert set(page) == {"items", "continuationToken"}

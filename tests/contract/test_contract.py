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


def test_every_protected_operation_declares_its_scope_under_bearer_or_dpop_and_the_tenant_header(app, document):
    scopes = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                scopes[(route.path_format, method)] = (handler.opt or {}).get("scope")
    schemes = document["components"]["securitySchemes"]
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    assert schemes["DPoP"] == {**schemes["DPoP"], "type": "http", "scheme": "DPoP"}
    for path, method, operation in operations(document):
        scope = scopes[(path, method)]
        assert scope and scope.startswith("orch:"), (method, path)
        assert operation.get("security") == [{"BearerAuth": [scope]}, {"DPoP": [scope]}], (method, path)
        tenant = [p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "X-Stella-Tenant"]
        assert tenant and tenant[0]["required"] is True, (method, path)
    for path in PUBLIC:
        for method, operation in document["paths"][path].items():
            assert "security" not in operation, (method, path)
    assert "security" not in document


def test_the_declared_scopes_are_the_readme_table(document):
    declared = {(m, p): o["security"][0]["BearerAuth"][0] for p, m, o in operations(document)}
    assert declared[("GET", "/jobengine/sources")] == "orch:read"
    assert declared[("PUT", "/jobengine/sources/{sourceId}")] == "orch:operate"
    assert declared[("DELETE", "/jobengine/quotas/{quotaId}")] == "orch:quota"
    assert declared[("GET", "/jobengine/audit")] == "orch:operate"
    assert declared[("POST", "/jobengine/deadletter/replay/batch")] == "orch:backfill"
    assert declared[("POST", "/jobengine/pack-runs/{packRunId}/retry")] == "orch:backfill"
    assert declared[("POST", "/jobengine/jobs")] == "orch:submit"
    assert declared[("GET", "/admin/operations/{run}")] == "orch:read"


def test_tags_are_declared_once_per_domain_and_every_operation_is_described(document):
    tags = {tag["name"]: tag for tag in document["tags"]}
    assert len(tags) == len(document["tags"])
    assert all(tag.get("description") for tag in tags.values())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("description"), (method, path)
            assert operation.get("summary"), (method, path)
            assert len(operation["tags"]) == 1 and operation["tags"][0] in tags, (method, path)


def _headers(document: dict, response: dict) -> dict[str, dict]:
    named = {}
    for name, header in response.get("headers", {}).items():
        ref = header.get("$ref")
        named[name] = document["components"]["headers"][ref.rsplit("/", 1)[-1]] if ref else header
    return named


def test_every_response_declares_the_headers_it_carries(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            parameters = {p["name"] for p in operation.get("parameters", [])}
            for status, response in responses.items():
                headers = _headers(document, response)
                assert "X-Stella-Trace-Id" in headers, (method, path, status)
                if status in ("429", "503"):
                    assert headers["Retry-After"]["schema"]["type"] == "integer", (method, path, status)
                if method == "get" and status == "200":
                    assert {"Cache-Control", "Vary"} <= set(headers), (method, path)
                    if "304" in responses:
                        assert "ETag" in headers, (method, path)
                if "Idempotency-Key" in parameters and status.startswith("2"):
                    assert "Idempotent-Replayed" in headers, (method, path, status)
    located = {
        ("post", "/jobengine/sources", "201"),
        ("post", "/jobengine/quotas", "201"),
        ("post", "/jobengine/jobs", "201"),
        ("post", "/jobengine/pack-runs", "201"),
        ("post", "/jobengine/pack-runs/{packRunId}/retry", "201"),
        ("post", "/jobengine/deadletter/{entryId}/replay", "202"),
        ("post", "/jobengine/deadletter/replay/pending", "202"),
    }
    declared = {
        (method, path, status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status, response in operation["responses"].items()
        if "Location" in _headers(document, response)
    }
    assert declared == located


def test_conditional_request_headers_are_declared(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            names = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
            if "304" in operation["responses"]:
                assert names["If-None-Match"]["required"] is False, (method, path)
            if method in ("put", "delete"):
                assert names["If-Match"]["required"] is False, (method, path)
                assert "412" in operation["responses"], (method, path)
            if method != "get":
                assert "If-None-Match" not in names, (method, path)


def test_every_protected_operation_documents_429_and_mutations_413_and_415(document):
    for path, method, operation in operations(document):
        assert "429" in operation["responses"], (method, path)
        if method != "GET":
            assert "413" in operation["responses"], (method, path)
        if "requestBody" in operation:
            assert "application/problem+json" in operation["responses"]["415"]["content"], (method, path)


def test_query_parameters_are_optional_not_nullable_and_enums_are_named_once(document):
    """A generator makes one type per enum: each enum filter refers to a named component, and no
    query parameter offers null (leaving it out means no filter)."""
    schemas = document["components"]["schemas"]
    named = []
    for path, method, operation in operations(document):
        for parameter in operation["parameters"]:
            if parameter["in"] != "query":
                continue
            schema = parameter["schema"]
            assert "null" not in json.dumps(schema), (method, path, parameter["name"])
            assert "enum" not in schema, (method, path, parameter["name"])
            if "$ref" in schema:
                named.append(schema["$ref"].rsplit("/", 1)[-1])
    assert {"JobStatus", "EntryStatus", "PackRunStatus", "RunStatus", "RunOutcome", "ListedFreshness",
            "ProblemClass"} <= set(named)
    for name in named:
        assert schemas[name]["type"] == "string" and None not in schemas[name]["enum"], name
    # No enum anywhere also lists null (a generator would build several identical types of it).
    def enums(node):
        if isinstance(node, dict):
            if "enum" in node:
                yield node["enum"]
            for value in node.values():
                yield from enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from enums(value)

    assert all(None not in values for values in enums(document))


def test_lifecycle_parameters_have_the_reference_contracts_bounds(document):
    reference = yaml.safe_load((ROOT / "contracts" / "reference" / "operation-run-active-state.openapi.yaml").read_text())
    bounds = {name: p["schema"] for name, p in reference["components"]["parameters"].items()}

    def parameter(path: str, name: str, where: str) -> dict:
        found = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name and p["in"] == where]
        assert len(found) == 1, (path, name)
        return found[0]["schema"]

    for path in ("/admin/t/{tenant}/dashboard", "/admin/t/{tenant}/operations/progress"):
        assert parameter(path, "tenant", "path") == {**parameter(path, "tenant", "path"), **bounds["TenantId"]}
    run = parameter("/admin/operations/{run}", "run", "path")
    assert run == {**run, **bounds["RunId"]}
    tenant = parameter("/admin/operations", "tenant", "query")
    assert tenant == {**tenant, **bounds["TenantFilter"]}
    assert parameter("/api/admin/operations", "tenant_id", "query")["type"] == "integer"


def test_rules_json_schema_can_state_are_in_the_schema_and_the_rest_named(document):
    schemas = document["components"]["schemas"]
    replay_filter = schemas["ReplayFilter"]
    assert replay_filter["minProperties"] == 1
    assert all("null" not in json.dumps(p) for p in replay_filter["properties"].values())
    for name in ("QuotaCreate", "QuotaReplace"):
        assert "`burst` must not exceed `maxPerHour`" in schemas[name]["description"], name


def test_source_create_and_replace_require_the_same_fields(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["SourceCreate"]["required"]) == set(schemas["SourceReplace"]["required"]) == {"name", "sourceType"}
    replace = document["paths"]["/jobengine/sources/{sourceId}"]["put"]
    assert "absent" in schemas["SourceReplace"]["description"] and "default" in replace["description"]


def test_the_committed_contract_is_a_valid_openapi_3_1_document():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    validate(yaml.safe_load(CONTRACT.read_text()), cls=OpenAPIV31SpecValidator)


def test_every_protected_operation_documents_its_problem_responses(document):
    for path, method, operation in operations(document):
        for status in ("400", "401", "403", "429", "503"):
            response = operation["responses"].get(status)
            assert response is not None, (method, path, status)
            assert "application/problem+json" in response["content"], (method, path, status)
        success = operation["responses"].get("200") or {}
        streams = "text/event-stream" in success.get("content", {})
        if method == "GET" and not streams:  # an event stream is never revalidated
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

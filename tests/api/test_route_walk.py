"""Every GET route of the gateway, on the demo data, answers without a server error on both backends.

The walk is built from the application's own OpenAPI document, so a new route or a new query
parameter is walked as soon as it exists: each route is called once plainly (200 expected), then
once per value of each of its query parameters (every enum value, both booleans, a real id or name
from the demo data for strings, an instant for times), under the tenant and under a project, and
each list is paged once with its continuation token. No answer may be a 5xx; a feature the
embedded SQLite default cannot offer would answer 501 ``not_supported_on_embedded`` (none does
today, so none is accepted).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from app.seed import demo_id, seed_demo
from app.storage.models import OperationRun, Tenant

TENANT = "acme"
PROJECT = "billing"
# A real value from the demo data for each string parameter (a path or query parameter that is
# not listed here fails the walk: add it with a value that matches something).
STRING_VALUES = {
    "kinds": "source,job",
    "sourceId": demo_id(TENANT, "source", "registry-webhook"),
    "jobId": demo_id(TENANT, "job", "pending-noop-1"),
    "quotaId": demo_id(TENANT, "quota", "demo.noop"),
    "entryId": demo_id(TENANT, "dead-letter", "timeout-0"),
    "packRunId": demo_id(TENANT, "pack-run", "sbom-refresh-running"),
    "sourceType": "webhook",
    "jobType": "demo.flaky",
    "category": "transient",
    "errorCode": "upstream.timeout",
    "packName": "sbom-refresh",
    "action": "source.create",
    "subject": "dev-operator",
    "target": demo_id(TENANT, "source", "registry-webhook"),
    "type": "pack_run.execute",
    "activeTab": "active",
    "path": "openapi.json",
}
INTEGER_PATH_VALUES = ("operationRun", "run", "tenant")  # filled from the database
INTEGER_QUERY_VALUES = ("tenant_id", "tenant")


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$ref`` (and its ``oneOf`` members' ones) followed in ``document``."""
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    if "oneOf" in schema:
        schema = {**schema, "oneOf": [resolve(document, option) for option in schema["oneOf"]]}
    return schema


def _choices(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [option for option in schema.get("oneOf", [schema]) if option.get("type") != "null"]


def query_values(name: str, schema: dict[str, Any], ids: dict[str, Any]) -> list[Any]:
    """The values the walk sends for one query parameter."""
    if name in ("limit", "continuationToken"):
        return []  # paging is walked on its own
    values: list[Any] = [v for v in schema.get("enum", []) if v is not None]
    if values:
        return values
    if schema.get("format") == "date-time":
        return [(datetime.now(UTC) - timedelta(days=2)).isoformat()]
    for option in _choices(schema):
        if option.get("type") == "boolean":
            return ["true", "false"]
        if option.get("format") == "date-time":
            return [(datetime.now(UTC) - timedelta(days=2)).isoformat()]
        if option.get("type") == "integer":
            assert name in INTEGER_QUERY_VALUES, f"no walk value for the integer parameter {name!r}"
            return [ids["tenant"]]
    assert name in STRING_VALUES, f"no walk value for the query parameter {name!r}"
    return [STRING_VALUES[name]]


def calls(document: dict[str, Any], ids: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], bool]]:
    """(template, url, query, plain) for every GET route: the plain call first, then one per value."""
    for template, operations in document["paths"].items():
        if "get" not in operations:
            continue
        url = template
        parameters = operations["get"].get("parameters", [])
        for parameter in parameters:
            if parameter["in"] == "path":
                name = parameter["name"]
                value = ids[name] if name in INTEGER_PATH_VALUES else STRING_VALUES.get(name)
                assert value is not None, f"no walk value for the path parameter {name!r} of {template}"
                url = url.replace("{" + name + "}", str(value))
        yield template, url, {}, True
        for parameter in parameters:
            if parameter["in"] == "query":
                schema = resolve(document, parameter.get("schema", {}))
                for value in query_values(parameter["name"], schema, ids):
                    yield template, url, {parameter["name"]: value}, False
        if any(p["name"] == "continuationToken" for p in parameters):
            yield template, url, {"limit": 2}, False


async def demo_ids(runtime: Any) -> dict[str, Any]:
    await seed_demo(runtime.sessions)
    async with runtime.sessions() as session:
        tenant = (await session.execute(select(Tenant.id).where(Tenant.key == TENANT))).scalar_one()
        run = (
            await session.execute(
                select(OperationRun.id).where(OperationRun.tenant_id == tenant).order_by(OperationRun.id).limit(1)
            )
        ).scalar_one()
    return {"tenant": tenant, "operationRun": run, "run": run}


def assert_no_server_error(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"


async def test_every_get_route_answers_without_a_server_error_on_the_demo_data(app, client, runtime, factory, backend):
    ids = await demo_ids(runtime)
    # an audit row and a source of the caller's own, so that every filter matches something
    created = await client.post(
        "/jobengine/sources",
        json={"name": "Walked", "sourceType": "webhook", "projectId": PROJECT},
        headers=factory.headers(TENANT, subject="dev-operator"),
    )
    assert created.status_code == 201, created.text
    document = (await client.get("/schema/openapi.json")).json()
    walked: set[str] = set()
    for template, url, query, plain in calls(document, ids):
        walked.add(template)
        for project in (None, PROJECT):
            # an event stream ends at its token's expiry: one second lets the in-process client have it
            stream = "text/event-stream" in document["paths"][template]["get"]["responses"]["200"].get("content", {})
            headers = factory.headers(TENANT, reason=None, project=project,
                                      **({"exp": int(time.time()) + 1} if stream else {}))
            response = await client.get(url, params=query, headers=headers)
            what = f"[{backend}] GET {url} {query} project={project}"
            assert_no_server_error(response, what)
            if plain and project is None:  # under a project, another project's object is 404
                assert response.status_code == 200, f"{what}: {response.status_code} {response.text[:500]}"
            token = response.json().get("continuationToken") if "limit" in query and not stream else None
            if token:
                following = await client.get(url, params={**query, "continuationToken": token}, headers=headers)
                assert following.status_code == 200, f"{what} (page 2): {following.text[:500]}"
    get_routes = {
        route.path for route in app.routes if "GET" in getattr(route, "methods", ()) and route.path != "/schema"
    }
    assert len(walked) >= len(get_routes) - 4  # the document omits the schema routes themselves


@pytest.mark.parametrize("path", ["/jobengine/deadletter/stats", "/jobengine/deadletter/summary"])
async def test_dead_letter_statistics_answer_on_the_demo_data(client, factory, runtime, path):
    await seed_demo(runtime.sessions)
    response = await client.get(path, headers=factory.headers(TENANT, scope="orch:operate"))
    assert response.status_code == 200, response.text
    if path.endswith("stats"):
        clusters = response.json()["topClusters"]
        assert len(clusters) == 7
        assert all(1 <= len(c["sampleEntryIds"]) <= 3 and c["firstSeen"] <= c["lastSeen"] for c in clusters)

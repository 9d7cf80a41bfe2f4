"""The six lifecycle routes: one meaning of a run on every surface, both contracts, polling."""

from __future__ import annotations

from datetime import UTC, datetime

from app.thresholds import DEFAULTS
from tests.conftest import make_app, serving
from tests.operations.support import add_run, assert_contract, get_json, tenant_of

PACK = DEFAULTS["pack_run.execute"]
RECONCILIATION = {
    "source": "scheduled_reconciler",
    "reason_code": "run.stale_no_heartbeat",
    "reason_message": "No heartbeat for more than 1800s; the reconciler marked the run failed.",
    "evidence": {"last_heartbeat_at": "2026-01-01T00:00:00Z", "threshold_seconds": 1800},
}


async def _runs_in_every_state(runtime, tenant):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    return {
        "fresh": await add_run(runtime, tenant, status="running", age=30, heartbeat_age=5),
        "stale": await add_run(runtime, tenant, status="running", age=7200, heartbeat_age=3600),
        "reconciled": await add_run(
            runtime,
            tenant,
            status="completed",
            outcome="failed",
            age=90000,
            reconciled_at=now,
            reconciliation=RECONCILIATION,
            failure_summary=[{"code": "run.stale_no_heartbeat", "message": "stale"}],
        ),
        "terminal": await add_run(runtime, tenant, status="completed", outcome="succeeded", age=600),
    }


def _by_id(items, key="run_id"):  # type: ignore[no-untyped-def]
    return {item[key]: item for item in items}


async def test_same_stale_run_is_likely_stale_on_every_surface(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    stale = await add_run(runtime, tenant, status="running", age=7200, heartbeat_age=3600)
    headers = factory.headers(key, scope="orch:read")

    dashboard = await get_json(client, "dashboard", f"/admin/t/{tenant.id}/dashboard", headers)
    progress = await get_json(client, "progress", f"/admin/t/{tenant.id}/operations/progress", headers)
    canonical = await get_json(client, "canonical", "/admin/operations", headers, tenant=tenant.id)
    detail = await get_json(client, "canonical_detail", f"/admin/operations/{stale}", headers)
    listed = await get_json(client, "list", "/api/admin/operations", headers, tenant_id=tenant.id)
    api_detail = await get_json(client, "detail", f"/api/admin/operations/{stale}", headers)

    compact = [_by_id(s["items"])[stale]["active_state"] for s in (dashboard, progress, canonical)]
    for state in compact:
        assert state["freshness_state"] == "likely_stale"
        assert state["problem_class"] == "active_stale_attention"
        assert state["surface_category"] == "past_expected_lifecycle"
        assert state["show_in_active_progress"] is True and state["keep_active_polling"] is True
    assert compact[0] == compact[1] == compact[2]
    full = detail["active_state"]
    assert full["surface_category"] == "likely_stale"
    assert {**full, "surface_category": None} == {**compact[0], "surface_category": None}
    assert detail["diagnostics_visible_after_summary"] is True
    assert listed["data"][0]["id"] == stale and listed["data"][0]["freshness_state"] == "likely_stale"
    assert api_detail["freshness_state"] == "likely_stale" and api_detail["reconciled"] is False
    assert api_detail["diagnostics"]["threshold_seconds"] == PACK.heartbeat_seconds
    assert api_detail["diagnostics"]["evidence"]["last_heartbeat_at"]
    assert _by_id(dashboard["items"])[stale]["detail_url"] == f"http://gateway.test/admin/operations/{stale}"


async def test_dashboard_shows_fresh_stale_reconciled_and_terminal_runs_at_once(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    ids = await _runs_in_every_state(runtime, tenant)
    body = await get_json(
        client, "dashboard", f"/admin/t/{tenant.id}/dashboard", factory.headers(key, scope="orch:read")
    )
    states = {item["run_id"]: item["active_state"]["freshness_state"] for item in body["items"]}
    assert states == {
        ids["fresh"]: "fresh_active",
        ids["stale"]: "likely_stale",
        ids["reconciled"]: "reconciled_failed",
        ids["terminal"]: "terminal_normal",
    }
    assert body["tenant_id"] == tenant.id
    reconciled = _by_id(body["items"])[ids["reconciled"]]["active_state"]
    assert reconciled["is_reconciled"] is True and reconciled["stale_lineage_note"]


async def test_progress_overlay_keeps_stale_runs_and_polls_only_while_active(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    headers = factory.headers(key, scope="orch:read")
    path = f"/admin/t/{tenant.id}/operations/progress"
    await add_run(runtime, tenant, status="completed", outcome="succeeded", age=60)
    idle = await get_json(client, "progress", path, headers)
    assert idle == {
        "tenant_id": tenant.id,
        "has_visible_active_runs": False,
        "poll_interval": None,
        "items": [],
    }

    stale = await add_run(runtime, tenant, status="queued", age=PACK.queued_seconds + 60)
    fresh = await add_run(runtime, tenant, status="running", age=10, heartbeat_age=1)
    busy = await get_json(client, "progress", path, headers)
    assert busy["poll_interval"] == "10s" and busy["has_visible_active_runs"] is True
    assert [item["run_id"] for item in busy["items"]] == [fresh, stale]


async def test_progress_overlay_revalidates_with_304(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    await add_run(runtime, tenant, status="running", age=10, heartbeat_age=1)
    headers = factory.headers(key, scope="orch:read")
    path = f"/admin/t/{tenant.id}/operations/progress"
    first = await client.get(path, headers=headers)
    again = await client.get(path, headers={**headers, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["cache-control"] == "private, no-cache"


async def test_api_list_filters_on_freshness_reconciled_status_outcome_and_type(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    ids = await _runs_in_every_state(runtime, tenant)
    batch = await add_run(
        runtime,
        tenant,
        status="completed",
        outcome="partially_succeeded",
        run_type="deadletter.replay_batch",
        age=700,
    )
    headers = factory.headers(key, scope="orch:read")

    async def ids_of(**params):  # type: ignore[no-untyped-def]
        body = await get_json(client, "list", "/api/admin/operations", headers, **params)
        return [item["id"] for item in body["data"]]

    assert await ids_of(freshness_state="fresh_active") == [ids["fresh"]]
    assert await ids_of(freshness_state="likely_stale") == [ids["stale"]]
    assert await ids_of(freshness_state="reconciled_failed") == [ids["reconciled"]]
    assert await ids_of(freshness_state="terminal_normal") == [ids["terminal"], batch]
    assert await ids_of(reconciled="true") == [ids["reconciled"]]
    assert set(await ids_of(reconciled="false")) == {ids["fresh"], ids["stale"], ids["terminal"], batch}
    assert await ids_of(status="running") == [ids["fresh"], ids["stale"]]
    assert await ids_of(outcome="partially_succeeded") == [batch]
    assert await ids_of(type="deadletter.replay_batch") == [batch]
    assert await ids_of(tenant_id=tenant.id, status="completed", outcome="failed") == [ids["reconciled"]]


async def test_api_list_pages_in_created_at_desc_id_desc_order(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    now = datetime.now(UTC)
    ids = [
        await add_run(runtime, tenant, status="completed", outcome="succeeded", age=age, now=now)
        for age in (50, 10, 10, 30, 20)
    ]
    headers = factory.headers(key, scope="orch:read")
    seen, token = [], None
    while True:
        params = {"limit": 2, **({"continuationToken": token} if token else {})}
        body = await get_json(client, "list", "/api/admin/operations", headers, **params)
        seen += [item["id"] for item in body["data"]]
        token = body["continuationToken"]
        if token is None:
            break
    assert seen == [ids[2], ids[1], ids[4], ids[3], ids[0]]


async def test_api_detail_has_counts_failures_reconciliation_and_diagnostics(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    ids = await _runs_in_every_state(runtime, tenant)
    headers = factory.headers(key, scope="orch:read")
    body = await get_json(client, "detail", f"/api/admin/operations/{ids['reconciled']}", headers)
    assert body["freshness_state"] == "reconciled_failed" and body["reconciled"] is True
    assert body["summary_counts"] == {"total": 2}
    assert body["failure_summary"] == [{"code": "run.stale_no_heartbeat", "message": "stale"}]
    record = body["reconciliation"]
    assert record["source"] == "scheduled_reconciler" and record["reason_code"] == "run.stale_no_heartbeat"
    assert record["evidence"]["threshold_seconds"] == 1800 and record["reconciled_at"]
    assert body["diagnostics"]["threshold_seconds"] == 1800
    fresh = await get_json(client, "detail", f"/api/admin/operations/{ids['fresh']}", headers)
    assert fresh["reconciliation"] is None and fresh["completed_at"] is None
    assert "operator_message" not in fresh  # the seed types it as a string: absent, not null


async def test_canonical_list_problem_class_and_active_tab(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    ids = await _runs_in_every_state(runtime, tenant)
    failed = await add_run(runtime, tenant, status="completed", outcome="failed", age=800)
    headers = factory.headers(key, scope="orch:read")

    async def ids_of(**params):  # type: ignore[no-untyped-def]
        body = await get_json(client, "canonical", "/admin/operations", headers, tenant=tenant.id, **params)
        assert body["tenant_filter"] == tenant.id
        return [item["run_id"] for item in body["items"]]

    assert await ids_of(problemClass="active_stale_attention") == [ids["stale"]]
    assert await ids_of(problemClass="terminal_follow_up") == [failed, ids["reconciled"]]
    assert await ids_of(problemClass="none") == [ids["fresh"], ids["terminal"]]
    assert await ids_of(activeTab="active") == [ids["fresh"], ids["stale"]]
    assert set(await ids_of(activeTab="completed")) == {ids["terminal"], failed, ids["reconciled"]}
    everything = await get_json(client, "canonical", "/admin/operations", headers, activeTab="anything-else")
    assert everything["active_tab"] == "anything-else" and len(everything["items"]) == 5


async def test_unknown_run_ids_are_404(client, factory) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    headers = factory.headers(key, scope="orch:read")
    for path in (
        "/api/admin/operations/0",
        "/api/admin/operations/-3",
        f"/api/admin/operations/{2**70}",
        "/admin/operations/999999999",
        "/admin/t/0/dashboard",
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_lifecycle_routes_need_orch_read(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    response = await client.get(
        f"/admin/t/{tenant.id}/dashboard", headers=factory.headers(key, scope="orch:quota")
    )
    assert response.status_code == 403


def _enum(prop: dict) -> set:  # type: ignore[type-arg]
    values = set(prop.get("enum", []))
    for member in prop.get("oneOf", []):
        values |= set(member.get("enum", []))
    return {v for v in values if v is not None}


def test_generated_contract_closes_the_objects_the_seed_closes() -> None:
    from tests.operations.support import project_document, seed_documents

    ours = project_document()["components"]["schemas"]
    for seed in seed_documents():
        for name, schema in seed["components"]["schemas"].items():
            if "properties" not in schema:
                continue
            assert name in ours, name
            assert set(ours[name]["properties"]) == set(schema["properties"]), name
            assert set(ours[name].get("required", [])) == set(schema.get("required", [])), name
            if schema.get("additionalProperties") is False:
                assert ours[name].get("additionalProperties") is False, name
            for field, spec in schema["properties"].items():
                if "enum" in spec:
                    assert _enum(ours[name]["properties"][field]) == {
                        v for v in spec["enum"] if v is not None
                    }, (name, field)
    assert_contract("/admin/operations", {"items": []})


async def test_demo_dashboard_shows_a_fresh_a_stale_a_reconciled_and_a_terminal_run(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    from app.seed import seed_demo

    await seed_demo(runtime.sessions)
    acme = await tenant_of(runtime, "acme")
    headers = factory.headers("acme", scope="orch:read")
    body = await get_json(client, "dashboard", f"/admin/t/{acme.id}/dashboard", headers)
    states = {item["active_state"]["freshness_state"] for item in body["items"]}
    assert {"fresh_active", "likely_stale", "reconciled_failed", "terminal_normal"} <= states
    listed = await get_json(client, "list", "/api/admin/operations", headers, limit=200)
    assert any(item["tenant_id"] is None for item in listed["data"])  # the workspace's housekeeping run


async def test_thresholds_variable_changes_what_is_stale(client, factory, runtime, gateway_env) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    run = await add_run(runtime, tenant, status="running", age=100, heartbeat_age=90)
    headers = factory.headers(key, scope="orch:read")
    before = await get_json(client, "canonical_detail", f"/admin/operations/{run}", headers)
    # Read once at start-up: a gateway started with the variable set sees the run as stale.
    tighter = make_app(gateway_env, JOBGATE_LIFECYCLE_THRESHOLDS='{"pack_run.execute": {"heartbeat_seconds": 60}}')
    async with serving(tighter) as tighter_client:
        after = await get_json(tighter_client, "canonical_detail", f"/admin/operations/{run}", headers)
    assert (before["active_state"]["freshness_state"], after["active_state"]["freshness_state"]) == (
        "fresh_active",
        "likely_stale",
    )

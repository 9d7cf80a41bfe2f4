"""Who sees which runs (spec §7): the caller's tenant, the granted tenants of its workspace, and
that workspace's workspace-scoped runs; nothing of other workspaces."""

from __future__ import annotations

import uuid

from tests.operations.support import add_run, get_json, tenant_of


async def _workspace_pair(factory, runtime):  # type: ignore[no-untyped-def]
    workspace = f"ws-{uuid.uuid4().hex[:10]}"
    a, b = await factory.tenant(workspace=workspace), await factory.tenant(workspace=workspace)
    return a, b, await tenant_of(runtime, a), await tenant_of(runtime, b)


async def _api_ids(client, headers, **params):  # type: ignore[no-untyped-def]
    body = await get_json(client, "list", "/api/admin/operations", headers, **params)
    return {item["id"] for item in body["data"]}


async def test_other_workspaces_run_is_404_on_both_detail_routes(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    mine, other = await factory.tenant(), await factory.tenant()
    foreign = await add_run(runtime, await tenant_of(runtime, other), status="running", age=5)
    headers = factory.headers(mine, scope="orch:read")
    for path in (f"/api/admin/operations/{foreign}", f"/admin/operations/{foreign}"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 404, path
    assert foreign not in await _api_ids(client, headers)


async def test_ungranted_tenant_of_the_same_workspace_is_404_and_invisible(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    a, _b, _ta, tb = await _workspace_pair(factory, runtime)
    run_b = await add_run(runtime, tb, status="running", age=5)
    headers = factory.headers(a, scope="orch:read")  # grants only a
    for path in (
        f"/admin/t/{tb.id}/dashboard",
        f"/admin/t/{tb.id}/operations/progress",
        f"/admin/operations/{run_b}",
    ):
        assert (await client.get(path, headers=headers)).status_code == 404, path
    assert (
        await client.get("/admin/operations", headers=headers, params={"tenant": tb.id})
    ).status_code == 404
    assert run_b not in await _api_ids(client, headers)


async def test_granted_tenant_of_the_same_workspace_is_visible(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    a, b, ta, tb = await _workspace_pair(factory, runtime)
    run_a = await add_run(runtime, ta, status="running", age=5)
    run_b = await add_run(runtime, tb, status="running", age=5)
    headers = factory.headers(a, tenants=[a, b], scope="orch:read")
    assert {run_a, run_b} <= await _api_ids(client, headers)
    dashboard = await get_json(client, "dashboard", f"/admin/t/{tb.id}/dashboard", headers)
    assert [item["run_id"] for item in dashboard["items"]] == [run_b]
    assert dashboard["items"][0]["tenant_label"] == b
    await get_json(client, "canonical_detail", f"/admin/operations/{run_b}", headers)


async def test_tenant_id_filter_outside_the_visible_set_matches_nothing(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    mine, other = await factory.tenant(), await factory.tenant()
    theirs = await tenant_of(runtime, other)
    await add_run(runtime, theirs, status="running", age=5)
    await add_run(runtime, await tenant_of(runtime, mine), status="running", age=5)
    body = await get_json(
        client, "list", "/api/admin/operations", factory.headers(mine, scope="orch:read"), tenant_id=theirs.id
    )
    assert body == {"data": [], "continuationToken": None}


async def test_workspace_scoped_runs_are_visible_within_their_workspace_only(
    client, factory, runtime
) -> None:  # type: ignore[no-untyped-def]
    a, b, ta, _tb = await _workspace_pair(factory, runtime)
    outsider = await factory.tenant()
    housekeeping = await add_run(
        runtime,
        ta,
        status="completed",
        outcome="succeeded",
        run_type="ops.reconcile",
        workspace_scoped=True,
        age=10,
    )
    body = await get_json(
        client, "detail", f"/api/admin/operations/{housekeeping}", factory.headers(b, scope="orch:read")
    )
    assert body["tenant_id"] is None
    assert housekeeping in await _api_ids(client, factory.headers(a, scope="orch:read"))
    canonical = await get_json(
        client, "canonical", "/admin/operations", factory.headers(a, scope="orch:read")
    )
    assert housekeeping in {item["run_id"] for item in canonical["items"]}
    response = await client.get(
        f"/api/admin/operations/{housekeeping}", headers=factory.headers(outsider, scope="orch:read")
    )
    assert response.status_code == 404


async def test_workspace_scoped_runs_stay_off_the_tenant_dashboard(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    await add_run(runtime, tenant, status="running", run_type="ops.reconcile", workspace_scoped=True, age=5)
    body = await get_json(
        client,
        "progress",
        f"/admin/t/{tenant.id}/operations/progress",
        factory.headers(key, scope="orch:read"),
    )
    assert body["items"] == [] and body["poll_interval"] is None


async def test_project_header_narrows_to_the_projects_runs(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    billing = await add_run(runtime, tenant, status="running", age=5, project_id="billing")
    scanner = await add_run(runtime, tenant, status="running", age=5, project_id="scanner")
    workspace = await add_run(
        runtime,
        tenant,
        status="completed",
        outcome="succeeded",
        run_type="ops.reconcile",
        workspace_scoped=True,
        age=5,
    )
    headers = factory.headers(key, scope="orch:read", project="billing")
    assert await _api_ids(client, headers) == {billing}
    for run in (scanner, workspace):
        assert (await client.get(f"/admin/operations/{run}", headers=headers)).status_code == 404
    unscoped = await _api_ids(client, factory.headers(key, scope="orch:read"))
    assert {billing, scanner, workspace} <= unscoped


async def test_a_grant_in_another_workspace_never_widens_the_view(client, factory, runtime) -> None:  # type: ignore[no-untyped-def]
    mine, elsewhere = await factory.tenant(), await factory.tenant()
    far = await tenant_of(runtime, elsewhere)
    run = await add_run(runtime, far, status="running", age=5)
    headers = factory.headers(mine, tenants=[mine, elsewhere], scope="orch:read")
    assert run not in await _api_ids(client, headers)
    assert (await client.get(f"/admin/t/{far.id}/dashboard", headers=headers)).status_code == 404
    assert (await client.get(f"/api/admin/operations/{run}", headers=headers)).status_code == 404

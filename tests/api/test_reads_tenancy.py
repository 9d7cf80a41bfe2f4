"""Tenancy of the console reads: another tenant's object is 404, identical to a missing one;
lists and summaries count only the caller's tenant, and only its project when
``X-Stella-Project`` is sent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.rows import Rows, ago, strip_trace, tenant_rows, walk

PROJECTS = (None, "billing", "scanner")

DETAILS = {
    # kind: (detail path, builder of one row, its id)
    "source": ("/jobengine/sources/{}", lambda rows, **f: rows.source(**f), lambda r: r.source_id),
    "job": ("/jobengine/jobs/{}", lambda rows, **f: rows.job(**f), lambda r: r.job_id),
    "deadletter": ("/jobengine/deadletter/{}", lambda rows, **f: rows.entry(**f), lambda r: r.entry_id),
    "pack-run": ("/jobengine/pack-runs/{}", lambda rows, **f: rows.pack_run(**f), lambda r: r.pack_run_id),
}


@pytest.mark.parametrize("kind", [*DETAILS, "quota"])
async def test_other_tenants_object_is_404_identical_to_a_missing_one(client, factory, runtime, kind):
    owner, owner_rows = await tenant_rows(runtime, factory)
    other = await factory.tenant()
    if kind == "quota":
        path, row = "/jobengine/quotas/{}", owner_rows.quota("scan")
        object_id = row.quota_id
    else:
        path, build, id_of = DETAILS[kind]
        row = build(owner_rows)
        object_id = id_of(row)
    await owner_rows.add(row)

    own = await client.get(path.format(object_id), headers=factory.headers(owner))
    assert own.status_code == 200
    foreign = await client.get(path.format(object_id), headers=factory.headers(other))
    missing = await client.get(path.format("no-such-id"), headers=factory.headers(other))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.headers["content-type"].startswith("application/problem+json")
    assert strip_trace(foreign.json()) == strip_trace(missing.json())
    assert object_id not in foreign.text


@pytest.mark.parametrize("kind", list(DETAILS))
async def test_object_of_another_project_is_404_under_a_project_header(client, factory, runtime, kind):
    tenant, rows = await tenant_rows(runtime, factory)
    path, build, id_of = DETAILS[kind]
    row = build(rows, project_id="billing")
    await rows.add(row)
    url = path.format(id_of(row))
    assert (await client.get(url, headers=factory.headers(tenant, project="billing"))).status_code == 200
    assert (await client.get(url, headers=factory.headers(tenant))).status_code == 200
    other_project = await client.get(url, headers=factory.headers(tenant, project="scanner"))
    missing = await client.get(path.format("no-such-id"), headers=factory.headers(tenant, project="scanner"))
    assert other_project.status_code == 404
    assert strip_trace(other_project.json()) == strip_trace(missing.json())


async def seed_everything(rows: Rows, marker: str) -> dict[str, list[Any]]:
    """Two of each project-scoped row per project (none, billing, scanner) and three quotas."""
    made: dict[str, list[Any]] = {"sources": [], "jobs": [], "deadletter": [], "pack-runs": [], "audit": []}
    for project in PROJECTS:
        for i in range(2):
            made["sources"].append(rows.source(project_id=project, name=f"{marker}-{i}"))
            made["jobs"].append(
                rows.job(project_id=project, status=("pending", "failed")[i], job_type=("scan", "export")[i])
            )
            made["deadletter"].append(
                rows.entry(
                    project_id=project, category=("transient", "policy")[i], dead_lettered_at=ago(hours=i + 1)
                )
            )
            made["pack-runs"].append(rows.pack_run(project_id=project))
            made["audit"].append(rows.audit(project_id=project, subject=marker))
    made["quotas"] = [rows.quota(kind) for kind in ("scan", "export", "index")]
    await rows.add(*(row for group in made.values() for row in group))
    return made


LIST_IDS = {
    "sources": ("/jobengine/sources", "sourceId", lambda r: r.source_id),
    "jobs": ("/jobengine/jobs", "jobId", lambda r: r.job_id),
    "deadletter": ("/jobengine/deadletter", "entryId", lambda r: r.entry_id),
    "pack-runs": ("/jobengine/pack-runs", "packRunId", lambda r: r.pack_run_id),
    "audit": ("/jobengine/audit", "auditId", lambda r: r.id),
}


@pytest.fixture
async def two_tenants(runtime, factory):  # type: ignore[no-untyped-def]
    """(tenant, its rows) twice, with identical shapes, so a leak would show in every count."""
    result = []
    for marker in ("mine", "theirs"):
        tenant, rows = await tenant_rows(runtime, factory)
        result.append((tenant, await seed_everything(rows, marker)))
    return result


@pytest.mark.parametrize("name", list(LIST_IDS))
@pytest.mark.parametrize("project", PROJECTS)
async def test_list_shows_only_the_callers_tenant_and_project(client, factory, two_tenants, name, project):
    (tenant, mine), _ = two_tenants
    path, id_field, id_of = LIST_IDS[name]
    walked = await walk(client, path, factory.headers(tenant, project=project), limit=4)
    expected = {id_of(r) for r in mine[name] if project is None or r.project_id == project}
    assert {item[id_field] for item in walked} == expected
    assert len(walked) == len(expected)


@pytest.mark.parametrize("project", PROJECTS)
async def test_quota_list_shows_only_the_callers_tenant(client, factory, two_tenants, project):
    (tenant, mine), _ = two_tenants
    walked = await walk(client, "/jobengine/quotas", factory.headers(tenant, project=project), limit=2)
    assert [q["quotaId"] for q in walked] == [
        q.quota_id for q in sorted(mine["quotas"], key=lambda q: q.job_type)
    ]


@pytest.mark.parametrize("project", PROJECTS)
async def test_summaries_count_only_the_callers_tenant_and_project(client, factory, two_tenants, project):
    (tenant, mine), _ = two_tenants
    headers = factory.headers(tenant, project=project)
    jobs = [j for j in mine["jobs"] if project is None or j.project_id == project]
    entries = [e for e in mine["deadletter"] if project is None or e.project_id == project]

    job_summary = (await client.get("/jobengine/jobs/summary", headers=headers)).json()
    assert job_summary["overall"]["total"] == len(jobs)
    assert job_summary["overall"]["pending"] == sum(j.status == "pending" for j in jobs)
    assert {t["jobType"]: t["counts"]["total"] for t in job_summary["byJobType"]} == {
        "export": sum(j.job_type == "export" for j in jobs),
        "scan": sum(j.job_type == "scan" for j in jobs),
    }

    stats = (await client.get("/jobengine/deadletter/stats", headers=headers)).json()
    assert stats["total"] == stats["byStatus"]["pending"] == stats["inflowLast24h"] == len(entries)
    assert sum(c["count"] for c in stats["byCategory"]) == len(entries)
    assert sum(c["count"] for c in stats["topClusters"]) == len(entries)
    visible_ids = {e.entry_id for e in entries}
    assert all(set(c["sampleEntryIds"]) <= visible_ids for c in stats["topClusters"])

    groups = await walk(client, "/jobengine/deadletter/summary", headers, limit=1)
    assert {g["category"]: g["total"] for g in groups} == {
        "policy": sum(e.category == "policy" for e in entries),
        "transient": sum(e.category == "transient" for e in entries),
    }


async def test_quota_summary_counts_only_the_callers_tenant(client, factory, runtime):
    mine, mine_rows = await tenant_rows(runtime, factory)
    _, theirs_rows = await tenant_rows(runtime, factory)
    await mine_rows.add(
        mine_rows.quota("scan"), *(mine_rows.job(job_type="scan", status="running") for _ in range(2))
    )
    await theirs_rows.add(
        theirs_rows.quota("scan"),
        theirs_rows.quota("other"),
        *(theirs_rows.job(job_type="scan", status=s) for s in ("running", "pending", "pending", "leased")),
    )
    body = (await client.get("/jobengine/quotas/summary", headers=factory.headers(mine))).json()
    assert [(i["jobType"], i["active"], i["queued"]) for i in body["items"]] == [("scan", 2, 0)]
    assert body["totals"]["quotas"] == 1
    assert body["totals"]["active"] == 2
    assert body["totals"]["queued"] == 0


async def test_quota_summary_observes_the_whole_tenant_because_limits_are_tenant_wide(
    client, factory, runtime
):
    """Quotas belong to the tenant: a project header does not hide the jobs of other projects
    that hold the tenant's slots (backpressure would otherwise look lower than it is)."""
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(
        rows.quota("scan", max_active=2),
        rows.job(job_type="scan", status="running", project_id="billing"),
        rows.job(job_type="scan", status="running", project_id="scanner"),
        rows.job(job_type="scan", status="pending", project_id="billing"),
    )
    for project in PROJECTS:
        body = (
            await client.get("/jobengine/quotas/summary", headers=factory.headers(tenant, project=project))
        ).json()
        (item,) = body["items"]
        assert (item["active"], item["queued"], item["throttled"], item["backpressure"]) == (
            2,
            1,
            1,
            "saturated",
        )


async def test_token_of_one_project_is_refused_under_another(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(
        *(rows.job(project_id="billing") for _ in range(3)),
        *(rows.job(project_id="scanner") for _ in range(3)),
    )
    first = await client.get(
        "/jobengine/jobs", params={"limit": 1}, headers=factory.headers(tenant, project="billing")
    )
    token = first.json()["continuationToken"]
    for project in ("scanner", None):
        refused = await client.get(
            "/jobengine/jobs",
            params={"limit": 1, "continuationToken": token},
            headers=factory.headers(tenant, project=project),
        )
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalid_continuation_token"


async def test_token_of_one_tenant_is_refused_for_another(client, factory, runtime):
    first_tenant, first_rows = await tenant_rows(runtime, factory)
    second_tenant, second_rows = await tenant_rows(runtime, factory)
    await first_rows.add(*(first_rows.entry() for _ in range(3)))
    await second_rows.add(*(second_rows.entry() for _ in range(3)))
    token = (
        await client.get("/jobengine/deadletter", params={"limit": 1}, headers=factory.headers(first_tenant))
    ).json()["continuationToken"]
    refused = await client.get(
        "/jobengine/deadletter",
        params={"limit": 1, "continuationToken": token},
        headers=factory.headers(second_tenant),
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_continuation_token"


ID_FIELDS = {"source": "source_id", "job": "job_id", "deadletter": "entry_id", "pack-run": "pack_run_id"}


@pytest.mark.parametrize("kind", list(DETAILS))
async def test_the_same_id_in_two_tenants_reads_each_callers_own_row(client, factory, runtime, kind):
    path, build, _ = DETAILS[kind]
    shared_id = "shared-id"
    seen = {}
    for project in ("billing", "scanner"):
        tenant, rows = await tenant_rows(runtime, factory)
        await rows.add(build(rows, project_id=project, **{ID_FIELDS[kind]: shared_id}))
        seen[tenant] = project
    for tenant, project in seen.items():
        response = await client.get(path.format(shared_id), headers=factory.headers(tenant))
        assert response.status_code == 200
        assert response.json()["projectId"] == project

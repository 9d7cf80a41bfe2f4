"""Quota writes: create (201, Location, ETag; one per jobType), full replace with If-Match,
delete, idempotent pause/resume with who/why/when, and clear 400 problems that change nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from app.storage.models import AuditRecord, Quota

LIST = "/jobengine/quotas"


def limits(**fields: Any) -> dict[str, Any]:
    return {"jobType": "scan.nightly", "maxActive": 4, "maxPerHour": 120, "burst": 10, **fields}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["traceId"]
    return body


async def create(client, factory, tenant: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(LIST, json=limits(**fields), headers=factory.headers(tenant))
    assert response.status_code == 201, response.text
    return response.json()


async def quota_rows(runtime, tenant: str) -> list[tuple]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(
                Quota.job_type,
                Quota.max_active,
                Quota.max_per_hour,
                Quota.burst,
                Quota.paused,
                Quota.paused_by,
                Quota.paused_reason,
                Quota.paused_at,
            )
            .where(Quota.tenant_id == info.id)
            .order_by(Quota.job_type)
        )
        return [tuple(r) for r in rows]


async def audit_rows(runtime, tenant: str) -> list[AuditRecord]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        stmt = select(AuditRecord).where(AuditRecord.tenant_id == info.id).order_by(AuditRecord.id)
        return list((await session.execute(stmt)).scalars())


async def test_create_answers_201_with_location_and_the_etag_of_the_read(client, factory):
    tenant = await factory.tenant()
    response = await client.post(LIST, json=limits(), headers=factory.headers(tenant))
    assert response.status_code == 201, response.text
    quota = response.json()
    assert {k: quota[k] for k in limits()} == limits()
    assert quota["paused"] is False and quota["pausedBy"] is None
    assert response.headers["location"] == f"http://gateway.test{LIST}/{quota['quotaId']}"
    read = await client.get(f"{LIST}/{quota['quotaId']}", headers=factory.headers(tenant))
    assert read.json() == quota
    assert response.headers["etag"] == read.headers["etag"]


async def test_second_quota_of_a_job_type_is_409_quota_exists(client, factory, runtime):
    tenant = await factory.tenant()
    await create(client, factory, tenant)
    response = await client.post(LIST, json=limits(maxActive=9), headers=factory.headers(tenant))
    assert_problem(response, 409, "quota_exists")
    assert [r[:2] for r in await quota_rows(runtime, tenant)] == [("scan.nightly", 4)]


async def test_same_job_type_in_another_tenant_is_allowed(client, factory):
    first, second = await factory.tenant(), await factory.tenant()
    await create(client, factory, first)
    await create(client, factory, second)


async def test_concurrent_creates_of_one_job_type_make_one_quota_and_409s(client, factory, runtime):
    tenant = await factory.tenant()
    responses = await asyncio.gather(
        *(client.post(LIST, json=limits(maxActive=n + 1), headers=factory.headers(tenant)) for n in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 7, [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"quota_exists"}
    assert len(await quota_rows(runtime, tenant)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (limits(maxActive=0), "maxActive"),
        (limits(maxPerHour=-1), "maxPerHour"),
        (limits(burst=0), "burst"),
        (limits(maxActive="four"), "maxActive"),
        (limits(maxActive=True), "maxActive"),
        (limits(maxActive=1.5), "maxActive"),
        (limits(surprise=True), "surprise"),
        ({k: v for k, v in limits().items() if k != "burst"}, "burst"),
        (limits(jobType=""), "jobType"),
    ],
)
async def test_invalid_create_is_400_naming_the_field_and_writes_nothing(
    client, factory, runtime, body, field
):
    tenant = await factory.tenant()
    response = await client.post(LIST, json=body, headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert field in [e["field"] for e in problem["errors"]]
    assert await quota_rows(runtime, tenant) == []


async def test_burst_above_max_per_hour_is_400_with_an_error_for_burst(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(LIST, json=limits(maxPerHour=5, burst=6), headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["burst"]
    assert "maxPerHour" in problem["errors"][0]["message"]
    assert await quota_rows(runtime, tenant) == []
    equal = await client.post(LIST, json=limits(maxPerHour=5, burst=5), headers=factory.headers(tenant))
    assert equal.status_code == 201


async def test_put_replaces_the_limits(client, factory):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    response = await client.put(
        path, json={"maxActive": 7, "maxPerHour": 70, "burst": 7}, headers=factory.headers(tenant)
    )
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert (replaced["maxActive"], replaced["maxPerHour"], replaced["burst"]) == (7, 70, 7)
    assert replaced["jobType"] == quota["jobType"] and replaced["createdAt"] == quota["createdAt"]
    assert (await client.get(path, headers=factory.headers(tenant))).json() == replaced


async def test_put_with_the_same_job_type_is_accepted_and_another_is_409(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    same = await client.put(path, json=limits(maxActive=5), headers=factory.headers(tenant))
    assert same.status_code == 200 and same.json()["maxActive"] == 5
    other = await client.put(
        path, json=limits(jobType="other.type", maxActive=6), headers=factory.headers(tenant)
    )
    assert_problem(other, 409, "job_type_immutable")
    assert [r[:2] for r in await quota_rows(runtime, tenant)] == [("scan.nightly", 5)]


async def test_put_with_burst_above_max_per_hour_is_400_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    before = await quota_rows(runtime, tenant)
    response = await client.put(
        f"{LIST}/{quota['quotaId']}",
        json={"maxActive": 1, "maxPerHour": 2, "burst": 3},
        headers=factory.headers(tenant),
    )
    assert [e["field"] for e in assert_problem(response, 400, "validation_failed")["errors"]] == ["burst"]
    assert await quota_rows(runtime, tenant) == before


async def test_put_missing_a_limit_or_with_unknown_fields_is_400(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    before = await quota_rows(runtime, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    for body in (
        {"maxActive": 1, "maxPerHour": 2},
        {"maxActive": 1, "maxPerHour": 2, "burst": 1, "paused": True},
    ):
        assert_problem(
            await client.put(path, json=body, headers=factory.headers(tenant)), 400, "validation_failed"
        )
    assert await quota_rows(runtime, tenant) == before


async def test_put_with_the_current_etag_succeeds_and_a_stale_one_is_412(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    etag = (await client.get(path, headers=factory.headers(tenant))).headers["etag"]
    first = await client.put(
        path,
        json={"maxActive": 2, "maxPerHour": 20, "burst": 2},
        headers={**factory.headers(tenant), "If-Match": etag},
    )
    assert first.status_code == 200, first.text
    second = await client.put(
        path,
        json={"maxActive": 3, "maxPerHour": 30, "burst": 3},
        headers={**factory.headers(tenant), "If-Match": etag},
    )
    assert_problem(second, 412, "precondition_failed")
    weak = await client.put(
        path,
        json={"maxActive": 3, "maxPerHour": 30, "burst": 3},
        headers={**factory.headers(tenant), "If-Match": "W/" + first.headers["etag"]},
    )
    assert_problem(weak, 412, "precondition_failed")
    assert (await client.get(path, headers=factory.headers(tenant))).json() == first.json()


async def test_delete_answers_204_and_the_quota_is_gone(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    response = await client.delete(path, headers=factory.headers(tenant))
    assert response.status_code == 204 and response.content == b""
    assert_problem(await client.get(path, headers=factory.headers(tenant)), 404, "not_found")
    assert_problem(await client.delete(path, headers=factory.headers(tenant)), 404, "not_found")
    assert await quota_rows(runtime, tenant) == []
    await create(client, factory, tenant)  # the jobType is free again


async def test_delete_with_a_stale_etag_is_412_and_keeps_the_quota(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    response = await client.delete(
        f"{LIST}/{quota['quotaId']}", headers={**factory.headers(tenant), "If-Match": '"stale"'}
    )
    assert_problem(response, 412, "precondition_failed")
    assert len(await quota_rows(runtime, tenant)) == 1


async def test_pause_records_who_why_and_when_and_is_idempotent(client, factory, runtime):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    first = await client.post(
        f"{path}/pause", headers=factory.headers(tenant, subject="ops.bob", reason="registry outage")
    )
    assert first.status_code == 200, first.text
    paused = first.json()
    assert paused["paused"] is True
    assert (paused["pausedBy"], paused["pausedReason"]) == ("ops.bob", "registry outage")
    assert paused["pausedAt"] and paused["pausedAt"] >= quota["updatedAt"]
    again = await client.post(
        f"{path}/pause", headers=factory.headers(tenant, subject="ops.carol", reason="again")
    )
    assert again.status_code == 200 and again.json() == paused
    assert (await client.get(path, headers=factory.headers(tenant))).json() == paused


async def test_resume_clears_the_pause_record_and_is_idempotent(client, factory):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    path = f"{LIST}/{quota['quotaId']}"
    await client.post(f"{path}/pause", headers=factory.headers(tenant))
    resumed = await client.post(f"{path}/resume", headers=factory.headers(tenant))
    assert resumed.status_code == 200, resumed.text
    body = resumed.json()
    assert (body["paused"], body["pausedBy"], body["pausedReason"], body["pausedAt"]) == (
        False,
        None,
        None,
        None,
    )
    again = await client.post(f"{path}/resume", headers=factory.headers(tenant))
    assert again.status_code == 200 and again.json() == body


async def test_pause_shows_in_the_quota_summary(client, factory):
    tenant = await factory.tenant()
    quota = await create(client, factory, tenant)
    await client.post(f"{LIST}/{quota['quotaId']}/pause", headers=factory.headers(tenant))
    summary = (await client.get(f"{LIST}/summary", headers=factory.headers(tenant))).json()
    assert [(i["jobType"], i["paused"], i["backpressure"]) for i in summary["items"]] == [
        ("scan.nightly", True, "paused")
    ]


@pytest.mark.parametrize(
    ("method", "suffix"), [("PUT", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/resume")]
)
async def test_another_tenants_quota_is_404_and_untouched(client, factory, runtime, method, suffix):
    owner, intruder = await factory.tenant(), await factory.tenant()
    quota = await create(client, factory, owner)
    before = await quota_rows(runtime, owner)
    body = {"maxActive": 1, "maxPerHour": 1, "burst": 1} if method == "PUT" else None
    response = await client.request(
        method, f"{LIST}/{quota['quotaId']}{suffix}", json=body, headers=factory.headers(intruder)
    )
    assert_problem(response, 404, "not_found")
    assert await quota_rows(runtime, owner) == before


async def test_quota_writes_need_the_quota_scope_and_a_reason(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(LIST, json=limits(), headers=factory.headers(tenant, scope="orch:read"))
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post(LIST, json=limits(), headers=factory.headers(tenant, reason=None))
    assert_problem(response, 400, "operator_reason_required")
    assert await quota_rows(runtime, tenant) == []


async def test_every_quota_action_allowed_or_refused_has_one_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    headers = factory.headers(tenant, subject="ops.dana", reason="capacity review", ticket="OPS-42")
    calls: list[tuple[str, str, Any, int, str]] = []

    async def call(method: str, path: str, body: Any, action: str, trace: str) -> Any:
        response = await client.request(
            method, path, json=body, headers={**headers, "X-Stella-Trace-Id": trace}
        )
        calls.append((action, trace, path, response.status_code, method))
        return response

    created = (await call("POST", LIST, limits(), "quota.create", "trace-create-0001")).json()
    path = f"{LIST}/{created['quotaId']}"
    await call("POST", LIST, limits(), "quota.create", "trace-create-0002")  # 409
    await call("POST", LIST, limits(burst=9999), "quota.create", "trace-create-0003")  # 400
    await call(
        "PUT", path, {"maxActive": 2, "maxPerHour": 2, "burst": 2}, "quota.replace", "trace-replace-01"
    )
    await call("POST", f"{path}/pause", None, "quota.pause", "trace-pause-0001")
    await call("POST", f"{path}/pause", None, "quota.pause", "trace-pause-0002")
    await call("POST", f"{path}/resume", None, "quota.resume", "trace-resume-001")
    await call("DELETE", path, None, "quota.delete", "trace-delete-001")
    await call("DELETE", path, None, "quota.delete", "trace-delete-002")  # 404
    rows = await audit_rows(runtime, tenant)
    assert len(rows) == len(calls)
    by_trace = {row.trace_id: row for row in rows}
    assert len(by_trace) == len(calls)
    for action, trace, _, status, method in calls:
        row = by_trace[trace]
        assert (row.action, row.method, row.result_status) == (action, method, status)
        assert (row.subject, row.reason, row.ticket) == ("ops.dana", "capacity review", "OPS-42")
    assert [c[3] for c in calls] == [201, 409, 400, 200, 200, 200, 200, 204, 404]
    assert by_trace["trace-create-0002"].result_code == "quota_exists"
    assert by_trace["trace-pause-0001"].target == created["quotaId"]

"""Submitting a batch of jobs (POST /jobengine/jobs/batch, scope orch:submit)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from app.storage.models import Job, Source
from tests.engine.rows import audit_rows, snapshot, tenant_id

BATCH = "/jobengine/jobs/batch"


def _submitter(factory, tenant, **kwargs):
    return factory.headers(tenant, scope="orch:submit orch:read", reason=None, **kwargs)


async def _jobs(runtime, tenant):
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        rows = await session.execute(select(Job).where(Job.tenant_id == tid))
        return {job.job_id: job for job in rows.scalars()}


async def _submitted(runtime, tenant, source_id):
    tid = await tenant_id(runtime, tenant)
    async with runtime.sessions() as session:
        return (await session.execute(
            select(Source.jobs_submitted).where(Source.tenant_id == tid, Source.source_id == source_id)
        )).scalar_one()


async def test_mixed_batch_answers_207_in_order_and_inserts_only_the_valid_items(client, factory, runtime):
    tenant = await factory.tenant()
    one = await factory.source(client, tenant, sourceId="one")
    two = await factory.source(client, tenant, sourceId="two")
    off = await factory.source(client, tenant, sourceId="off", enabled=False)
    jobs = [
        {"jobType": "demo.noop", "sourceId": one["sourceId"], "payload": {"n": 0}, "priority": 5},
        {"jobType": "Not A Type", "sourceId": one["sourceId"]},
        {"jobType": "demo.noop", "sourceId": two["sourceId"], "runAfter": "2999-01-01T00:00:00Z", "maxAttempts": 7},
        {"jobType": "demo.noop", "sourceId": "nope"},
        {"jobType": "demo.noop", "sourceId": off["sourceId"]},
        {"jobType": "demo.noop", "sourceId": one["sourceId"], "payload": {"k": "a\u0000b"}},
        "not an object",
        {"jobType": "demo.noop", "sourceId": one["sourceId"], "extra": 1},
        {"jobType": "demo.noop", "sourceId": one["sourceId"]},
    ]
    response = await client.post(BATCH, json={"jobs": jobs}, headers=_submitter(factory, tenant))
    assert response.status_code == 207, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(jobs)))
    accepted = {r["index"]: r["jobId"] for r in results if "jobId" in r}
    refused = {r["index"]: r["error"]["code"] for r in results if "error" in r}
    assert sorted(accepted) == [0, 2, 8]
    assert refused == {1: "validation_failed", 3: "not_found", 4: "source_disabled", 5: "validation_failed",
                       6: "validation_failed", 7: "validation_failed"}
    assert all(r["error"]["detail"] for r in results if "error" in r)
    stored = await _jobs(runtime, tenant)
    assert set(stored) == set(accepted.values())
    first, scheduled, last = (stored[accepted[i]] for i in (0, 2, 8))
    assert (first.status, first.priority, first.payload, first.source_id) == ("pending", 5, {"n": 0}, "one")
    assert (scheduled.status, scheduled.max_attempts, scheduled.run_after.year) == ("scheduled", 7, 2999)
    assert (last.status, last.attempt, last.max_attempts) == ("pending", 0, 3)
    assert (await _submitted(runtime, tenant, "one"), await _submitted(runtime, tenant, "two")) == (2, 1)
    assert await _submitted(runtime, tenant, "off") == 0
    [audit] = await audit_rows(runtime, tenant, "job.submit_batch")
    assert (audit.result_status, audit.subject, audit.route) == (207, "tester", BATCH)


async def test_batch_of_valid_items_answers_200_and_each_job_reads_back(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    jobs = [{"jobType": "demo.noop", "sourceId": source["sourceId"], "payload": {"n": n}} for n in range(500)]
    response = await client.post(BATCH, json={"jobs": jobs}, headers=_submitter(factory, tenant))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(500)) and all("error" not in r for r in results)
    stored = await _jobs(runtime, tenant)
    assert [stored[r["jobId"]].payload for r in results] == [{"n": n} for n in range(500)]
    assert await _submitted(runtime, tenant, source["sourceId"]) == 500
    read = await client.get(f"/jobengine/jobs/{results[7]['jobId']}", headers=_submitter(factory, tenant))
    assert read.status_code == 200 and read.json()["payload"] == {"n": 7}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jobs": [{"jobType": "demo.noop", "sourceId": "S"}] * 501}, id="501-items"),
        pytest.param({"jobs": []}, id="no-items"),
        pytest.param({"jobs": {"jobType": "demo.noop", "sourceId": "S"}}, id="not-a-list"),
        pytest.param({"jobs": [{"jobType": "demo.noop", "sourceId": "S"}], "dryRun": True}, id="unknown-field"),
        pytest.param([{"jobType": "demo.noop", "sourceId": "S"}], id="body-is-a-list"),
    ],
)
async def test_invalid_batch_body_is_400_and_changes_nothing(client, factory, runtime, body):
    tenant = await factory.tenant()
    await factory.source(client, tenant, sourceId="S")
    before = await snapshot(runtime, tenant)
    response = await client.post(BATCH, json=body, headers=_submitter(factory, tenant))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_failed"
    assert await snapshot(runtime, tenant) == before
    [audit] = await audit_rows(runtime, tenant, "job.submit_batch")
    assert audit.result_status == 400


async def test_idempotent_retry_of_a_batch_answers_the_first_results_and_inserts_nothing_more(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    headers = {**_submitter(factory, tenant), "Idempotency-Key": "batch-0001"}
    body = {"jobs": [{"jobType": "demo.noop", "sourceId": source["sourceId"]}, {"jobType": "demo.noop",
                                                                              "sourceId": "nope"}]}
    first = await client.post(BATCH, json=body, headers=headers)
    second = await client.post(BATCH, json=body, headers=headers)
    assert first.status_code == second.status_code == 207
    assert first.json() == second.json() and second.headers["idempotent-replayed"] == "true"
    assert len(await _jobs(runtime, tenant)) == 1
    assert await _submitted(runtime, tenant, source["sourceId"]) == 1
    other = await client.post(BATCH, json={"jobs": body["jobs"][:1]}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


async def test_another_tenants_sources_are_refused_per_item_and_neither_tenant_changes_for_them(
    client, factory, runtime
):
    tenant, other = await factory.tenant(), await factory.tenant()
    mine = await factory.source(client, tenant)
    theirs = await factory.source(client, other, sourceId="theirs")
    theirs_before = await snapshot(runtime, other)
    jobs = [{"jobType": "demo.noop", "sourceId": theirs["sourceId"]}, {"jobType": "demo.noop",
                                                                    "sourceId": mine["sourceId"]}]
    response = await client.post(BATCH, json={"jobs": jobs}, headers=_submitter(factory, tenant))
    assert response.status_code == 207
    [refused, accepted] = response.json()["results"]
    assert refused == {"index": 0, "error": {"code": "not_found", "detail": "Source not found."}}
    assert "jobId" in accepted
    assert await snapshot(runtime, other) == theirs_before
    assert list(await _jobs(runtime, tenant)) == [accepted["jobId"]]


async def test_a_source_of_another_project_is_not_found_for_a_project_caller(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant, sourceId="alpha-src", projectId="alpha")
    beta = await factory.source(client, tenant, sourceId="beta-src", projectId="beta")
    jobs = [{"jobType": "demo.noop", "sourceId": "alpha-src"}, {"jobType": "demo.noop", "sourceId": "beta-src"}]
    response = await client.post(BATCH, json={"jobs": jobs}, headers=_submitter(factory, tenant, project="beta"))
    assert response.status_code == 207
    results = response.json()["results"]
    assert results[0]["error"]["code"] == "not_found" and "jobId" in results[1]
    assert (await _jobs(runtime, tenant))[results[1]["jobId"]].project_id == beta["projectId"] == "beta"
    assert await _submitted(runtime, tenant, "alpha-src") == 0


async def test_batch_of_only_refused_items_is_207_and_inserts_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    before = await snapshot(runtime, tenant)
    response = await client.post(BATCH, json={"jobs": [{"jobType": "demo.noop", "sourceId": "nope"}]},
                                 headers=_submitter(factory, tenant))
    assert response.status_code == 207
    assert await snapshot(runtime, tenant) == before


async def test_batch_needs_the_submit_scope(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    response = await client.post(BATCH, json={"jobs": [{"jobType": "demo.noop", "sourceId": source["sourceId"]}]},
                                 headers=factory.headers(tenant, scope="orch:read orch:operate"))
    assert response.status_code == 403
    assert await _jobs(runtime, tenant) == {}


async def test_concurrent_batches_on_one_source_count_every_job(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, sourceId="common")
    spare = await factory.source(client, tenant, sourceId="spare")
    headers = _submitter(factory, tenant)

    def body(n: int) -> dict:
        # Two sources in alternating order, so concurrent batches lock overlapping rows.
        order = [source["sourceId"], spare["sourceId"]][:: 1 if n % 2 else -1]
        return {"jobs": [{"jobType": "demo.noop", "sourceId": order[i % 2], "payload": {"b": n, "i": i}}
                         for i in range(40)]}

    answers = await asyncio.gather(*(client.post(BATCH, json=body(n), headers=headers) for n in range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    stored = await _jobs(runtime, tenant)
    assert len(stored) == 320
    assert {r["jobId"] for a in answers for r in a.json()["results"]} == set(stored)
    assert await _submitted(runtime, tenant, "common") == await _submitted(runtime, tenant, "spare") == 160

"""Replaying dead-letter entries one by one and in batches: the guarded transition creates
exactly one job per pending entry, refusals say why, and bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema_rs
import pytest
import yaml
from sqlalchemy import select

from app.storage.models import AuditRecord, DeadLetterEntry, Job, OperationRun, Source
from tests.api.rows import Rows, ago
from tests.conftest import ROOT

BATCH = "/jobengine/deadletter/replay/batch"


def replay_path(entry_id: str) -> str:
    return f"/jobengine/deadletter/{entry_id}/replay"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["traceId"]
    return body


async def dead_letters(
    runtime, tenant: str, count: int, *, source_id: str | None = None, **fields: Any
) -> list[DeadLetterEntry]:
    """``count`` entries of one source, each with its original failed job (maxAttempts 5)."""
    rows = await Rows.of(runtime, tenant)
    created: list[Any] = []
    if source_id is None:
        source = rows.source()
        source_id = source.source_id
        created.append(source)
    entries = []
    dead_lettered_at = fields.pop("dead_lettered_at", None)
    for n in range(count):
        job = rows.job(
            source_id=source_id,
            job_type=fields.get("job_type", "scan"),
            status="failed",
            attempt=3,
            max_attempts=5,
            priority=7,
            payload={"n": n},
        )
        entry = rows.entry(
            f"connection refused by 10.0.0.{n}",
            job_id=job.job_id,
            source_id=source_id,
            payload={"n": n},
            dead_lettered_at=dead_lettered_at or ago(minutes=5),
            **fields,
        )
        created += [job, entry]
        entries.append(entry)
    await rows.add(*created)
    return entries


async def snapshot(runtime, tenant: str) -> dict[str, list[tuple]]:
    """Everything a replay could change in a tenant: entries, jobs, runs, source counters."""
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:

        def rows(stmt):  # type: ignore[no-untyped-def]
            return session.execute(stmt)

        entries = await rows(
            select(
                DeadLetterEntry.entry_id,
                DeadLetterEntry.status,
                DeadLetterEntry.replay_count,
                DeadLetterEntry.last_replay_job_id,
                DeadLetterEntry.updated_at,
            )
            .where(DeadLetterEntry.tenant_id == info.id)
            .order_by(DeadLetterEntry.entry_id)
        )
        jobs = await rows(select(Job.job_id, Job.status).where(Job.tenant_id == info.id).order_by(Job.job_id))
        runs = await rows(
            select(OperationRun.id, OperationRun.status)
            .where(OperationRun.tenant_id == info.id)
            .order_by(OperationRun.id)
        )
        sources = await rows(
            select(Source.source_id, Source.jobs_submitted, Source.last_job_at)
            .where(Source.tenant_id == info.id)
            .order_by(Source.source_id)
        )
        return {
            "entries": [tuple(r) for r in entries],
            "jobs": [tuple(r) for r in jobs],
            "runs": [tuple(r) for r in runs],
            "sources": [tuple(r) for r in sources],
        }


async def replay_jobs(runtime, tenant: str) -> list[Job]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        stmt = select(Job).where(Job.tenant_id == info.id, Job.replay_of_entry_id.is_not(None))
        return list((await session.execute(stmt)).scalars())


async def entry_rows(runtime, tenant: str) -> dict[str, DeadLetterEntry]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        stmt = select(DeadLetterEntry).where(DeadLetterEntry.tenant_id == info.id)
        return {e.entry_id: e for e in (await session.execute(stmt)).scalars()}


async def set_status(runtime, entry: DeadLetterEntry, status: str) -> None:
    async with runtime.sessions.begin() as session:
        row = await session.get(DeadLetterEntry, (entry.tenant_id, entry.entry_id))
        row.status = status


async def audit_rows(runtime, tenant: str) -> list[AuditRecord]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        stmt = select(AuditRecord).where(AuditRecord.tenant_id == info.id).order_by(AuditRecord.id)
        return list((await session.execute(stmt)).scalars())


# -- single replay ---------------------------------------------------------------------------------


async def test_replay_queues_one_job_like_the_original_and_marks_the_entry_replaying(
    client, factory, runtime
):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1, job_type="scan.deep", project_id=None)
    response = await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["entryId"], body["status"], body["replayCount"]) == (entry.entry_id, "replaying", 1)
    assert response.headers["location"] == f"http://gateway.test/jobengine/jobs/{body['jobId']}"
    (job,) = await replay_jobs(runtime, tenant)
    assert job.job_id == body["jobId"] and job.replay_of_entry_id == entry.entry_id
    assert (job.status, job.attempt, job.max_attempts, job.priority) == ("pending", 0, 5, 7)
    assert (job.job_type, job.source_id, job.payload, job.project_id) == (
        "scan.deep",
        entry.source_id,
        entry.payload,
        entry.project_id,
    )
    stored = (await entry_rows(runtime, tenant))[entry.entry_id]
    assert (stored.status, stored.replay_count, stored.last_replay_job_id) == ("replaying", 1, job.job_id)
    assert stored.last_replayed_at is not None
    read = await client.get(f"/jobengine/jobs/{body['jobId']}", headers=factory.headers(tenant))
    assert read.status_code == 200 and read.json()["replayOfEntryId"] == entry.entry_id


async def test_replay_counts_the_job_on_its_source(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
    source = (await snapshot(runtime, tenant))["sources"][0]
    assert source[1] == 1 and source[2] is not None


@pytest.mark.parametrize(
    ("status", "code"),
    [("replaying", "replay_in_progress"), ("replayed", "already_replayed"), ("discarded", "entry_discarded")],
)
async def test_replay_of_an_entry_that_is_not_pending_is_409_and_changes_nothing(
    client, factory, runtime, status, code
):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    await set_status(runtime, entry, status)
    before = await snapshot(runtime, tenant)
    assert_problem(await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant)), 409, code)
    assert await snapshot(runtime, tenant) == before


async def test_second_replay_of_an_entry_is_409_replay_in_progress(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    assert (
        await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
    ).status_code == 202
    second = await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
    assert_problem(second, 409, "replay_in_progress")
    assert len(await replay_jobs(runtime, tenant)) == 1


async def test_replay_of_other_tenants_entry_is_404_and_untouched(client, factory, runtime):
    owner, intruder = await factory.tenant(), await factory.tenant()
    (entry,) = await dead_letters(runtime, owner, 1)
    before = await snapshot(runtime, owner)
    assert_problem(
        await client.post(replay_path(entry.entry_id), headers=factory.headers(intruder)), 404, "not_found"
    )
    assert_problem(
        await client.post(replay_path("no-such-entry"), headers=factory.headers(owner)), 404, "not_found"
    )
    assert await snapshot(runtime, owner) == before


async def test_replay_of_another_projects_entry_is_404(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1, project_id="billing")
    before = await snapshot(runtime, tenant)
    response = await client.post(
        replay_path(entry.entry_id), headers=factory.headers(tenant, project="scanner")
    )
    assert_problem(response, 404, "not_found")
    assert await snapshot(runtime, tenant) == before
    inside = await client.post(
        replay_path(entry.entry_id), headers=factory.headers(tenant, project="billing")
    )
    assert inside.status_code == 202


async def test_replay_needs_the_backfill_scope_and_a_reason(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    before = await snapshot(runtime, tenant)
    response = await client.post(
        replay_path(entry.entry_id), headers=factory.headers(tenant, scope="orch:operate")
    )
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant, reason=None))
    assert_problem(response, 400, "operator_reason_required")
    assert await snapshot(runtime, tenant) == before


async def test_concurrent_replays_in_one_process_create_one_job(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    responses = await asyncio.gather(
        *(client.post(replay_path(entry.entry_id), headers=factory.headers(tenant)) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [202] + [409] * 19
    assert len(await replay_jobs(runtime, tenant)) == 1


@pytest.mark.backends("postgresql")  # two processes share one database server
async def test_fifty_concurrent_replays_across_two_gateway_processes_create_exactly_one_job(
    factory, runtime, two_gateways
):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    headers = factory.headers(tenant)
    clients = [httpx.AsyncClient(base_url=g.url, timeout=30) for g in two_gateways]
    try:
        # Warm both processes first so that the 50 requests really overlap.
        for c in clients:
            assert (await c.get("/jobengine/deadletter/stats", headers=headers)).status_code == 200
        responses = await asyncio.gather(
            *(clients[n % 2].post(replay_path(entry.entry_id), headers=headers) for n in range(50))
        )
    finally:
        for c in clients:
            await c.aclose()
    accepted = [r for r in responses if r.status_code == 202]
    assert len(accepted) == 1, [r.text for r in responses if r.status_code != 409]
    refused = [r for r in responses if r.status_code != 202]
    assert {(r.status_code, r.json()["code"]) for r in refused} == {(409, "replay_in_progress")}
    jobs = await replay_jobs(runtime, tenant)
    assert [j.job_id for j in jobs] == [accepted[0].json()["jobId"]]
    stored = (await entry_rows(runtime, tenant))[entry.entry_id]
    assert (stored.status, stored.replay_count, stored.last_replay_job_id) == ("replaying", 1, jobs[0].job_id)
    assert [(a.result_status, a.action) for a in await audit_rows(runtime, tenant)].count(
        (202, "deadletter.replay")
    ) == 1
    assert len(await audit_rows(runtime, tenant)) == 50


async def test_an_entry_returned_to_pending_can_be_replayed_again(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    first = (await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))).json()
    await set_status(runtime, entry, "pending")  # as the worker does when the replay job fails again
    second = await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
    assert second.status_code == 202
    assert second.json()["replayCount"] == 2 and second.json()["jobId"] != first["jobId"]
    assert len(await replay_jobs(runtime, tenant)) == 2


async def test_idempotency_key_replays_the_first_answer_without_a_second_job(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    headers = {**factory.headers(tenant), "Idempotency-Key": "replay-once-1"}
    first = await client.post(replay_path(entry.entry_id), headers=headers)
    second = await client.post(replay_path(entry.entry_id), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert len(await replay_jobs(runtime, tenant)) == 1


# -- batch --------------------------------------------------------------------------------------------


async def test_batch_replays_each_id_once_and_reports_every_outcome(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    entries = await dead_letters(runtime, tenant, 196)
    foreign = await dead_letters(runtime, other, 2)
    await set_status(runtime, entries[0], "replaying")
    await set_status(runtime, entries[1], "replayed")
    await set_status(runtime, entries[2], "discarded")
    foreign_before = await snapshot(runtime, other)
    ids = [e.entry_id for e in entries]
    # 200 ids: 196 of the tenant, two of them again, and two of another tenant (plus a missing one).
    batch = ids[:100] + [ids[5], ids[6]] + [f.entry_id for f in foreign] + ids[100:] + ["no-such-entry"]
    batch = batch[:200]
    assert len(batch) == 200
    response = await client.post(BATCH, json={"entryIds": batch}, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    distinct = list(dict.fromkeys(batch))
    assert [r["entryId"] for r in body["results"]] == distinct
    outcome = {r["entryId"]: r for r in body["results"]}
    assert outcome[ids[0]] == {"entryId": ids[0], "outcome": "skipped", "reason": "replay_in_progress"}
    assert outcome[ids[1]]["reason"] == "already_replayed" and outcome[ids[2]]["reason"] == "entry_discarded"
    for f in foreign:
        assert outcome[f.entry_id] == {"entryId": f.entry_id, "outcome": "not_found"}
    replayed = {r["entryId"]: r["jobId"] for r in body["results"] if r["outcome"] == "replayed"}
    expected = [i for i in distinct if i in set(ids[3:])]
    assert sorted(replayed) == sorted(expected)
    not_found = len(distinct) - len(expected) - 3
    assert (body["total"], body["replayed"], body["skipped"], body["notFound"]) == (
        len(distinct),
        len(expected),
        3,
        not_found,
    )
    jobs = await replay_jobs(runtime, tenant)
    assert sorted((j.replay_of_entry_id, j.job_id) for j in jobs) == sorted(replayed.items())
    stored = await entry_rows(runtime, tenant)
    assert all(stored[i].status == "replaying" and stored[i].replay_count == 1 for i in replayed)
    assert await snapshot(runtime, other) == foreign_before
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, body["operationRunId"])
    assert (run.type, run.status, run.outcome) == (
        "deadletter.replay_batch",
        "completed",
        "partially_succeeded",
    )
    assert run.summary_counts == {
        "total": len(distinct),
        "replayed": len(expected),
        "skipped": 3,
        "not_found": not_found,
    }
    assert run.tenant_id == (await runtime.tenants.get(tenant)).id and run.user_id == "tester"


async def test_batch_of_only_found_entries_completes_its_run_succeeded(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 3)
    response = await client.post(
        BATCH, json={"entryIds": [e.entry_id for e in entries]}, headers=factory.headers(tenant)
    )
    body = response.json()
    assert body["replayed"] == 3 and body["dryRun"] is False
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, body["operationRunId"])
    assert (run.status, run.outcome, run.failure_summary) == ("completed", "succeeded", [])


async def test_batch_dry_run_reports_what_would_happen_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 4)
    await set_status(runtime, entries[0], "discarded")
    before = await snapshot(runtime, tenant)
    ids = [e.entry_id for e in entries] + ["missing"]
    response = await client.post(
        BATCH, json={"entryIds": ids, "dryRun": True}, headers=factory.headers(tenant)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dryRun"] is True and body["operationRunId"] is None
    assert [(r["outcome"], r.get("reason"), r.get("jobId")) for r in body["results"]] == [
        ("skipped", "entry_discarded", None),
        ("replayed", None, None),
        ("replayed", None, None),
        ("replayed", None, None),
        ("not_found", None, None),
    ]
    assert await snapshot(runtime, tenant) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"entryIds": [f"id-{n}" for n in range(201)]}, "entryIds"),
        ({"entryIds": []}, "entryIds"),
        ({"entryIds": "id-1"}, "entryIds"),
        ({"entryIds": ["id-1"], "dryRun": "maybe"}, "dryRun"),
        ({"entryIds": ["id-1"], "everything": True}, "everything"),
        ({}, "entryIds"),
    ],
)
async def test_invalid_batch_is_400_and_changes_nothing(client, factory, runtime, body, field):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 2)
    if isinstance(body.get("entryIds"), list) and body["entryIds"]:
        body = {**body, "entryIds": [entries[0].entry_id, *body["entryIds"]]}
    before = await snapshot(runtime, tenant)
    problem = assert_problem(
        await client.post(BATCH, json=body, headers=factory.headers(tenant)), 400, "validation_failed"
    )
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert await snapshot(runtime, tenant) == before


async def test_concurrent_overlapping_batches_replay_each_entry_once(client, factory, runtime):
    tenant = await factory.tenant()
    ids = [e.entry_id for e in await dead_letters(runtime, tenant, 60)]
    batches = [ids[0:40], list(reversed(ids[20:60])), ids[10:50], list(reversed(ids))]
    responses = await asyncio.gather(
        *(client.post(BATCH, json={"entryIds": b}, headers=factory.headers(tenant)) for b in batches)
    )
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    replayed = [
        r["entryId"] for resp in responses for r in resp.json()["results"] if r["outcome"] == "replayed"
    ]
    assert sorted(replayed) == sorted(ids)
    jobs = await replay_jobs(runtime, tenant)
    assert sorted(j.replay_of_entry_id for j in jobs) == sorted(ids)


# -- audit --------------------------------------------------------------------------------------------


async def test_every_replay_action_allowed_or_refused_has_one_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 3)
    headers = factory.headers(tenant, subject="ops.erin", reason="upstream fixed", ticket="INC-7")
    calls = [
        ("trace-single-ok-01", replay_path(entries[0].entry_id), None, 202, "deadletter.replay"),
        ("trace-single-409-1", replay_path(entries[0].entry_id), None, 409, "deadletter.replay"),
        ("trace-single-404-1", replay_path("missing"), None, 404, "deadletter.replay"),
        ("trace-batch-ok-001", BATCH, {"entryIds": [entries[1].entry_id]}, 200, "deadletter.replay_batch"),
        (
            "trace-batch-dry-01",
            BATCH,
            {"entryIds": [entries[2].entry_id], "dryRun": True},
            200,
            "deadletter.replay_batch",
        ),
        ("trace-batch-400-01", BATCH, {"entryIds": []}, 400, "deadletter.replay_batch"),
    ]
    for trace, path, body, status, _ in calls:
        response = await client.post(path, json=body, headers={**headers, "X-Stella-Trace-Id": trace})
        assert response.status_code == status, response.text
    rows = await audit_rows(runtime, tenant)
    assert len(rows) == len(calls)
    by_trace = {r.trace_id: r for r in rows}
    for trace, _, _, status, action in calls:
        row = by_trace[trace]
        assert (row.action, row.result_status, row.subject, row.reason, row.ticket) == (
            action,
            status,
            "ops.erin",
            "upstream fixed",
            "INC-7",
        )
    assert by_trace["trace-single-ok-01"].target == entries[0].entry_id
    assert by_trace["trace-single-409-1"].result_code == "replay_in_progress"


# -- sample ---------------------------------------------------------------------------------------------


def test_replay_sample_validates_against_the_generated_contract():
    contract = yaml.safe_load((ROOT / "contracts" / "jobengine-gateway.openapi.yaml").read_text())
    operation = contract["paths"]["/jobengine/deadletter/{entryId}/replay"]["post"]
    schema = operation["responses"]["202"]["content"]["application/json"]["schema"]
    sample = json.loads((ROOT / "samples" / "orchestrator-deadletter-replay.json").read_text())
    jsonschema_rs.validate({**schema, "components": contract["components"]}, sample)
    assert sample["status"] == "replaying" and sample["replayCount"] >= 1 and sample["jobId"]

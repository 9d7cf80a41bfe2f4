"""What operators find and follow, on both backends: the entry of a job (``jobId``), an entry's
replay jobs (``replayJobIds``, wherever an entry is rendered), a pack run's steps and failure
reason, the audit log's ``dryRun`` and its validated ``action`` and ``target`` filters."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from app.storage.models import OperationRun, Tenant
from tests.api.rows import NOW, Rows, at, tenant_rows, walk


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


async def entry_with_replays(rows: Rows, replays: int, **fields: Any) -> tuple[Any, list[Any]]:
    """An entry, its original job and ``replays`` replay jobs (the newest first in insertion order,
    so that the answer's order comes from the jobs' times, not from the rows' order)."""
    original = rows.job(status="failed")
    entry = rows.entry(job_id=original.job_id, **fields)
    jobs = [
        rows.job(replay_of_entry_id=entry.entry_id, created_at=at(10 - n), status="failed")
        for n in range(replays)
    ]
    await rows.add(original, entry, *jobs)
    return entry, sorted(jobs, key=lambda j: j.created_at)


# -- find an entry by job ---------------------------------------------------------------------------


async def test_the_job_id_filter_finds_the_entry_of_its_job_or_of_a_replay_job(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    first, first_replays = await entry_with_replays(rows, 2)
    second, _ = await entry_with_replays(rows, 0)
    headers = factory.headers(tenant)

    async def found(job_id: str) -> list[str]:
        response = await client.get("/jobengine/deadletter", params={"jobId": job_id}, headers=headers)
        assert response.status_code == 200, response.text
        return [item["entryId"] for item in response.json()["items"]]

    assert await found(first.job_id) == [first.entry_id]
    assert await found(first_replays[1].job_id) == [first.entry_id]
    assert await found(second.job_id) == [second.entry_id]
    assert await found("no-such-job") == []
    # Other filters still narrow it.
    response = await client.get(
        "/jobengine/deadletter", params={"jobId": first.job_id, "status": "replayed"}, headers=headers
    )
    assert response.json()["items"] == []


async def test_the_job_id_filter_never_finds_another_tenants_or_projects_entry(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    other, other_rows = await tenant_rows(runtime, factory)
    foreign, foreign_replays = await entry_with_replays(other_rows, 1)
    mine, _ = await entry_with_replays(rows, 0, project_id="billing")
    # A job of this tenant that names the other tenant's entry as the one it replays.
    await rows.add(rows.job(replay_of_entry_id=foreign.entry_id))
    for job_id in (foreign.job_id, foreign_replays[0].job_id):
        response = await client.get("/jobengine/deadletter", params={"jobId": job_id}, headers=factory.headers(tenant))
        assert response.json()["items"] == []
    response = await client.get(
        "/jobengine/deadletter", params={"jobId": mine.job_id}, headers=factory.headers(tenant, project="scanner")
    )
    assert response.json()["items"] == []
    response = await client.get("/jobengine/deadletter", params={"jobId": mine.job_id}, headers=factory.headers(other))
    assert response.json()["items"] == []


async def test_the_job_id_filter_is_bound_into_the_continuation_token(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    job = rows.job(status="failed")
    await rows.add(job, *(rows.entry(dead_lettered_at=NOW - timedelta(minutes=n)) for n in range(3)))
    await rows.add(rows.entry(job_id=job.job_id))
    headers = factory.headers(tenant)
    assert len(await walk(client, "/jobengine/deadletter", headers, limit=2)) == 4
    page = (await client.get("/jobengine/deadletter", params={"limit": 2}, headers=headers)).json()
    response = await client.get(
        "/jobengine/deadletter",
        params={"limit": 2, "jobId": job.job_id, "continuationToken": page["continuationToken"]},
        headers=headers,
    )
    assert_problem(response, 400, "invalid_continuation_token")


@pytest.mark.parametrize("params", [{"jobId": "j" * 65}, [("jobId", "a"), ("jobId", "b")]])
async def test_an_invalid_job_id_filter_is_400(client, factory, params):
    tenant = await factory.tenant()
    response = await client.get("/jobengine/deadletter", params=params, headers=factory.headers(tenant))
    assert_problem(response, 400, "validation_failed")


# -- an entry's replay jobs ----------------------------------------------------------------------------


async def test_every_rendered_entry_lists_its_replay_jobs_oldest_first(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    replayed, jobs = await entry_with_replays(rows, 3, status="discarded", error_code="E_FOLLOW")
    untouched, _ = await entry_with_replays(rows, 0, error_code="E_FOLLOW")
    other, other_rows = await tenant_rows(runtime, factory)
    # Another tenant's job naming this entry is no replay of it.
    await other_rows.add(other_rows.job(replay_of_entry_id=replayed.entry_id))
    expected = {replayed.entry_id: [j.job_id for j in jobs], untouched.entry_id: []}
    headers = factory.headers(tenant)

    listed = (await client.get("/jobengine/deadletter", headers=headers)).json()["items"]
    assert {i["entryId"]: i["replayJobIds"] for i in listed} == expected
    for entry_id, job_ids in expected.items():
        detail = (await client.get(f"/jobengine/deadletter/{entry_id}", headers=headers)).json()
        assert detail["replayJobIds"] == job_ids
    restored = await client.post(f"/jobengine/deadletter/{replayed.entry_id}/restore", headers=headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["replayJobIds"] == expected[replayed.entry_id]
    preview = await client.post(
        "/jobengine/deadletter/replay/pending",
        json={"filter": {"errorCode": "E_FOLLOW"}, "dryRun": True},
        headers=headers,
    )
    assert {i["entryId"]: i["replayJobIds"] for i in preview.json()["sample"]} == expected
    discarded = await client.post(f"/jobengine/deadletter/{replayed.entry_id}/discard", headers=headers)
    assert discarded.json()["replayJobIds"] == expected[replayed.entry_id]


async def test_a_replay_adds_its_job_to_the_entrys_replay_jobs(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    source = rows.source()
    job = rows.job(source_id=source.source_id, status="failed")
    entry = rows.entry(job_id=job.job_id, source_id=source.source_id)
    await rows.add(source, job, entry)
    headers = factory.headers(tenant)
    response = await client.post(f"/jobengine/deadletter/{entry.entry_id}/replay", headers=headers)
    assert response.status_code == 202, response.text
    detail = (await client.get(f"/jobengine/deadletter/{entry.entry_id}", headers=headers)).json()
    assert detail["replayJobIds"] == [response.json()["jobId"]] == [detail["lastReplayJobId"]]


# -- a pack run's steps and failure reason ------------------------------------------------------------------


async def operation_run(runtime: Any, tenant_id: int, **fields: Any) -> int:
    """A completed pack-run operation run of the tenant, with what it recorded when it ended."""
    async with runtime.sessions.begin() as session:
        tenant = await session.get(Tenant, tenant_id)
        run = OperationRun(
            workspace_id=tenant.workspace_id,
            tenant_id=tenant_id,
            type="pack_run.execute",
            status="completed",
            outcome="failed",
            run_identity_hash=uuid.uuid4().hex,
            summary_counts={},
            context={},
            created_at=NOW,
            updated_at=NOW,
            **fields,
        )
        session.add(run)
        await session.flush()
        return run.id


async def test_a_pack_runs_detail_lists_its_steps_in_order_with_sanitised_errors(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    run = rows.pack_run(status="failed", steps_total=3, steps_succeeded=1, steps_failed=1)
    secret = "upload to https://bot:hunter2@registry.example failed, tell ops@example.com, token=abc123"
    steps = [
        rows.job(pack_run_id=run.pack_run_id, step_index=2, job_type="publish", status="canceled"),
        rows.job(pack_run_id=run.pack_run_id, step_index=0, job_type="fetch", status="succeeded", attempt=1),
        rows.job(
            pack_run_id=run.pack_run_id, step_index=1, job_type="upload", status="failed", attempt=3,
            last_error_code="upload.refused", last_error_message=secret,
        ),
    ]
    await rows.add(run, *steps)
    body = (await client.get(f"/jobengine/pack-runs/{run.pack_run_id}", headers=factory.headers(tenant))).json()
    assert [(s["index"], s["jobType"], s["jobId"], s["status"], s["attempts"]) for s in body["steps"]] == [
        (0, "fetch", steps[1].job_id, "succeeded", 1),
        (1, "upload", steps[2].job_id, "failed", 3),
        (2, "publish", steps[0].job_id, "canceled", 0),
    ]
    failed = body["steps"][1]
    assert failed["lastErrorCode"] == "upload.refused"
    for leaked in ("hunter2", "ops@example.com", "abc123"):
        assert leaked not in failed["lastErrorMessage"] and leaked not in (body["failureReason"] or "")
    assert body["steps"][0]["lastErrorCode"] is None and body["steps"][0]["lastErrorMessage"] is None
    # Without an operation run, the reason is read from the first failed step.
    assert body["failureReason"] == "Step 2 of 3 (upload) failed (upload.refused)."
    assert body["stepCounts"] == {"total": 3, "succeeded": 1, "failed": 1}


@pytest.mark.parametrize(
    ("status", "failures", "message", "reason"),
    [
        ("failed", [{"code": "run.failed", "message": "Step 2 of 3 failed (x.y); remaining steps skipped."}], None,
         "Step 2 of 3 failed (x.y); remaining steps skipped."),
        ("blocked", [{"code": "run.blocked", "message": "No handler for job type(s): scan.deep."}], None,
         "No handler for job type(s): scan.deep."),
        ("partially_succeeded", [], "Step 4 of 4 failed (artifact.missing); remaining steps skipped.",
         "Step 4 of 4 failed (artifact.missing); remaining steps skipped."),
        ("succeeded", [], "All 2 steps succeeded.", None),
        ("canceled", [{"code": "run.canceled", "message": "Canceled by an operator before completion."}], None,
         None),
        ("running", [], None, None),
    ],
)
async def test_the_failure_reason_is_what_the_run_recorded_when_it_failed_and_null_otherwise(
    client, factory, runtime, status, failures, message, reason
):
    tenant, rows = await tenant_rows(runtime, factory)
    run_id = await operation_run(runtime, rows.tenant_id, failure_summary=failures, operator_message=message)
    run = rows.pack_run(status=status, operation_run_id=run_id)
    await rows.add(run)
    body = (await client.get(f"/jobengine/pack-runs/{run.pack_run_id}", headers=factory.headers(tenant))).json()
    assert body["failureReason"] == reason
    assert body["steps"] == []


async def test_a_blocked_submission_answers_its_steps_and_why(client, factory, runtime):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    response = await client.post(
        "/jobengine/pack-runs",
        json={"packName": "p", "packVersion": "1.0.0", "sourceId": source["sourceId"],
              "steps": [{"jobType": "demo.noop"}, {"jobType": "no.such.handler"}]},
        headers=factory.headers(tenant, reason=None),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "blocked"
    assert body["failureReason"] == "No handler for job type(s): no.such.handler."
    assert [(s["index"], s["jobType"], s["status"]) for s in body["steps"]] == [
        (0, "demo.noop", "canceled"),
        (1, "no.such.handler", "canceled"),
    ]
    detail = (await client.get(f"/jobengine/pack-runs/{body['packRunId']}", headers=factory.headers(tenant))).json()
    assert detail == body


async def test_another_tenants_pack_run_detail_is_404(client, factory, runtime):
    tenant = await factory.tenant()
    other, rows = await tenant_rows(runtime, factory)
    run = rows.pack_run(status="failed")
    await rows.add(run, rows.job(pack_run_id=run.pack_run_id, step_index=0, status="failed"))
    response = await client.get(f"/jobengine/pack-runs/{run.pack_run_id}", headers=factory.headers(tenant))
    assert_problem(response, 404, "not_found")
    assert "steps" not in response.text


# -- the audit log ------------------------------------------------------------------------------------


async def test_audit_rows_say_whether_they_were_dry_runs(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(rows.audit(action="deadletter.replay_batch", target=None, dry_run=True), rows.audit())
    items = (await client.get("/jobengine/audit", headers=factory.headers(tenant))).json()["items"]
    assert sorted((i["action"], i["dryRun"]) for i in items) == [
        ("deadletter.replay_batch", True),
        ("quota.pause", False),
    ]


async def test_the_audit_action_and_target_filters_combine(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(
        rows.audit(action="quota.pause", target="q-1"),
        rows.audit(action="quota.pause", target="q-2"),
        rows.audit(action="quota.resume", target="q-1"),
        rows.audit(action="deadletter.replay_cancel", target="42"),
    )
    headers = factory.headers(tenant)

    async def listed(**params: str) -> list[tuple[str, str]]:
        response = await client.get("/jobengine/audit", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return sorted((i["action"], i["target"]) for i in response.json()["items"])

    assert await listed(action="quota.pause") == [("quota.pause", "q-1"), ("quota.pause", "q-2")]
    assert await listed(target="q-1") == [("quota.pause", "q-1"), ("quota.resume", "q-1")]
    assert await listed(action="quota.pause", target="q-1") == [("quota.pause", "q-1")]
    assert await listed(action="deadletter.replay_cancel", target="42") == [("deadletter.replay_cancel", "42")]
    assert await listed(action="source.create") == []


@pytest.mark.parametrize(
    "params",
    [
        {"action": "Quota.Pause"},
        {"action": "quota"},
        {"action": "quota pause"},
        {"action": "quota.pause;"},
        {"action": ""},
        {"action": "a." + "b" * 63},
        {"target": ""},
        {"target": "q\x01"},
        {"target": "t" * 257},
        [("action", "quota.pause"), ("action", "quota.resume")],
        [("target", "a"), ("target", "b")],
    ],
)
async def test_an_invalid_audit_filter_is_400(client, factory, params):
    tenant = await factory.tenant()
    response = await client.get("/jobengine/audit", params=params, headers=factory.headers(tenant))
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"], body

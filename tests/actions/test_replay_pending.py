"""Replay pending entries by filter: the run is created before any work, the runner replays
matching entries dead-lettered before the request (each exactly once, paced, bounded), and the
run reports exact counts. The runner is driven in-process (``advance_replays``), as a worker's
background step would drive it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.engine.replays import advance_replays
from app.storage.models import OperationRun
from tests.actions.test_replay import (
    BATCH,
    assert_problem,
    audit_rows,
    dead_letters,
    entry_rows,
    replay_jobs,
    replay_path,
    set_status,
    snapshot,
)
from tests.api.rows import ago

PENDING = "/jobengine/deadletter/replay/pending"
FAST = 100_000  # the maximum rate: pacing never holds the tests back


def request(filter_: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"filter": filter_, "ratePerSecond": FAST, **fields}


async def start(client, factory, tenant: str, body: dict[str, Any], **headers: Any) -> dict[str, Any]:
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant, **headers))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (
        response.headers["location"]
        == f"http://gateway.test/api/admin/operations/{accepted['operationRunId']}"
    )
    return accepted


async def load_run(runtime, run_id: int) -> OperationRun:
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, run_id)
        assert run is not None
        return run


async def until_completed(runtime, *run_ids: int, timeout: float = 30.0) -> list[OperationRun]:
    """Drive the runner in-process until the runs complete (polling with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        await advance_replays(runtime)
        runs = [await load_run(runtime, run_id) for run_id in run_ids]
        if all(r.status == "completed" for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.id, r.status, r.summary_counts) for r in runs]
        await asyncio.sleep(0.02)


async def test_replay_pending_replays_every_matching_entry_once_and_ends_succeeded(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    matching = await dead_letters(runtime, tenant, 30, error_code="E_REGISTRY")
    busy = await dead_letters(runtime, tenant, 3, error_code="E_REGISTRY")
    for entry, status in zip(busy, ("replaying", "replayed", "discarded")):
        await set_status(runtime, entry, status)
    unrelated = await dead_letters(runtime, tenant, 10, error_code="E_OTHER")
    await dead_letters(runtime, other, 5, error_code="E_REGISTRY")
    foreign_before = await snapshot(runtime, other)

    accepted = await start(client, factory, tenant, request({"errorCode": "E_REGISTRY"}))
    assert accepted["deduplicated"] is False and accepted["status"] == "queued"
    run = await load_run(runtime, accepted["operationRunId"])
    assert (run.type, run.tenant_id, run.outcome) == (
        "deadletter.replay_pending",
        matching[0].tenant_id,
        "pending",
    )
    assert run.summary_counts == {"matched": 30, "replayed": 0, "skipped": 0, "failed": 0}
    assert run.context["filter"] == {"errorCode": "E_REGISTRY"} and "cutoff" in run.context

    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert (run.status, run.outcome) == ("completed", "succeeded")
    assert run.summary_counts == {"matched": 30, "replayed": 30, "skipped": 0, "failed": 0}
    assert run.started_at is not None and run.heartbeat_at is not None and run.completed_at is not None

    stored = await entry_rows(runtime, tenant)
    jobs = await replay_jobs(runtime, tenant)
    assert sorted(j.replay_of_entry_id for j in jobs) == sorted(e.entry_id for e in matching)
    for entry in matching:
        row = stored[entry.entry_id]
        assert (row.status, row.replay_count) == ("replaying", 1)
        assert row.last_replay_job_id in {j.job_id for j in jobs}
    assert [stored[e.entry_id].status for e in busy] == ["replaying", "replayed", "discarded"]
    assert all(
        stored[e.entry_id].status == "pending" and stored[e.entry_id].replay_count == 0 for e in unrelated
    )
    assert await snapshot(runtime, other) == foreign_before


async def test_entries_dead_lettered_after_the_request_are_not_taken(client, factory, runtime):
    tenant = await factory.tenant()
    before = await dead_letters(runtime, tenant, 5, category="throttled")
    accepted = await start(client, factory, tenant, request({"category": "throttled"}))
    later = await dead_letters(
        runtime,
        tenant,
        4,
        category="throttled",
        dead_lettered_at=datetime.now(UTC) + timedelta(milliseconds=1),
    )
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert run.summary_counts == {"matched": 5, "replayed": 5, "skipped": 0, "failed": 0}
    stored = await entry_rows(runtime, tenant)
    assert all(stored[e.entry_id].status == "replaying" for e in before)
    assert all(stored[e.entry_id].status == "pending" for e in later)


async def test_same_filter_while_its_run_is_active_returns_that_run(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 3, job_type="scan.same")
    first = await start(client, factory, tenant, request({"jobType": "scan.same"}))
    # The same filter, spelled differently (another rate, other key order), is the same run.
    second = await start(client, factory, tenant, {"ratePerSecond": 5, "filter": {"jobType": "scan.same"}})
    assert second == {"operationRunId": first["operationRunId"], "status": "queued", "deduplicated": True}
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        runs = (await session.execute(select(OperationRun.id).where(OperationRun.tenant_id == info.id))).all()
    assert len(runs) == 1
    await until_completed(runtime, first["operationRunId"])
    third = await start(client, factory, tenant, request({"jobType": "scan.same"}))
    assert third["deduplicated"] is False and third["operationRunId"] != first["operationRunId"]


async def test_concurrent_starts_of_one_filter_make_one_run(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 2, error_code="E_RACE")
    responses = await asyncio.gather(
        *(
            client.post(PENDING, json=request({"errorCode": "E_RACE"}), headers=factory.headers(tenant))
            for _ in range(6)
        )
    )
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    assert len({r.json()["operationRunId"] for r in responses}) == 1
    assert sorted(r.json()["deduplicated"] for r in responses) == [False] + [True] * 5


async def test_two_filters_run_side_by_side(client, factory, runtime):
    tenant = await factory.tenant()
    a = await dead_letters(runtime, tenant, 4, error_code="E_A")
    b = await dead_letters(runtime, tenant, 6, error_code="E_B")
    run_a = await start(client, factory, tenant, request({"errorCode": "E_A"}))
    run_b = await start(client, factory, tenant, request({"errorCode": "E_B"}))
    assert run_a["operationRunId"] != run_b["operationRunId"]
    assert not run_a["deduplicated"] and not run_b["deduplicated"]
    done_a, done_b = await until_completed(runtime, run_a["operationRunId"], run_b["operationRunId"])
    assert done_a.summary_counts["replayed"] == 4 and done_b.summary_counts["replayed"] == 6
    assert len(await replay_jobs(runtime, tenant)) == len(a) + len(b)


async def test_a_time_range_filter_takes_only_entries_inside_it(client, factory, runtime):
    tenant = await factory.tenant()
    old = await dead_letters(runtime, tenant, 2, dead_lettered_at=ago(hours=5))
    inside = await dead_letters(runtime, tenant, 3, dead_lettered_at=ago(hours=2))
    body = request(
        {"deadLetteredFrom": (ago(hours=3)).isoformat(), "deadLetteredTo": ago(hours=1).isoformat()}
    )
    accepted = await start(client, factory, tenant, body)
    await until_completed(runtime, accepted["operationRunId"])
    stored = await entry_rows(runtime, tenant)
    assert [stored[e.entry_id].status for e in inside] == ["replaying"] * 3
    assert [stored[e.entry_id].status for e in old] == ["pending"] * 2


async def test_max_entries_bounds_the_run(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 10, source_id=None, error_code="E_MANY")
    accepted = await start(client, factory, tenant, request({"errorCode": "E_MANY"}, maxEntries=4))
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert (run.outcome, run.summary_counts) == (
        "succeeded",
        {"matched": 4, "replayed": 4, "skipped": 0, "failed": 0},
    )
    stored = await entry_rows(runtime, tenant)
    oldest_first = sorted(entries, key=lambda e: (e.dead_lettered_at, e.entry_id))
    assert [stored[e.entry_id].status for e in oldest_first] == ["replaying"] * 4 + ["pending"] * 6


async def test_entries_replayed_by_someone_else_meanwhile_count_as_skipped(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 6, error_code="E_SKIP")
    accepted = await start(client, factory, tenant, request({"errorCode": "E_SKIP"}))
    for entry in entries[:2]:
        assert (
            await client.post(replay_path(entry.entry_id), headers=factory.headers(tenant))
        ).status_code == 202
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert (run.outcome, run.summary_counts) == (
        "succeeded",
        {"matched": 6, "replayed": 4, "skipped": 2, "failed": 0},
    )
    assert len(await replay_jobs(runtime, tenant)) == 6


async def test_rate_per_second_paces_the_run(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 25, error_code="E_PACE")
    accepted = await start(client, factory, tenant, {"filter": {"errorCode": "E_PACE"}, "ratePerSecond": 10})
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert run.summary_counts["replayed"] == 25
    times = sorted(e.last_replayed_at for e in (await entry_rows(runtime, tenant)).values())
    # 10 at once, then 10 per second: the last 15 need at least 1.5 s.
    assert (times[-1] - times[0]).total_seconds() >= 1.4
    # Never more than the rate (plus the first burst) in any one second.
    for first in times:
        assert sum(first <= t < first + timedelta(seconds=1) for t in times) <= 20


async def test_runner_with_nothing_due_returns_at_once(runtime):
    started = time.monotonic()
    await advance_replays(runtime, budget_seconds=5)
    await advance_replays(runtime, budget_seconds=5)
    assert time.monotonic() - started < 5


async def test_a_project_caller_replays_only_its_projects_entries(client, factory, runtime):
    tenant = await factory.tenant()
    billing = await dead_letters(runtime, tenant, 3, project_id="billing", error_code="E_PROJ")
    scanner = await dead_letters(runtime, tenant, 2, project_id="scanner", error_code="E_PROJ")
    accepted = await start(client, factory, tenant, request({"errorCode": "E_PROJ"}), project="billing")
    run = await load_run(runtime, accepted["operationRunId"])
    assert run.project_id == "billing" and run.summary_counts["matched"] == 3
    await until_completed(runtime, accepted["operationRunId"])
    stored = await entry_rows(runtime, tenant)
    assert [stored[e.entry_id].status for e in billing] == ["replaying"] * 3
    assert [stored[e.entry_id].status for e in scanner] == ["pending"] * 2
    # The same filter of another project is another run.
    other = await start(client, factory, tenant, request({"errorCode": "E_PROJ"}), project="scanner")
    assert other["operationRunId"] != accepted["operationRunId"] and not other["deduplicated"]


# On the embedded default the gateway's own worker advances replay runs too, a third runner whose
# share this accounting of who replayed what does not follow.
@pytest.mark.backends("postgresql")
async def test_batch_and_pending_at_once_over_overlapping_entries_replay_each_entry_once(
    client, factory, runtime
):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 150, error_code="E_BOTH")
    ids = [e.entry_id for e in entries]
    accepted = await start(client, factory, tenant, request({"errorCode": "E_BOTH"}))

    async def batches() -> list[Any]:
        return await asyncio.gather(
            client.post(
                BATCH, json={"entryIds": list(reversed(ids[50:150]))}, headers=factory.headers(tenant)
            ),
            client.post(BATCH, json={"entryIds": ids[0:100]}, headers=factory.headers(tenant)),
        )

    # Two runners (as two workers would) and two overlapping batches, all at the same time.
    responses, _, _ = await asyncio.gather(batches(), advance_replays(runtime), advance_replays(runtime))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    by_batches = [
        r["entryId"] for resp in responses for r in resp.json()["results"] if r["outcome"] == "replayed"
    ]
    counts = run.summary_counts
    assert counts["matched"] == 150 and counts["failed"] == 0
    assert counts["replayed"] + len(by_batches) == 150
    assert counts["skipped"] == len(by_batches)
    jobs = await replay_jobs(runtime, tenant)
    assert sorted(j.replay_of_entry_id for j in jobs) == sorted(ids)
    stored = await entry_rows(runtime, tenant)
    assert {(stored[i].status, stored[i].replay_count) for i in ids} == {("replaying", 1)}


async def test_dry_run_reports_the_match_and_a_sample_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 14, error_code="E_DRY")
    await set_status(runtime, entries[0], "discarded")
    before = await snapshot(runtime, tenant)
    response = await client.post(
        PENDING,
        json=request({"errorCode": "E_DRY"}, dryRun=True, maxEntries=5),
        headers=factory.headers(tenant),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["dryRun"], body["matched"], body["wouldReplay"]) == (True, 13, 5)
    pending = sorted((e for e in entries[1:]), key=lambda e: (e.dead_lettered_at, e.entry_id))
    assert [s["entryId"] for s in body["sample"]] == [e.entry_id for e in pending[:10]]
    assert all(s["status"] == "pending" and s["errorCode"] == "E_DRY" for s in body["sample"])
    assert await snapshot(runtime, tenant) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filter": {}}, "filter"),
        ({"filter": {"errorCode": None, "jobType": None}}, "filter"),
        ({}, "filter"),
        ({"filter": {"errorCode": "E"}, "ratePerSecond": -1}, "ratePerSecond"),
        ({"filter": {"errorCode": "E"}, "ratePerSecond": 0}, "ratePerSecond"),
        ({"filter": {"errorCode": "E"}, "ratePerSecond": 100_001}, "ratePerSecond"),
        ({"filter": {"errorCode": "E"}, "maxEntries": 0}, "maxEntries"),
        ({"filter": {"errorCode": "E"}, "maxEntries": 100_001}, "maxEntries"),
        ({"filter": {"errorCode": "E"}, "maxEntries": "many"}, "maxEntries"),
        ({"filter": {"errorCode": "E", "status": "pending"}}, "filter.status"),
        ({"filter": {"errorCode": "E"}, "everything": True}, "everything"),
        ({"filter": {"errorCode": 5}}, "filter.errorCode"),
        ({"filter": {"deadLetteredFrom": "yesterday"}}, "filter.deadLetteredFrom"),
        ({"filter": "errorCode=E"}, "filter"),
    ],
)
async def test_invalid_replay_pending_is_400_and_changes_nothing(client, factory, runtime, body, field):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 2, error_code="E")
    before = await snapshot(runtime, tenant)
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant))
    problem = assert_problem(response, 400, "validation_failed")
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert await snapshot(runtime, tenant) == before


async def test_another_tenants_entries_are_never_matched(client, factory, runtime):
    owner, intruder = await factory.tenant(), await factory.tenant()
    await dead_letters(runtime, owner, 3, error_code="E_MINE")
    owner_before = await snapshot(runtime, owner)
    dry = await client.post(
        PENDING, json=request({"errorCode": "E_MINE"}, dryRun=True), headers=factory.headers(intruder)
    )
    assert dry.json()["matched"] == 0 and dry.json()["sample"] == []
    accepted = await start(client, factory, intruder, request({"errorCode": "E_MINE"}))
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert run.summary_counts == {"matched": 0, "replayed": 0, "skipped": 0, "failed": 0}
    assert run.outcome == "succeeded"
    assert await snapshot(runtime, owner) == owner_before


async def test_replay_pending_actions_are_audited_once_each(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 2, error_code="E_AUDIT")
    headers = factory.headers(tenant, subject="ops.finn", reason="registry back", ticket="CHG-9")
    calls = [
        ("trace-pending-ok-1", request({"errorCode": "E_AUDIT"}), 202),
        ("trace-pending-dup-1", request({"errorCode": "E_AUDIT"}), 202),
        ("trace-pending-dry-1", request({"errorCode": "E_AUDIT"}, dryRun=True), 200),
        ("trace-pending-bad-1", {"filter": {}}, 400),
    ]
    ids = []
    for trace, body, status in calls:
        response = await client.post(PENDING, json=body, headers={**headers, "X-Stella-Trace-Id": trace})
        assert response.status_code == status, response.text
        ids.append(response.json().get("operationRunId"))
    no_scope = await client.post(
        PENDING,
        json=request({"errorCode": "E_AUDIT"}),
        headers={
            **factory.headers(
                tenant, scope="orch:read", subject="ops.finn", reason="registry back", ticket="CHG-9"
            ),
            "X-Stella-Trace-Id": "trace-pending-403-1",
        },
    )
    assert_problem(no_scope, 403, "insufficient_scope")
    rows = await audit_rows(runtime, tenant)
    by_trace = {r.trace_id: r for r in rows}
    assert len(rows) == len(by_trace) == len(calls) + 1
    for trace, _, status in [*calls, ("trace-pending-403-1", None, 403)]:
        row = by_trace[trace]
        assert (row.action, row.result_status, row.subject, row.reason, row.ticket) == (
            "deadletter.replay_pending",
            status,
            "ops.finn",
            "registry back",
            "CHG-9",
        )
    assert by_trace["trace-pending-ok-1"].target == str(ids[0]) == by_trace["trace-pending-dup-1"].target


async def test_a_reversed_time_range_matches_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 2, dead_lettered_at=ago(hours=2))
    before = await snapshot(runtime, tenant)
    body = request(
        {"deadLetteredFrom": ago(hours=1).isoformat(), "deadLetteredTo": ago(hours=3).isoformat()},
        dryRun=True,
    )
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    assert (response.json()["matched"], response.json()["sample"]) == (0, [])
    assert await snapshot(runtime, tenant) == before


async def test_a_run_whose_chunks_keep_failing_ends_failed_and_leaves_entries_pending(
    client, factory, runtime, monkeypatch
):
    from app.domain.deadletter import replay as replay_service
    from app.engine import replays as runner

    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 5, error_code="E_BROKEN")
    accepted = await start(client, factory, tenant, request({"errorCode": "E_BROKEN"}))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the chunk cannot be written")

    monkeypatch.setattr(replay_service, "replay_entries", broken)
    monkeypatch.setattr(runner, "ERROR_RETRY", timedelta(0))
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.summary_counts == {"matched": 5, "replayed": 0, "skipped": 0, "failed": 5}
    assert [f["code"] for f in run.failure_summary] == ["replay.chunk_failed"]
    assert run.context["errors"] == runner.MAX_ERRORS
    stored = await entry_rows(runtime, tenant)
    assert {stored[e.entry_id].status for e in entries} == {"pending"}
    assert await replay_jobs(runtime, tenant) == []

"""Discarding dead-letter entries (one, a batch, by filter) and restoring them: one guarded
statement per change, refusals say why, dry runs change nothing, every request is audited, and the
maintained aggregates stay equal to a GROUP BY over the entries after every write path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import case, func, select

from app.storage.models import DeadLetterCluster, DeadLetterCount, DeadLetterEntry, OperationRun
from tests.actions.test_replay import assert_problem, audit_rows, dead_letters, entry_rows, set_status, snapshot
from tests.api.rows import ago

BATCH = "/jobengine/deadletter/discard/batch"
PENDING = "/jobengine/deadletter/discard/pending"


def discard_path(entry_id: str) -> str:
    return f"/jobengine/deadletter/{entry_id}/discard"


def restore_path(entry_id: str) -> str:
    return f"/jobengine/deadletter/{entry_id}/restore"


async def assert_aggregates_exact(runtime: Any, tenant: str) -> None:
    """The maintained counts and clusters, summed over stripes, equal a GROUP BY over the entries."""
    tenant_id = (await runtime.tenants.get(tenant)).id
    project = func.coalesce(DeadLetterEntry.project_id, "")
    pending = func.sum(case((DeadLetterEntry.status == "pending", 1), else_=0))
    async with runtime.sessions() as session:
        want_counts = {
            tuple(r[:3]): int(r[3])
            for r in await session.execute(
                select(project, DeadLetterEntry.category, DeadLetterEntry.status, func.count())
                .where(DeadLetterEntry.tenant_id == tenant_id)
                .group_by(project, DeadLetterEntry.category, DeadLetterEntry.status)
            )
        }
        got_counts = {
            tuple(r[:3]): int(r[3])
            for r in await session.execute(
                select(
                    DeadLetterCount.project_key,
                    DeadLetterCount.category,
                    DeadLetterCount.status,
                    func.sum(DeadLetterCount.entries),
                )
                .where(DeadLetterCount.tenant_id == tenant_id)
                .group_by(DeadLetterCount.project_key, DeadLetterCount.category, DeadLetterCount.status)
                .having(func.sum(DeadLetterCount.entries) != 0)
            )
        }
        want_clusters = {
            tuple(r[:3]): (int(r[3]), int(r[4]))
            for r in await session.execute(
                select(
                    project, DeadLetterEntry.error_code, DeadLetterEntry.template_hash, func.count(), pending
                )
                .where(DeadLetterEntry.tenant_id == tenant_id)
                .group_by(project, DeadLetterEntry.error_code, DeadLetterEntry.template_hash)
            )
        }
        got_clusters = {
            tuple(r[:3]): (int(r[3]), int(r[4]))
            for r in await session.execute(
                select(
                    DeadLetterCluster.project_key,
                    DeadLetterCluster.error_code,
                    DeadLetterCluster.template_hash,
                    func.sum(DeadLetterCluster.entries),
                    func.sum(DeadLetterCluster.pending),
                )
                .where(DeadLetterCluster.tenant_id == tenant_id)
                .group_by(DeadLetterCluster.project_key, DeadLetterCluster.error_code, DeadLetterCluster.template_hash)
            )
        }
    assert got_counts == want_counts
    assert {k: v for k, v in got_clusters.items() if v != (0, 0)} == want_clusters


async def assert_stats_by_status(client: Any, factory: Any, runtime: Any, tenant: str) -> None:
    statuses = [e.status for e in (await entry_rows(runtime, tenant)).values()]
    body = (await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant))).json()
    assert body["byStatus"] == {s: statuses.count(s) for s in ("pending", "replaying", "replayed", "discarded")}


async def runs_of(runtime: Any, tenant: str) -> list[OperationRun]:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        stmt = select(OperationRun).where(OperationRun.tenant_id == info.id).order_by(OperationRun.id)
        return list((await session.execute(stmt)).scalars())


# -- one entry ---------------------------------------------------------------------------------------


async def test_discard_marks_a_pending_entry_discarded_and_answers_it(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 3, project_id="billing")
    response = await client.post(discard_path(entries[0].entry_id), headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["entryId"], body["status"], body["projectId"]) == (entries[0].entry_id, "discarded", "billing")
    stored = await entry_rows(runtime, tenant)
    assert [stored[e.entry_id].status for e in entries] == ["discarded", "pending", "pending"]
    read = await client.get(f"/jobengine/deadletter/{entries[0].entry_id}", headers=factory.headers(tenant))
    assert read.json()["status"] == "discarded"
    await assert_aggregates_exact(runtime, tenant)
    await assert_stats_by_status(client, factory, runtime, tenant)


@pytest.mark.parametrize(
    ("status", "code"),
    [("replaying", "replay_in_progress"), ("replayed", "entry_not_pending"), ("discarded", "entry_not_pending")],
)
async def test_discard_of_an_entry_that_is_not_pending_is_409_and_changes_nothing(
    client, factory, runtime, status, code
):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    await set_status(runtime, entry, status)
    before = await snapshot(runtime, tenant)
    assert_problem(await client.post(discard_path(entry.entry_id), headers=factory.headers(tenant)), 409, code)
    assert await snapshot(runtime, tenant) == before


async def test_discard_and_restore_of_other_tenants_or_projects_entry_is_404_and_untouched(
    client, factory, runtime
):
    owner, intruder = await factory.tenant(), await factory.tenant()
    (entry,) = await dead_letters(runtime, owner, 1, project_id="billing")
    before = await snapshot(runtime, owner)
    for path in (discard_path(entry.entry_id), restore_path(entry.entry_id)):
        assert_problem(await client.post(path, headers=factory.headers(intruder)), 404, "not_found")
        assert_problem(
            await client.post(path, headers=factory.headers(owner, project="scanner")), 404, "not_found"
        )
    for path in (discard_path("no-such-entry"), restore_path("no-such-entry")):
        assert_problem(await client.post(path, headers=factory.headers(owner)), 404, "not_found")
    assert await snapshot(runtime, owner) == before


async def test_discard_and_restore_need_the_backfill_scope_and_a_reason(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    before = await snapshot(runtime, tenant)
    for path, body in (
        (discard_path(entry.entry_id), None),
        (restore_path(entry.entry_id), None),
        (BATCH, {"entryIds": [entry.entry_id]}),
        (PENDING, {"filter": {"jobType": "scan"}}),
    ):
        response = await client.post(path, json=body, headers=factory.headers(tenant, scope="orch:operate"))
        assert_problem(response, 403, "insufficient_scope")
        response = await client.post(path, json=body, headers=factory.headers(tenant, reason=None))
        assert_problem(response, 400, "operator_reason_required")
    assert await snapshot(runtime, tenant) == before


async def test_twenty_concurrent_discards_of_one_entry_succeed_once(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    responses = await asyncio.gather(
        *(client.post(discard_path(entry.entry_id), headers=factory.headers(tenant)) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [200] + [409] * 19, [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"entry_not_pending"}
    assert (await entry_rows(runtime, tenant))[entry.entry_id].status == "discarded"
    audited = [(a.action, a.result_status) for a in await audit_rows(runtime, tenant)]
    assert audited.count(("deadletter.discard", 200)) == 1 and len(audited) == 20
    await assert_aggregates_exact(runtime, tenant)


async def test_idempotency_key_answers_the_first_discard_again(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    headers = {**factory.headers(tenant), "Idempotency-Key": "discard-once-1"}
    first = await client.post(discard_path(entry.entry_id), headers=headers)
    second = await client.post(discard_path(entry.entry_id), headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    # Without the key the same request is refused: the entry is discarded already.
    third = await client.post(discard_path(entry.entry_id), headers=factory.headers(tenant))
    assert_problem(third, 409, "entry_not_pending")


async def test_a_discarded_entry_can_be_restored_and_replayed(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    assert (await client.post(discard_path(entry.entry_id), headers=factory.headers(tenant))).status_code == 200
    await assert_aggregates_exact(runtime, tenant)
    restored = await client.post(restore_path(entry.entry_id), headers=factory.headers(tenant))
    assert restored.status_code == 200, restored.text
    assert (restored.json()["entryId"], restored.json()["status"]) == (entry.entry_id, "pending")
    assert (await entry_rows(runtime, tenant))[entry.entry_id].status == "pending"
    await assert_aggregates_exact(runtime, tenant)
    await assert_stats_by_status(client, factory, runtime, tenant)
    replay = await client.post(f"/jobengine/deadletter/{entry.entry_id}/replay", headers=factory.headers(tenant))
    assert replay.status_code == 202


@pytest.mark.parametrize("status", ["pending", "replaying", "replayed"])
async def test_restore_of_an_entry_that_is_not_discarded_is_409(client, factory, runtime, status):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    await set_status(runtime, entry, status)
    before = await snapshot(runtime, tenant)
    response = await client.post(restore_path(entry.entry_id), headers=factory.headers(tenant))
    assert_problem(response, 409, "entry_not_discarded")
    assert await snapshot(runtime, tenant) == before


async def test_discard_and_restore_write_one_audit_row_each(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    headers = factory.headers(tenant, subject="ops.erin", reason="noise from a retired scanner", ticket="INC-9")
    calls = [
        ("trace-discard-ok-1", discard_path(entry.entry_id), 200, "deadletter.discard"),
        ("trace-discard-409-", discard_path(entry.entry_id), 409, "deadletter.discard"),
        ("trace-restore-ok-1", restore_path(entry.entry_id), 200, "deadletter.restore"),
        ("trace-restore-409-", restore_path(entry.entry_id), 409, "deadletter.restore"),
    ]
    for trace, path, status, _ in calls:
        response = await client.post(path, headers={**headers, "X-Stella-Trace-Id": trace})
        assert response.status_code == status, response.text
    rows = {r.trace_id: r for r in await audit_rows(runtime, tenant)}
    assert len(rows) == len(calls)
    for trace, _, status, action in calls:
        row = rows[trace]
        assert (row.action, row.result_status, row.subject, row.reason, row.ticket, row.target) == (
            action,
            status,
            "ops.erin",
            "noise from a retired scanner",
            "INC-9",
            entry.entry_id,
        )
    assert rows["trace-discard-409-"].result_code == "entry_not_pending"
    assert rows["trace-restore-409-"].result_code == "entry_not_discarded"


# -- batch ----------------------------------------------------------------------------------------


async def test_batch_discards_each_pending_id_once_and_reports_every_outcome(client, factory, runtime):
    tenant, other = await factory.tenant(), await factory.tenant()
    entries = await dead_letters(runtime, tenant, 6)
    (foreign,) = await dead_letters(runtime, other, 1)
    ids = [e.entry_id for e in entries]
    await set_status(runtime, entries[0], "replaying")
    await set_status(runtime, entries[1], "replayed")
    await set_status(runtime, entries[2], "discarded")
    body = {"entryIds": [*ids, ids[3], foreign.entry_id, "missing"]}
    response = await client.post(BATCH, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["dryRun"], result["total"], result["discarded"], result["skipped"], result["notFound"]) == (
        False,
        8,
        3,
        3,
        2,
    )
    assert result["results"] == [
        {"entryId": ids[0], "outcome": "skipped", "reason": "replay_in_progress"},
        {"entryId": ids[1], "outcome": "skipped", "reason": "entry_not_pending"},
        {"entryId": ids[2], "outcome": "skipped", "reason": "entry_not_pending"},
        *({"entryId": i, "outcome": "discarded"} for i in ids[3:]),
        {"entryId": foreign.entry_id, "outcome": "not_found"},
        {"entryId": "missing", "outcome": "not_found"},
    ]
    stored = await entry_rows(runtime, tenant)
    assert [stored[i].status for i in ids] == ["replaying", "replayed", "discarded", *["discarded"] * 3]
    assert (await entry_rows(runtime, other))[foreign.entry_id].status == "pending"
    (row,) = await audit_rows(runtime, tenant)
    assert (row.action, row.result_status) == ("deadletter.discard_batch", 200)
    await assert_aggregates_exact(runtime, tenant)
    await assert_stats_by_status(client, factory, runtime, tenant)


async def test_batch_dry_run_reports_what_would_happen_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 2)
    await set_status(runtime, entries[1], "replaying")
    before = await snapshot(runtime, tenant)
    body = {"entryIds": [entries[0].entry_id, entries[1].entry_id, "missing"], "dryRun": True}
    response = await client.post(BATCH, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["dryRun"] is True and (result["discarded"], result["skipped"], result["notFound"]) == (1, 1, 1)
    assert [r["outcome"] for r in result["results"]] == ["discarded", "skipped", "not_found"]
    assert await snapshot(runtime, tenant) == before


@pytest.mark.parametrize(
    "body",
    [{"entryIds": []}, {"entryIds": [f"e{n}" for n in range(201)]}, {"entryIds": ["a"], "extra": 1}, {}],
)
async def test_invalid_batch_is_400_and_changes_nothing(client, factory, runtime, body):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 1)
    before = await snapshot(runtime, tenant)
    assert_problem(await client.post(BATCH, json=body, headers=factory.headers(tenant)), 400, "validation_failed")
    assert await snapshot(runtime, tenant) == before


async def test_concurrent_overlapping_batches_discard_each_entry_once(client, factory, runtime):
    tenant = await factory.tenant()
    ids = [e.entry_id for e in await dead_letters(runtime, tenant, 40)]
    batches = [ids[0:30], list(reversed(ids[10:40])), ids[5:35], list(reversed(ids))]
    responses = await asyncio.gather(
        *(client.post(BATCH, json={"entryIds": b}, headers=factory.headers(tenant)) for b in batches)
    )
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    discarded = [
        r["entryId"] for resp in responses for r in resp.json()["results"] if r["outcome"] == "discarded"
    ]
    assert sorted(discarded) == sorted(ids)
    await assert_aggregates_exact(runtime, tenant)


# -- by filter --------------------------------------------------------------------------------------


async def test_discard_by_filter_dry_run_counts_and_samples_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    entries = await dead_letters(runtime, tenant, 12, job_type="scan.deep")
    await dead_letters(runtime, tenant, 2, job_type="other")
    before = await snapshot(runtime, tenant)
    body = {"filter": {"jobType": "scan.deep"}, "maxEntries": 5, "dryRun": True}
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["dryRun"], result["matched"], result["wouldDiscard"]) == (True, 12, 5)
    assert len(result["sample"]) == 10 and set(result["sample"]) <= {e.entry_id for e in entries}
    assert await snapshot(runtime, tenant) == before
    (row,) = await audit_rows(runtime, tenant)
    assert (row.action, row.result_status) == ("deadletter.discard_pending", 200)


async def test_discard_by_filter_discards_up_to_max_entries_oldest_first_with_a_completed_run(
    client, factory, runtime
):
    tenant, other = await factory.tenant(), await factory.tenant()
    old = await dead_letters(runtime, tenant, 3, job_type="scan.deep", dead_lettered_at=ago(hours=2))
    new = await dead_letters(runtime, tenant, 3, job_type="scan.deep", dead_lettered_at=ago(minutes=1))
    unrelated = await dead_letters(runtime, tenant, 2, job_type="other")
    foreign = await dead_letters(runtime, other, 2, job_type="scan.deep")
    await set_status(runtime, new[2], "replaying")
    body = {"filter": {"jobType": "scan.deep"}, "maxEntries": 4}
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["dryRun"], result["matched"], result["discarded"]) == (False, 5, 4)
    assert (result["status"], result["outcome"]) == ("completed", "succeeded")
    stored = await entry_rows(runtime, tenant)
    assert [stored[e.entry_id].status for e in old] == ["discarded"] * 3
    assert sorted(stored[e.entry_id].status for e in new) == ["discarded", "pending", "replaying"]
    assert {stored[e.entry_id].status for e in unrelated} == {"pending"}
    assert {e.status for e in (await entry_rows(runtime, other)).values()} == {"pending"}
    assert len(foreign) == 2
    (run,) = await runs_of(runtime, tenant)
    assert (run.id, run.type, run.status, run.outcome) == (
        result["operationRunId"],
        "deadletter.discard_pending",
        "completed",
        "succeeded",
    )
    assert run.summary_counts == {"matched": 5, "discarded": 4}
    (row,) = await audit_rows(runtime, tenant)
    assert (row.action, row.result_status, row.target) == ("deadletter.discard_pending", 200, str(run.id))
    await assert_aggregates_exact(runtime, tenant)
    await assert_stats_by_status(client, factory, runtime, tenant)


async def test_discard_by_filter_stays_in_the_callers_project(client, factory, runtime):
    tenant = await factory.tenant()
    billing = await dead_letters(runtime, tenant, 2, project_id="billing")
    scanner = await dead_letters(runtime, tenant, 2, project_id="scanner")
    body = {"filter": {"jobType": "scan"}}
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant, project="billing"))
    assert response.status_code == 200 and response.json()["discarded"] == 2
    stored = await entry_rows(runtime, tenant)
    assert {stored[e.entry_id].status for e in billing} == {"discarded"}
    assert {stored[e.entry_id].status for e in scanner} == {"pending"}
    await assert_aggregates_exact(runtime, tenant)


@pytest.mark.parametrize(
    "body",
    [
        {"filter": {}},
        {"filter": {"jobType": None}},
        {"filter": {"jobType": "scan"}, "maxEntries": 0},
        {"filter": {"jobType": "scan"}, "maxEntries": 10_001},
        {"filter": {"jobType": "scan"}, "ratePerSecond": 5},
        {},
    ],
)
async def test_invalid_discard_by_filter_is_400_and_changes_nothing(client, factory, runtime, body):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 1)
    before = await snapshot(runtime, tenant)
    assert_problem(await client.post(PENDING, json=body, headers=factory.headers(tenant)), 400, "validation_failed")
    assert await snapshot(runtime, tenant) == before


async def test_idempotency_key_answers_the_first_discard_by_filter_again(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 3)
    headers = {**factory.headers(tenant), "Idempotency-Key": "discard-filter-1"}
    body = {"filter": {"jobType": "scan"}}
    first = await client.post(PENDING, json=body, headers=headers)
    second = await client.post(PENDING, json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["discarded"] == 3
    assert len(await runs_of(runtime, tenant)) == 1

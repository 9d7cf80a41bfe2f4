"""Operators stop and pace a running replay by filter.

Cancel: no chunk starts once the cancel has committed, a chunk in progress is counted, entries
already replayed stay replayed, and the run ends as a canceled run does (completed / failed,
``run.canceled``) with ``matched = replayed + skipped + failed + canceled``. Rate: the new
``ratePerSecond`` paces the run from its next chunk on. Both are audited, honour Idempotency-Key,
refuse a finished run with 409 ``run_not_active`` and answer 404 for anything that is not an
active or finished replay-by-filter run of the caller. The runner is driven in-process, as a
worker's background step drives it (``tests/engine/test_replay_control.py`` does it with real
worker processes).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.domain.deadletter import replay_runs
from app.engine import replays
from app.engine.replays import advance_replays
from tests.actions.test_replay import assert_problem, audit_rows, dead_letters, entry_rows, replay_jobs, snapshot
from tests.actions.test_replay_pending import FAST, load_run, request, start, until_completed

SLOW = 1  # one entry a second: a run of more than a few entries is still active when a test acts on it


def cancel_path(run_id: int | str) -> str:
    return f"/jobengine/deadletter/replays/{run_id}/cancel"


def run_path(run_id: int | str) -> str:
    return f"/jobengine/deadletter/replays/{run_id}"


async def slow_run(client, factory, runtime, tenant: str, count: int, project: str | None = None) -> int:
    """A replay-by-filter run over ``count`` fresh entries, paced at one a second."""
    code = f"E_SLOW_{count}"
    await dead_letters(runtime, tenant, count, error_code=code, project_id=project)
    body = {"filter": {"errorCode": code}, "ratePerSecond": SLOW}
    accepted = await start(client, factory, tenant, body, project=project)
    return accepted["operationRunId"]


async def one_chunk(runtime, run_id: int) -> int:
    """One chunk of this run, as the runner's step does it (whatever other runs are due)."""
    async with runtime.sessions.begin() as session:
        run = await replay_runs.claim_active(session, run_id)
        assert run is not None
        return await replays._advance(session, run, datetime.now(UTC))


async def replaying(runtime, tenant: str) -> set[str]:
    return {e.entry_id for e in (await entry_rows(runtime, tenant)).values() if e.status != "pending"}


# -- cancel -------------------------------------------------------------------------------------------


async def test_cancel_stops_the_run_keeps_what_was_replayed_and_counts_the_rest(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 30)
    # The first chunk: one entry, the one token of the bucket (on the embedded default the gateway's
    # own worker may take it first; the entry is replayed either way).
    await one_chunk(runtime, run_id)
    response = await client.post(cancel_path(run_id), headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["operationRunId"], body["status"], body["outcome"]) == (run_id, "completed", "failed")
    assert (body["ratePerSecond"], body["maxEntries"], body["matched"]) == (SLOW, 10_000, 30)
    assert 1 <= body["replayed"] < 30
    assert body["replayed"] + body["skipped"] + body["failed"] + body["canceled"] == body["matched"]
    assert (body["skipped"], body["failed"]) == (0, 0)

    replayed = await replaying(runtime, tenant)
    assert len(replayed) == body["replayed"] == len(await replay_jobs(runtime, tenant))
    run = await load_run(runtime, run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.summary_counts == {k: body[k] for k in ("matched", "replayed", "skipped", "failed", "canceled")}
    assert [f["code"] for f in run.failure_summary] == ["run.canceled"]
    assert run.context["canceledBy"] == "tester" and "nextAt" not in run.context

    # The runner has nothing more to do with it: no entry is replayed after the cancel.
    before = await snapshot(runtime, tenant)
    for _ in range(3):
        await advance_replays(runtime)
    assert await snapshot(runtime, tenant) == before
    assert await replaying(runtime, tenant) == replayed
    assert max(e.last_replayed_at for e in (await entry_rows(runtime, tenant)).values() if e.last_replayed_at) \
        <= run.completed_at

    # Every surface reads it as a canceled run: completed, failed, with the failure code.
    detail = await client.get(f"/api/admin/operations/{run_id}", headers=factory.headers(tenant))
    assert detail.status_code == 200, detail.text
    assert (detail.json()["status"], detail.json()["outcome"]) == ("completed", "failed")


async def test_cancel_of_a_run_that_has_not_started_cancels_every_entry(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 4, error_code="E_QUEUED")
    # The largest run of the tests, so that the embedded default's own worker is unlikely to pick it
    # before the cancel; whatever it replayed first is counted, and the sum holds either way.
    accepted = await start(client, factory, tenant, {"filter": {"errorCode": "E_QUEUED"}, "ratePerSecond": SLOW})
    response = await client.post(cancel_path(accepted["operationRunId"]), headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["matched"] == 4 and body["replayed"] + body["canceled"] == 4
    assert len(await replaying(runtime, tenant)) == body["replayed"]


# Only PostgreSQL shows who waits for a lock (pg_stat_activity), which the test waits for; on the
# embedded default the same guarded statement waits for SQLite's write lock instead.
@pytest.mark.backends("postgresql")
async def test_a_cancel_waits_for_a_chunk_in_progress_and_counts_it(client, factory, runtime):
    """The runner holds the run through a chunk; a cancel sent meanwhile answers after the chunk
    committed, and its counts include that chunk."""
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 20)
    now = datetime.now(UTC)
    async with runtime.sessions.begin() as session:
        run = await replay_runs.claim_active(session, run_id)  # as the runner's chunk step takes it
        assert run is not None
        replayed = await replays._advance(session, run, now)
        assert replayed >= 1
        cancel = asyncio.create_task(client.post(cancel_path(run_id), headers=factory.headers(tenant)))
        await waiting_for_a_lock(runtime, cancel)
    response = await cancel
    assert response.status_code == 200, response.text
    assert response.json()["replayed"] == replayed == len(await replaying(runtime, tenant))
    assert response.json()["canceled"] == 20 - replayed


async def waiting_for_a_lock(runtime, task: asyncio.Task[Any], timeout: float = 10.0) -> None:
    """Until ``task`` waits for a lock (polling PostgreSQL's view of its backends, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        assert not task.done(), task.result().text
        async with runtime.engine.connect() as connection:
            waiting = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )
        if waiting:
            return
        assert time.monotonic() < deadline, "the cancel never waited for the chunk"
        await asyncio.sleep(0.02)


async def test_no_chunk_starts_after_a_cancel_committed(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 10)
    assert (await client.post(cancel_path(run_id), headers=factory.headers(tenant))).status_code == 200
    # A runner that picked the run before the cancel takes it with the same guarded statement: it
    # finds the run completed and leaves it alone.
    async with runtime.sessions.begin() as session:
        assert await replay_runs.claim_active(session, run_id) is None
    assert await replaying(runtime, tenant) == set()


async def test_cancel_of_a_finished_run_is_409_and_changes_nothing(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 3, error_code="E_DONE")
    accepted = await start(client, factory, tenant, request({"errorCode": "E_DONE"}))
    (run,) = await until_completed(runtime, accepted["operationRunId"])
    assert run.outcome == "succeeded"
    before = await snapshot(runtime, tenant)
    for response in (
        await client.post(cancel_path(run.id), headers=factory.headers(tenant)),
        await client.patch(run_path(run.id), json={"ratePerSecond": 5}, headers=factory.headers(tenant)),
    ):
        assert_problem(response, 409, "run_not_active")
    assert await snapshot(runtime, tenant) == before
    after = await load_run(runtime, run.id)
    assert (after.outcome, after.summary_counts, after.context) == (run.outcome, run.summary_counts, run.context)


async def test_concurrent_cancels_of_one_run_succeed_once(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 10)
    responses = await asyncio.gather(
        *(client.post(cancel_path(run_id), headers=factory.headers(tenant)) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 409)
    assert_problem(refused, 409, "run_not_active")
    audited = sorted((a.action, a.result_status) for a in await audit_rows(runtime, tenant)
                     if a.action == "deadletter.replay_cancel")
    assert audited == [("deadletter.replay_cancel", 200), ("deadletter.replay_cancel", 409)]
    run = await load_run(runtime, run_id)
    assert [f["code"] for f in run.failure_summary] == ["run.canceled"]


async def test_many_concurrent_cancels_of_one_run_succeed_once(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 10)
    responses = await asyncio.gather(
        *(client.post(cancel_path(run_id), headers=factory.headers(tenant)) for _ in range(8))
    )
    assert sorted(r.status_code for r in responses) == [200] + [409] * 7, [r.text for r in responses]


async def test_cancel_and_rate_of_anything_but_the_callers_replay_run_are_404(client, factory, runtime):
    owner, intruder = await factory.tenant(), await factory.tenant()
    run_id = await slow_run(client, factory, runtime, owner, 5, project="billing")
    await dead_letters(runtime, owner, 2, error_code="E_BATCH")
    batch = await client.post(
        "/jobengine/deadletter/discard/pending", json={"filter": {"errorCode": "E_BATCH"}},
        headers=factory.headers(owner),
    )
    other_type = batch.json()["operationRunId"]  # a run of the tenant, but not a replay by filter
    before = await snapshot(runtime, owner)
    cases = [
        (intruder, None, run_id),  # another tenant's run
        (owner, "scanner", run_id),  # another project's run
        (owner, None, other_type),
        (owner, None, 999_999_999),
    ]
    for tenant, project, target in cases:
        headers = factory.headers(tenant, project=project)
        assert_problem(await client.post(cancel_path(target), headers=headers), 404, "not_found")
        response = await client.patch(run_path(target), json={"ratePerSecond": 5}, headers=headers)
        assert_problem(response, 404, "not_found")
    assert await snapshot(runtime, owner) == before
    # The owner, in the run's project or across the tenant, may.
    response = await client.post(cancel_path(run_id), headers=factory.headers(owner, project="billing"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        ("0", 400, "validation_failed"),
        ("-3", 400, "validation_failed"),
        ("99999999999999999999", 400, "validation_failed"),  # beyond a 64-bit id: never sent to the database
        ("9223372036854775807", 404, "not_found"),
        ("abc", 404, "not_found"),  # no route has such a path
    ],
)
async def test_a_run_id_that_is_not_a_run_id_is_refused(client, factory, runtime, value, status, code):
    tenant = await factory.tenant()
    assert_problem(await client.post(cancel_path(value), headers=factory.headers(tenant)), status, code)
    response = await client.patch(run_path(value), json={"ratePerSecond": 5}, headers=factory.headers(tenant))
    assert_problem(response, status, code)


async def test_cancel_and_rate_need_the_backfill_scope_and_a_reason(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 3)
    before = await snapshot(runtime, tenant)
    calls = (("POST", cancel_path(run_id), None), ("PATCH", run_path(run_id), {"ratePerSecond": 5}))
    for method, path, body in calls:
        response = await client.request(method, path, json=body, headers=factory.headers(tenant, scope="orch:operate"))
        assert_problem(response, 403, "insufficient_scope")
        response = await client.request(method, path, json=body, headers=factory.headers(tenant, reason=None))
        assert_problem(response, 400, "operator_reason_required")
    assert await snapshot(runtime, tenant) == before
    await client.post(cancel_path(run_id), headers=factory.headers(tenant))


async def test_cancel_with_an_idempotency_key_answers_the_first_cancel_again(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 5)
    headers = {**factory.headers(tenant), "Idempotency-Key": "cancel-replay-1"}
    first = await client.post(cancel_path(run_id), headers=headers)
    second = await client.post(cancel_path(run_id), headers=headers)
    assert first.status_code == second.status_code == 200, first.text
    assert first.json() == second.json() and second.headers.get("idempotent-replayed") == "true"
    assert_problem(await client.post(cancel_path(run_id), headers=factory.headers(tenant)), 409, "run_not_active")


async def test_cancel_is_audited_with_the_run_as_target(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 3)
    headers = factory.headers(tenant, subject="ops.erin", reason="wrong filter", ticket="INC-7")
    assert (await client.post(cancel_path(run_id), headers=headers)).status_code == 200
    (row,) = [a for a in await audit_rows(runtime, tenant) if a.action == "deadletter.replay_cancel"]
    assert (row.result_status, row.target, row.subject, row.reason, row.ticket, row.dry_run) == (
        200, str(run_id), "ops.erin", "wrong filter", "INC-7", False,
    )
    assert row.route == "/jobengine/deadletter/replays/{operationRunId}/cancel"


# -- rate -----------------------------------------------------------------------------------------


async def test_a_rate_change_mid_run_takes_effect_and_is_audited(client, factory, runtime):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 200)
    await advance_replays(runtime)
    assert (await load_run(runtime, run_id)).summary_counts["replayed"] < 200
    headers = factory.headers(tenant, reason="the registry is back; catch up")
    response = await client.patch(run_path(run_id), json={"ratePerSecond": FAST}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["operationRunId"], body["ratePerSecond"], body["status"]) == (run_id, FAST, "running")
    stored = await load_run(runtime, run_id)
    assert stored.context["ratePerSecond"] == FAST and "nextAt" not in stored.context
    # At one a second the 200 entries would take minutes; at the new rate the run ends at once.
    (run,) = await until_completed(runtime, run_id)
    assert (run.outcome, run.summary_counts["replayed"]) == ("succeeded", 200)
    (row,) = [a for a in await audit_rows(runtime, tenant) if a.action == "deadletter.replay_rate"]
    assert (row.result_status, row.target, row.reason, row.method) == (
        200, str(run_id), "the registry is back; catch up", "PATCH",
    )


# On the embedded default the gateway's own worker may replay the whole run at the old rate before
# the change reaches it, which leaves nothing to slow down.
@pytest.mark.backends("postgresql")
async def test_a_lower_rate_slows_the_run_down(client, factory, runtime):
    tenant = await factory.tenant()
    await dead_letters(runtime, tenant, 50, error_code="E_DOWN")
    accepted = await start(client, factory, tenant, {"filter": {"errorCode": "E_DOWN"}, "ratePerSecond": 1000})
    run_id = accepted["operationRunId"]
    response = await client.patch(run_path(run_id), json={"ratePerSecond": 1}, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text
    for _ in range(3):
        await advance_replays(runtime)
    # A bucket of one token a second: a handful at most, not the 50 the old rate allowed at once.
    replayed = (await load_run(runtime, run_id)).summary_counts["replayed"]
    assert replayed <= 5
    await client.post(cancel_path(run_id), headers=factory.headers(tenant))


@pytest.mark.parametrize(
    "body",
    [{"ratePerSecond": 0}, {"ratePerSecond": 100_001}, {}, {"ratePerSecond": 5, "extra": 1},
     {"ratePerSecond": None}, {"ratePerSecond": 1.5}],
)
async def test_an_invalid_rate_is_400_and_changes_nothing(client, factory, runtime, body):
    tenant = await factory.tenant()
    run_id = await slow_run(client, factory, runtime, tenant, 2)
    before = await load_run(runtime, run_id)
    response = await client.patch(run_path(run_id), json=body, headers=factory.headers(tenant))
    assert_problem(response, 400, "validation_failed")
    assert (await load_run(runtime, run_id)).context["ratePerSecond"] == before.context["ratePerSecond"]
    await client.post(cancel_path(run_id), headers=factory.headers(tenant))

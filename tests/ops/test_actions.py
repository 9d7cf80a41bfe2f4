"""`jobgate ops` actions: reason and ticket, the dry-run preview and its confirmation (on a
pseudo-terminal, or --yes), following the run to 100 %, Ctrl-C detaching, and a retried request
that never acts twice."""

from __future__ import annotations

import re
import signal

import pexpect

from tests.api.rows import Rows
from tests.conftest import ROOT
from tests.ops.conftest import Operator, dead_letters, plain
from tests.ops.proxy import Plan, proxy


def entry_statuses(operator: Operator, **params: str) -> dict[str, str]:
    page = operator.api("GET", "/jobengine/deadletter", params={"limit": 200, **params}).json()
    return {item["entryId"]: item["status"] for item in page["items"]}


def replay_runs(operator: Operator) -> list[dict]:
    page = operator.api("GET", "/api/admin/operations", params={"limit": 200, "type": "deadletter.replay_pending"})
    return page.json()["data"]


def spawn(operator: Operator, *args: str) -> pexpect.spawn:
    """The command on a pseudo-terminal of 120 columns, as an operator at a terminal runs it."""
    command = operator.command(*args)
    return pexpect.spawn(
        command[0], command[1:], env=operator.env(), cwd=str(ROOT), dimensions=(40, 120), encoding="utf-8",
        timeout=60,
    )


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF, timeout=90)
    child.close()
    return child.exitstatus, plain(child.before or "")


# -- reason, ticket, ids ----------------------------------------------------------------------


async def test_replay_by_ids_prints_each_outcome_and_refuses_what_is_not_pending(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 2, error_code="E_IDS")
    ids = [e.entry_id for e in entries]
    result = operator("deadletter", "replay", *ids, "--reason", "upstream fixed", "--ticket", "OPS-1")
    assert result.code == 0, result.both
    for entry_id in ids:
        assert re.search(rf"{entry_id}\s+replayed\s+-\s+\S+", result.out), result.out
    assert "2 replayed" in result.out
    assert set(entry_statuses(operator, errorCode="E_IDS").values()) == {"replaying"}

    again = operator("deadletter", "replay", ids[0], "unknown-entry", "--reason", "again", "-o", "json")
    assert again.code == 1
    answer = again.json()
    assert [(r["entryId"], r["outcome"], r.get("reason")) for r in answer["results"]] == [
        (ids[0], "skipped", "replay_in_progress"), ("unknown-entry", "not_found", None)
    ]
    audit = operator.api("GET", "/jobengine/audit", params={"action": "deadletter.replay_batch"}).json()["items"]
    assert [(a["reason"], a["ticket"]) for a in audit] == [("again", None), ("upstream fixed", "OPS-1")]


async def test_every_action_needs_a_reason(operator: Operator):
    for args in (
        ("deadletter", "replay", "dle-1"),
        ("deadletter", "replay", "--filter", "errorCode=E", "--yes"),
        ("deadletter", "discard", "dle-1"),
        ("deadletter", "restore", "dle-1"),
        ("quotas", "pause", "q-1"),
        ("quotas", "resume", "q-1"),
        ("jobs", "cancel", "job-1"),
        ("packruns", "cancel", "pr-1"),
        ("packruns", "retry", "pr-1"),
        ("runs", "cancel", "1"),
    ):
        result = operator(*args)
        assert result.code == 2, (args, result.both)
        assert "Missing option '--reason'" in result.err, args


async def test_discard_by_ids_then_restore(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 2, error_code="E_DISCARD")
    ids = [e.entry_id for e in entries]
    result = operator("deadletter", "discard", *ids, "--reason", "known bad input")
    assert result.code == 0, result.both
    assert "2 discarded" in result.out
    restored = operator("deadletter", "restore", ids[0], "--reason", "needed after all", "-o", "json")
    assert restored.code == 0, restored.both
    assert restored.json()["status"] == "pending"
    assert entry_statuses(operator, errorCode="E_DISCARD") == {ids[0]: "pending", ids[1]: "discarded"}
    twice = operator("deadletter", "restore", ids[0], "--reason", "again")
    assert twice.code == 1
    assert "409 entry_not_discarded" in twice.err


async def test_discard_by_filter_previews_then_discards_with_yes(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 3, error_code="E_JUNK")
    await dead_letters(runtime, operator.tenant, 2, error_code="E_KEEP")
    result = operator("deadletter", "discard", "--filter", "errorCode=E_JUNK", "--reason", "junk", "--yes")
    assert result.code == 0, result.both
    assert "Dry run: 3 pending entries match errorCode=E_JUNK; 3 would be discarded." in result.out
    assert "discarded 3 of 3 matching entries" in result.out
    assert set(entry_statuses(operator, errorCode="E_JUNK").values()) == {"discarded"}
    assert set(entry_statuses(operator, errorCode="E_KEEP").values()) == {"pending"}
    assert len(entries) == 3


async def test_quota_pause_and_resume(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    quota = rows.quota("export")
    await rows.add(quota)
    paused = operator("quotas", "pause", quota.quota_id, "--reason", "registry down", "-o", "json")
    assert paused.code == 0, paused.both
    assert (paused.json()["paused"], paused.json()["pausedBy"], paused.json()["pausedReason"]) == (
        True, "ops.alice", "registry down"
    )
    resumed = operator("quotas", "resume", quota.quota_id, "--reason", "registry back")
    assert resumed.code == 0, resumed.both
    assert re.search(r"paused\s+no", resumed.out), resumed.out


async def test_packrun_cancel(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    run = rows.pack_run(status="queued")
    await rows.add(run)
    result = operator("packruns", "cancel", run.pack_run_id, "--reason", "wrong version", "-o", "json")
    assert result.code == 0, result.both
    assert result.json()["status"] in ("canceled", "cancel_requested")
    again = operator("packruns", "cancel", "pr-unknown", "--reason", "typo")
    assert again.code == 1 and "404" in again.err


# -- by filter: preview, confirmation, following ----------------------------------------------


async def test_replay_by_filter_is_refused_without_a_terminal_and_without_yes(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 3, error_code="E_NOTTY")
    result = operator("deadletter", "replay", "--filter", "errorCode=E_NOTTY", "--reason", "retry")
    assert result.code == 2
    assert "Dry run: 3 pending entries match errorCode=E_NOTTY; 3 would be replayed." in result.out
    assert "refusing to act without a terminal to confirm on: pass --yes" in result.err
    assert set(entry_statuses(operator, errorCode="E_NOTTY").values()) == {"pending"}
    assert replay_runs(operator) == []


async def test_replay_by_filter_asks_on_a_terminal_then_follows_the_run_to_100_percent(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 12, error_code="E_TTY", job_type="scan.tty")
    await dead_letters(runtime, operator.tenant, 2, error_code="E_TTY", job_type="scan.other")
    child = spawn(
        operator, "deadletter", "replay", "--filter", "errorCode=E_TTY", "--filter", "jobType=scan.tty",
        "--reason", "registry back", "--ticket", "INC-9",
    )
    child.expect(r"Replay 12 entries\? \[y/N\]")
    preview = plain(child.before)
    assert "Dry run: 12 pending entries match errorCode=E_TTY, jobType=scan.tty; 12 would be replayed." in preview
    assert "Sample (10)" in preview
    assert replay_runs(operator) == []  # nothing before the answer
    child.sendline("y")
    code, output = finish(child)
    assert code == 0, output
    assert re.search(r"100%\s+12 done, 0 failed, 0 remaining", output), output
    (run,) = replay_runs(operator)
    assert f"run {run['id']} (deadletter.replay_pending) completed: succeeded" in output
    assert "matched 12, replayed 12, skipped 0" in output
    statuses = entry_statuses(operator, errorCode="E_TTY")
    assert {statuses[e.entry_id] for e in entries} == {"replaying"}
    assert sorted(statuses.values()).count("pending") == 2


async def test_declining_on_the_terminal_changes_nothing(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 2, error_code="E_NO")
    child = spawn(operator, "deadletter", "replay", "--filter", "errorCode=E_NO", "--reason", "maybe")
    child.expect(r"Replay 2 entries\? \[y/N\]")
    child.sendline("n")
    code, output = finish(child)
    assert code == 1
    assert "not confirmed: nothing was replayed." in output
    assert set(entry_statuses(operator, errorCode="E_NO").values()) == {"pending"}


async def test_replay_by_filter_with_yes_follows_to_100_percent_with_exact_counts(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 25, error_code="E_YES")
    result = operator("deadletter", "replay", "--filter", "errorCode=E_YES", "--max", "20", "--reason", "retry", "--yes")
    assert result.code == 0, result.both
    assert "Dry run: 25 pending entries match errorCode=E_YES; 20 would be replayed." in result.out
    assert re.search(r"100%\s+20 done, 0 failed, 0 remaining", result.err), result.err
    assert "matched 20, replayed 20, skipped 0" in result.out
    assert sorted(entry_statuses(operator, errorCode="E_YES").values()).count("replaying") == 20


async def test_replay_by_filter_in_json_prints_the_final_run_document(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 3, error_code="E_JSON")
    result = operator("deadletter", "replay", "-f", "errorCode=E_JSON", "--reason", "retry", "--yes", "-o", "json")
    assert result.code == 0, result.both
    run = result.json()
    assert (run["status"], run["outcome"]) == ("completed", "succeeded")
    assert run == operator.api("GET", f"/api/admin/operations/{run['id']}").json()


async def test_nothing_to_replay_ends_after_the_preview(operator: Operator):
    result = operator("deadletter", "replay", "--filter", "errorCode=E_NONE", "--reason", "retry")
    assert result.code == 0, result.both
    assert "Dry run: 0 pending entries match errorCode=E_NONE; 0 would be replayed." in result.out
    assert "nothing to replay." in result.out


async def test_ctrl_c_detaches_the_run_goes_on_and_runs_watch_reattaches(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 6, error_code="E_SLOW")
    child = spawn(
        operator, "deadletter", "replay", "--filter", "errorCode=E_SLOW", "--rate", "1", "--reason", "slowly", "--yes"
    )
    child.expect(r"replay run (\d+) queued")
    run_id = int(child.match.group(1))
    child.expect(r"\d+ done, \d+ failed")  # the progress bar is up
    child.kill(signal.SIGINT)
    code, output = finish(child)
    assert code == 0, output
    assert f"Detached: run {run_id} goes on. Follow it again with: jobgate ops runs watch {run_id}" in output
    assert f"Cancel it with: jobgate ops runs cancel {run_id} --reason" in output
    detached = operator.api("GET", f"/api/admin/operations/{run_id}").json()
    assert detached["status"] != "completed" and detached["summary_counts"]["replayed"] < 6

    watched = operator("runs", "watch", str(run_id))
    assert watched.code == 0, watched.both
    assert re.search(r"100%\s+6 done, 0 failed, 0 remaining", watched.err), watched.err
    assert "matched 6, replayed 6" in watched.out
    assert set(entry_statuses(operator, errorCode="E_SLOW").values()) == {"replaying"}


# -- retries: a lost answer never acts twice ---------------------------------------------------


async def test_a_lost_answer_is_retried_with_the_same_key_and_acts_once(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 2, error_code="E_DROP")
    ids = [e.entry_id for e in entries]
    plan = Plan(drop_after_forwarding={"POST /jobengine/deadletter/replay/batch": 1})
    with proxy(operator.url, plan) as url:
        result = operator("deadletter", "replay", *ids, "--reason", "flaky network", "-v", JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert "2 replayed" in result.out
    posts = [headers for method, path, headers in plan.seen if method == "POST"]
    assert len(posts) == 2 and posts[0]["Idempotency-Key"] == posts[1]["Idempotency-Key"]
    assert "no answer (RemoteProtocolError)" in result.err and "(idempotent replay)" in result.err
    batches = operator.api("GET", "/api/admin/operations", params={"type": "deadletter.replay_batch"}).json()["data"]
    assert len(batches) == 1
    for entry_id in ids:
        entry = operator.api("GET", f"/jobengine/deadletter/{entry_id}").json()
        assert (entry["status"], entry["replayCount"]) == ("replaying", 1)


async def test_a_lost_answer_to_a_replay_by_filter_starts_one_run(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 4, error_code="E_DROP2")
    plan = Plan(drop_after_forwarding={"POST /jobengine/deadletter/replay/pending": 2})  # the preview and the act
    with proxy(operator.url, plan) as url:
        result = operator(
            "deadletter", "replay", "-f", "errorCode=E_DROP2", "--reason", "retry", "--yes", JOBGATE_URL=url
        )
    assert result.code == 0, result.both
    assert "matched 4, replayed 4" in result.out
    assert len(replay_runs(operator)) == 1


async def test_503_with_retry_after_is_retried(operator: Operator):
    plan = Plan(unavailable=2)
    with proxy(operator.url, plan) as url:
        result = operator("quotas", "list", JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert len(plan.seen) == 3



async def test_runs_cancel_of_a_pack_run_uses_the_pack_run_route(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    await rows.add(source)
    submitted = operator.api(
        "POST", "/jobengine/pack-runs",
        json={"packName": "nightly", "packVersion": "1.0.0", "sourceId": source.source_id,
              "steps": [{"jobType": "demo.sleep", "payload": {"seconds": 3}}] * 3},
    )
    assert submitted.status_code == 201, submitted.text
    pack_run = submitted.json()
    result = operator("runs", "cancel", str(pack_run["operationRunId"]), "--reason", "wrong pack", "-o", "json")
    assert result.code == 0, result.both
    assert result.json()["packRunId"] == pack_run["packRunId"]
    assert result.json()["status"] in ("canceled", "cancel_requested")


async def test_runs_cancel_refuses_a_run_of_a_kind_that_cannot_be_canceled(operator: Operator, runtime):
    (entry,) = await dead_letters(runtime, operator.tenant, 1, error_code="E_KIND")
    batch = operator("deadletter", "replay", entry.entry_id, "--reason", "r", "-o", "json").json()
    result = operator("runs", "cancel", str(batch["operationRunId"]), "--reason", "r")
    assert result.code == 1
    assert "run_not_cancelable" in result.err and "deadletter.replay_batch" in result.err


async def test_packrun_retry_follows_the_new_run_to_its_end(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    await rows.add(source)
    submitted = operator.api(
        "POST", "/jobengine/pack-runs",
        json={"packName": "nightly", "packVersion": "1.0.0", "sourceId": source.source_id,
              "steps": [{"jobType": "demo.sleep", "payload": {"seconds": 1}}] * 2},
    ).json()
    canceled = operator("packruns", "cancel", submitted["packRunId"], "--reason", "restart it")
    assert canceled.code == 0, canceled.both
    operator.wait_for(
        lambda: operator.api("GET", f"/jobengine/pack-runs/{submitted['packRunId']}").json()["status"] == "canceled",
        what="the cancel",
    )
    result = operator("packruns", "retry", submitted["packRunId"], "--reason", "restart it", "--ticket", "OPS-5")
    assert result.code == 0, result.both
    assert re.search(rf"retryOf\s+{submitted['packRunId']}", result.out), result.out
    assert re.search(r"100%\s+2 done, 0 failed, 0 remaining", result.err), result.err
    assert re.search(r"run \d+ \(pack_run.retry\) completed: succeeded", result.out), result.out

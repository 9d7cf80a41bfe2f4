"""Following a run: through the change feed when the gateway has one, else polling the run with
ETags; and saying so when the gateway does not tell why a job waits. A proxy in front of the live
gateway stands for a gateway with or without those features."""

from __future__ import annotations

import re

from app.ops.client import Gateway
from app.ops.follow import finished, run_path
from app.ops.target import Target
from tests.api.rows import Rows
from tests.ops.conftest import Operator, dead_letters
from tests.ops.proxy import Plan, proxy


def start_replay(operator: Operator, error_code: str, rate: int) -> int:
    response = operator.api(
        "POST", "/jobengine/deadletter/replay/pending",
        json={"filter": {"errorCode": error_code}, "ratePerSecond": rate},
        headers={"X-Stella-Operator-Reason": "follow test"},
    )
    assert response.status_code == 202, response.text
    return response.json()["operationRunId"]


async def test_watch_follows_the_change_feed_when_the_gateway_has_one(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 12, error_code="E_FEED")
    run_id = start_replay(operator, "E_FEED", 2)  # 5 s at least: still running when the watch starts
    with proxy(operator.url, Plan(feed_ids=[run_id + 1000, run_id])) as url:
        result = operator("runs", "watch", str(run_id), "-v", JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert "<- 200 change feed connected" in result.err and "polling" not in result.err
    assert re.search(r"100%\s+12 done, 0 failed, 0 remaining", result.err), result.err
    assert f"run {run_id} (deadletter.replay_pending) completed: succeeded" in result.out


async def test_watch_reads_the_run_now_and_then_when_the_feed_carries_only_other_runs(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 8, error_code="E_OTHERS")
    run_id = start_replay(operator, "E_OTHERS", 1)  # 7 s at least
    with proxy(operator.url, Plan(feed_ids=[run_id + 1000])) as url:
        result = operator("runs", "watch", str(run_id), "-v", JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert "<- 200 change feed connected" in result.err
    assert re.search(r"100%\s+8 done, 0 failed, 0 remaining", result.err), result.err


async def test_watch_polls_the_run_with_etags_without_a_change_feed(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 10, error_code="E_POLL")
    run_id = start_replay(operator, "E_POLL", 2)  # 4 s at least
    with proxy(operator.url, Plan(no_feed=True)) as url:
        result = operator("runs", "watch", str(run_id), "-v", JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert "<- 404: this gateway has no change feed; polling the run instead" in result.err
    assert re.search(r'-> GET /api/admin/operations/\d+ \[If-None-Match: "\w+"\]', result.err), result.err
    assert re.search(r"100%\s+10 done, 0 failed, 0 remaining", result.err), result.err


async def test_an_unchanged_run_costs_a_304(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 1, error_code="E_304")
    run_id = start_replay(operator, "E_304", 100)
    log: list[str] = []
    gateway = Gateway(Target(operator.url, operator.tenant, None, operator.token), log=log.append)
    try:
        _, etag = operator.wait_for(
            lambda: (got := gateway.get_if_changed(run_path(run_id), None)) and finished(got[0]) and got,
            what="the run's end",
        )
        assert gateway.get_if_changed(run_path(run_id), etag) is None
    finally:
        gateway.close()
    assert log[-1].startswith("<- 304")


async def test_watch_of_a_finished_run_prints_it_at_once(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 2, error_code="E_DONE")
    run_id = start_replay(operator, "E_DONE", 100)
    operator.wait_for(
        lambda: operator.api("GET", f"/api/admin/operations/{run_id}").json()["status"] == "completed",
        what="the run's end",
    )
    result = operator("runs", "watch", str(run_id), "-v")
    assert result.code == 0, result.both
    assert "/jobengine/events" not in result.err
    assert re.search(r"100%\s+2 done, 0 failed, 0 remaining", result.err), result.err


async def test_jobs_why_says_so_when_the_gateway_does_not_report_why(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    job = rows.job(source_id=source.source_id, job_type="export", status="pending")
    await rows.add(source, job)
    with proxy(operator.url, Plan(strip={"/jobengine/jobs/": "waitingReason"})) as url:
        result = operator("jobs", "why", job.job_id, JOBGATE_URL=url)
    assert result.code == 0, result.both
    assert (
        f"job {job.job_id} is pending. This gateway does not report why a job waits: its job payload has no "
        "waitingReason" in " ".join(result.out.split())
    )


async def test_watch_follows_the_gateways_change_feed(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 12, error_code="E_EVENTS")
    run_id = start_replay(operator, "E_EVENTS", 2)  # 5 s at least: still running when the watch starts
    result = operator("runs", "watch", str(run_id), "-v")
    assert result.code == 0, result.both
    assert "<- 200 change feed connected" in result.err and "polling" not in result.err
    assert re.search(r"100%\s+12 done, 0 failed, 0 remaining", result.err), result.err

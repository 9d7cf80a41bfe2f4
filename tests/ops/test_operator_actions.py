"""`jobgate ops` commands over the operator actions of the second release: job cancel, the job's
waitingReason, replay-run cancel and the dead-letter jobId filter."""

from __future__ import annotations


from tests.api.rows import Rows, ago
from tests.ops.conftest import Operator, dead_letters
from tests.ops.test_follow import start_replay


async def test_jobs_why_prints_the_waiting_reason(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    # a type the gateway's embedded worker serves, so the paused quota is what holds the job
    quota = rows.quota("demo.sleep", paused=True, paused_by="ops.carol", paused_reason="upstream down",
                       paused_at=ago(minutes=1))
    job = rows.job(source_id=source.source_id, job_type="demo.sleep", status="pending", payload={"seconds": 1})
    await rows.add(source, quota, job)
    result = operator("jobs", "why", job.job_id)
    assert result.code == 0, result.both
    assert f"job {job.job_id} is pending, waiting: quota_paused — the quota of its jobType is paused" in " ".join(
        result.out.split()
    )
    assert operator("jobs", "why", job.job_id, "-o", "json").json()["waitingReason"] == "quota_paused"


async def test_jobs_cancel_cancels_a_pending_job_once(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    job = rows.job(source_id=source.source_id, job_type="export", status="pending")
    await rows.add(source, job)
    result = operator("jobs", "cancel", job.job_id, "--reason", "not needed", "-o", "json")
    assert result.code == 0, result.both
    assert result.json()["status"] == "canceled"
    again = operator("jobs", "cancel", job.job_id, "--reason", "again")
    assert again.code == 1 and "409 job_not_active" in again.err


async def test_runs_cancel_stops_a_replay_by_filter(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 30, error_code="E_STOP")
    run_id = start_replay(operator, "E_STOP", 1)
    result = operator("runs", "cancel", str(run_id), "--reason", "wrong filter", "--ticket", "INC-3")
    assert result.code == 0, result.both
    run = operator.wait_for(
        lambda: (r := operator.api("GET", f"/api/admin/operations/{run_id}").json())["status"] == "completed" and r,
        what="the canceled run's end",
    )
    assert run["summary_counts"]["replayed"] < 30
    again = operator("runs", "cancel", str(run_id), "--reason", "again")
    assert again.code == 1 and "409 run_not_active" in again.err


async def test_deadletter_list_filters_by_job_id(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 3, error_code="E_JOBID")
    result = operator("deadletter", "list", "--filter", f"jobId={entries[1].job_id}", "-o", "json")
    assert result.code == 0, result.both
    assert [item["entryId"] for item in result.json()["items"]] == [entries[1].entry_id]

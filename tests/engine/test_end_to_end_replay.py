"""Dead letter to replay, end to end: jobs submitted through the gateway fail in a real
`jobgate worker`, dead-letter with their categories, codes and templates, show up in the stats
and the summary, and a replay by errorCode — run by the worker's background step — replays
exactly the matching entries, which then succeed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.deadletter.templates import error_template, template_hash
from tests.engine.conftest import eventually
from tests.engine.support import entries_of, jobs_of, submit

FLAKY_UNTIL = timedelta(seconds=5)  # long enough for every first run to fail, short enough for the test
UNAVAILABLE = {"errorCode": "registry.unavailable", "category": "transient"}
INVALID = {"errorCode": "payload.invalid", "category": "validation", "retryable": False}
UNAVAILABLE_MESSAGES = [f"Registry mirror {n} did not answer within 30s" for n in (3, 17, 4)]
INVALID_MESSAGES = ["Field 'image' is missing in manifest 42", "Field 'tag' is missing in manifest 7"]


async def test_replay_pending_by_error_code_replays_only_matching_entries_which_then_succeed(
    client, factory, runtime, workers
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    worker = workers(tenant)
    await worker.ready()

    fail_until = datetime.now(UTC) + FLAKY_UNTIL
    flaky, failing = [], []
    for message in UNAVAILABLE_MESSAGES:
        payload = {**UNAVAILABLE, "message": message, "failUntil": fail_until.isoformat()}
        flaky.append(
            await submit(
                client, factory, tenant, source["sourceId"], "demo.flaky", payload=payload, maxAttempts=2
            )
        )
    for message in INVALID_MESSAGES:
        payload = {**INVALID, "message": message}
        failing.append(
            await submit(
                client, factory, tenant, source["sourceId"], "demo.fail", payload=payload, maxAttempts=2
            )
        )

    async def five_entries():
        entries = await entries_of(runtime, tenant)
        return entries if len(entries) == 5 else None

    entries = await eventually(five_entries)
    assert datetime.now(UTC) < fail_until, "the flaky jobs must dead-letter before they start to succeed"
    by_job = {e.job_id: e for e in entries}
    assert set(by_job) == {j["jobId"] for j in flaky + failing}
    for submitted, message in zip(flaky, UNAVAILABLE_MESSAGES):
        entry = by_job[submitted["jobId"]]
        assert (entry.job_type, entry.error_code, entry.category) == (
            "demo.flaky",
            "registry.unavailable",
            "transient",
        )
        assert entry.message == message and entry.attempts == 2  # retryable: both attempts were used
        assert entry.error_template == "Registry mirror <n> did not answer within <n>s"
    for submitted, message in zip(failing, INVALID_MESSAGES):
        entry = by_job[submitted["jobId"]]
        assert (entry.job_type, entry.error_code, entry.category) == (
            "demo.fail",
            "payload.invalid",
            "validation",
        )
        assert entry.message == message and entry.attempts == 1  # not retryable: dead-lettered at once
        assert entry.error_template == "Field <value> is missing in manifest <n>"
    for entry in entries:
        assert entry.error_template == error_template(entry.message)
        assert entry.template_hash == template_hash(entry.error_code, entry.error_template)
        assert (entry.status, entry.replay_count, entry.last_replay_job_id) == ("pending", 0, None)
        assert entry.source_id == source["sourceId"]
    assert {j.status for j in await jobs_of(runtime, tenant)} == {"failed"}

    headers = factory.headers(tenant)
    stats = (await client.get("/jobengine/deadletter/stats", headers=headers)).json()
    assert stats["total"] == 5 and stats["inflowLast24h"] == 5
    assert stats["byStatus"] == {"pending": 5, "replaying": 0, "replayed": 0, "discarded": 0}
    assert stats["byCategory"] == [
        {"category": "transient", "count": 3, "pending": 3},
        {"category": "validation", "count": 2, "pending": 2},
    ]
    newest_first = sorted(entries, key=lambda e: (e.dead_lettered_at, e.entry_id), reverse=True)
    clusters = [
        (c["errorCode"], c["template"], c["count"], c["pending"], c["sampleEntryIds"])
        for c in stats["topClusters"]
    ]
    assert clusters == [
        (
            "registry.unavailable",
            "Registry mirror <n> did not answer within <n>s",
            3,
            3,
            [e.entry_id for e in newest_first if e.error_code == "registry.unavailable"],
        ),
        (
            "payload.invalid",
            "Field <value> is missing in manifest <n>",
            2,
            2,
            [e.entry_id for e in newest_first if e.error_code == "payload.invalid"],
        ),
    ]
    summary = (await client.get("/jobengine/deadletter/summary", headers=headers)).json()
    assert [(g["category"], g["errorCode"], g["total"], g["pending"]) for g in summary["items"]] == [
        ("transient", "registry.unavailable", 3, 3),
        ("validation", "payload.invalid", 2, 2),
    ]
    assert summary["continuationToken"] is None

    async def flaky_handler_succeeds_now():
        return datetime.now(UTC) > fail_until

    await eventually(flaky_handler_succeeds_now, timeout=FLAKY_UNTIL.total_seconds() + 5)
    untouched = {e.entry_id: e for e in entries if e.error_code == "payload.invalid"}
    response = await client.post(
        "/jobengine/deadletter/replay/pending",
        json={"filter": {"errorCode": "registry.unavailable"}, "ratePerSecond": 1000},
        headers=factory.headers(tenant, reason="registry mirror is back", ticket="OPS-4242"),
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["deduplicated"] is False
    run_path = f"/api/admin/operations/{accepted['operationRunId']}"
    assert response.headers["location"] == f"http://gateway.test{run_path}"

    async def all_replayed():
        current = await entries_of(runtime, tenant)
        replayed = [e for e in current if e.error_code == "registry.unavailable" and e.status == "replayed"]
        return current if len(replayed) == 3 else None

    final = {e.entry_id: e for e in await eventually(all_replayed, timeout=30)}
    jobs = await jobs_of(runtime, tenant)
    replay_jobs = {j.replay_of_entry_id: j for j in jobs if j.replay_of_entry_id is not None}
    assert set(replay_jobs) == {e.entry_id for e in entries if e.error_code == "registry.unavailable"}
    for entry_id, replay_job in replay_jobs.items():
        entry = final[entry_id]
        assert (entry.replay_count, entry.last_replay_job_id) == (1, replay_job.job_id)
        assert (replay_job.job_type, replay_job.status, replay_job.attempt) == ("demo.flaky", "succeeded", 1)
        assert replay_job.payload == by_job[entry.job_id].payload
    for entry_id, before in untouched.items():
        after = final[entry_id]
        assert (after.status, after.replay_count, after.last_replay_job_id, after.updated_at) == (
            "pending",
            0,
            None,
            before.updated_at,
        )
    assert len(jobs) == 5 + 3

    async def run_completed():
        run = (await client.get(run_path, headers=headers)).json()
        return run if run["status"] == "completed" else None

    run = await eventually(run_completed)
    assert (run["type"], run["outcome"]) == ("deadletter.replay_pending", "succeeded")
    assert run["summary_counts"] == {"matched": 3, "replayed": 3, "skipped": 0, "failed": 0}
    stats = (await client.get("/jobengine/deadletter/stats", headers=headers)).json()
    assert stats["byStatus"] == {"pending": 2, "replaying": 0, "replayed": 3, "discarded": 0}

"""Stats and summaries equal counts computed here, independently, from the rows the test inserted."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.deadletter.templates import error_template
from app.domain.jobs.schemas import JOB_STATUSES
from app.domain.jobs.waiting import REASONS
from tests.api.rows import ago, tenant_rows, walk

OPERATE = "orch:operate"


# -- /jobengine/jobs/summary ----------------------------------------------------------------------


def count_key(status: str) -> str:
    """Counts are JSON fields, so camelCase: ``timed_out`` is counted as ``timedOut``."""
    head, *rest = status.split("_")
    return head + "".join(part.title() for part in rest)


def status_counts(jobs: list[Any]) -> dict[str, int]:
    counted = Counter(j.status for j in jobs)
    return {**{count_key(s): counted.get(s, 0) for s in JOB_STATUSES}, "total": len(jobs)}


@pytest.fixture
async def job_mix(runtime, factory):  # type: ignore[no-untyped-def]
    tenant, rows = await tenant_rows(runtime, factory)
    rng = random.Random(3)
    jobs = [
        rows.job(
            status=rng.choice(JOB_STATUSES),
            job_type=rng.choice(("scan", "export", "index")),
            source_id=rng.choice(("src-a", "src-b")),
        )
        for _ in range(60)
    ]
    return tenant, await rows.add(*jobs)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"jobType": "export"},
        {"sourceId": "src-b"},
        {"jobType": "scan", "sourceId": "src-a"},
        {"jobType": "none"},
    ],
)
async def test_job_summary_counts_by_status_overall_and_per_job_type(client, factory, job_mix, params):
    tenant, jobs = job_mix
    kept = [
        j
        for j in jobs
        if j.job_type == params.get("jobType", j.job_type)
        and j.source_id == params.get("sourceId", j.source_id)
    ]
    response = await client.get("/jobengine/jobs/summary", params=params, headers=factory.headers(tenant))
    assert response.status_code == 200
    body = response.json()
    assert body["overall"] == status_counts(kept)
    by_type: dict[str, list[Any]] = defaultdict(list)
    for job in kept:
        by_type[job.job_type].append(job)
    assert body["byJobType"] == [
        {"jobType": kind, "counts": status_counts(group), "waiting": no_worker_waiting(group)}
        for kind, group in sorted(by_type.items())
    ]


def no_worker_waiting(jobs: list[Any]) -> dict[str, Any]:
    """The waiting jobs of a job type no worker serves (every one is due: ``run_after`` is past)."""
    waiting = sum(j.status in ("pending", "scheduled") for j in jobs)
    by_reason = {**dict.fromkeys(REASONS, 0), "no_worker_for_job_type": waiting}
    reason = "no_worker_for_job_type" if waiting else None
    return {"jobs": waiting, "reason": reason, "byReason": by_reason, "unattributed": 0}


async def test_job_summary_of_a_tenant_without_jobs_is_all_zero(client, factory):
    tenant = await factory.tenant()
    body = (await client.get("/jobengine/jobs/summary", headers=factory.headers(tenant))).json()
    assert body == {"overall": status_counts([]), "byJobType": []}
    assert set(body["overall"]) == {
        "pending",
        "scheduled",
        "leased",
        "running",
        "cancelRequested",
        "succeeded",
        "failed",
        "canceled",
        "timedOut",
        "total",
    }


# -- /jobengine/quotas/summary --------------------------------------------------------------------


async def test_quota_summary_shows_limits_beside_observed_load_and_backpressure(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    long_ago, recently, seconds_ago = ago(hours=2), ago(minutes=30), ago(seconds=20)
    quotas = {
        # paused: starts nothing, whatever its free slots
        "paused": rows.quota("paused", max_active=5, max_per_hour=100, burst=10, paused=True),
        # full: more active than slots (the limit was lowered)
        "full": rows.quota("full", max_active=2, max_per_hour=100, burst=10),
        # ratelimited: free slots, but the hourly budget is spent
        "ratelimited": rows.quota("ratelimited", max_active=10, max_per_hour=4, burst=4),
        # busy: 80 % of the slots in use, nothing waiting
        "busy": rows.quota("busy", max_active=5, max_per_hour=100, burst=10),
        # bursty: the per-minute burst lets two of four waiting jobs start
        "bursty": rows.quota("bursty", max_active=10, max_per_hour=100, burst=3),
        # calm: room for everything waiting, yet jobs wait (no worker serves the type): never `none`
        "calm": rows.quota("calm", max_active=10, max_per_hour=100, burst=10),
        "idle": rows.quota("idle", max_active=3, max_per_hour=10, burst=5),
    }

    def jobs(job_type: str, status: str, n: int, started_at: datetime | None = None) -> list[Any]:
        return [rows.job(job_type=job_type, status=status, started_at=started_at) for _ in range(n)]

    await rows.add(
        *quotas.values(),
        *jobs("paused", "pending", 3),
        *jobs("paused", "running", 1, long_ago),
        *jobs("full", "running", 2, long_ago),
        *jobs("full", "leased", 1),
        *jobs("full", "pending", 2),
        *jobs("full", "scheduled", 1),
        *jobs("ratelimited", "succeeded", 4, recently),
        *jobs("ratelimited", "pending", 2),
        *jobs("busy", "running", 4, long_ago),
        *jobs("bursty", "succeeded", 1, seconds_ago),
        *jobs("bursty", "pending", 4),
        *jobs("calm", "running", 1, long_ago),
        *jobs("calm", "failed", 1, ago(hours=3)),
        *jobs("calm", "pending", 2),
        *jobs("unquoted", "pending", 5),  # no quota: not in the summary
    )
    response = await client.get(
        "/jobengine/quotas/summary", headers=factory.headers(tenant, scope="orch:quota")
    )
    assert response.status_code == 200
    body = response.json()

    # (active, queued, throttled, dispatchedLastHour, utilisation, backpressure), worked out by hand
    expected = {
        "bursty": (0, 4, 2, 1, 0.0, "elevated"),
        "busy": (4, 0, 0, 0, 0.8, "elevated"),
        "calm": (1, 2, 0, 0, 0.1, "elevated"),
        "full": (3, 3, 3, 0, 1.5, "saturated"),
        "idle": (0, 0, 0, 0, 0.0, "none"),
        "paused": (1, 3, 3, 0, 0.2, "paused"),
        "ratelimited": (0, 2, 2, 4, 0.0, "saturated"),
    }
    assert [i["jobType"] for i in body["items"]] == sorted(expected)
    for item in body["items"]:
        quota = quotas[item["jobType"]]
        assert (item["quotaId"], item["maxActive"], item["maxPerHour"], item["burst"], item["paused"]) == (
            quota.quota_id,
            quota.max_active,
            quota.max_per_hour,
            quota.burst,
            quota.paused,
        )
        observed = tuple(
            item[k]
            for k in ("active", "queued", "throttled", "dispatchedLastHour", "utilisation", "backpressure")
        )
        assert observed == expected[item["jobType"]], item["jobType"]
    # every waiting job is due and no worker serves these job types
    assert {i["jobType"]: (i["waiting"]["jobs"], i["waiting"]["reason"]) for i in body["items"]} == {
        kind: (queued, "no_worker_for_job_type" if queued else None)
        for kind, (_, queued, *_rest) in expected.items()
    }
    assert body["totals"] == {
        "quotas": 7,
        "paused": 1,
        "active": 9,
        "queued": 14,
        "throttled": 10,
        "dispatchedLastHour": 5,
    }


async def test_resuming_a_paused_quota_turns_its_held_jobs_startable(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    quota = rows.quota("scan", max_active=4, paused=True)
    await rows.add(quota, *(rows.job(job_type="scan") for _ in range(3)))
    headers = factory.headers(tenant)
    before = (await client.get("/jobengine/quotas/summary", headers=headers)).json()["items"][0]
    assert (before["throttled"], before["backpressure"]) == (3, "paused")
    resumed = await client.post(f"/jobengine/quotas/{quota.quota_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    after = (await client.get("/jobengine/quotas/summary", headers=headers)).json()["items"][0]
    # startable now, but due jobs still wait (no worker serves the type): never `none` while they do
    assert (after["throttled"], after["backpressure"]) == (0, "elevated")


async def test_jobs_scheduled_for_later_are_not_throttled_by_the_quota(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    tomorrow = ago(hours=-24)
    await rows.add(
        rows.quota("scan", max_active=2),
        *(rows.job(job_type="scan", status="scheduled", run_after=tomorrow) for _ in range(5)),
    )
    item = (await client.get("/jobengine/quotas/summary", headers=factory.headers(tenant))).json()["items"][0]
    assert (item["active"], item["throttled"], item["backpressure"]) == (0, 0, "none")


# -- /jobengine/deadletter/stats and /summary ---------------------------------------------------

# (errorCode, the word that makes the template, entries); "bravo" under two codes is two clusters.
CLUSTERS = [
    ("E_TIMEOUT", "alpha", 5),
    ("E_TIMEOUT", "bravo", 3),
    ("E_IO", "bravo", 3),
    ("E_DENIED", "charlie", 3),
    ("E_IO", "delta", 2),
    ("E_IO", "echo", 2),
    ("E_TIMEOUT", "foxtrot", 2),
    ("E_DENIED", "golf", 2),
    ("E_IO", "hotel", 2),
    ("E_DENIED", "india", 2),
    ("E_IO", "juliet", 2),  # the 11th cluster: same count as the 5th..10th, last by template
    ("E_TIMEOUT", "kilo", 1),
    ("E_IO", "lima", 1),
]
STATUSES = ["pending", "pending", "pending", "replaying", "replayed", "discarded"]
CATEGORIES = ["transient", "permanent", "policy"]


@pytest.fixture
async def dead_letters(runtime, factory):  # type: ignore[no-untyped-def]
    """Entries of 13 clusters in random order, statuses and categories, some within the last
    24 hours and some older (never within minutes of the 24-hour edge)."""
    tenant, rows = await tenant_rows(runtime, factory)
    rng = random.Random(11)
    entries = []
    for code, word, count in CLUSTERS:
        for _ in range(count):
            hours = rng.uniform(0.5, 23) if rng.random() < 0.6 else rng.uniform(25, 200)
            message = f"{word} failed after {rng.randint(1, 9999)} ms for job {uuid.uuid4()}"
            entries.append(
                rows.entry(
                    message,
                    error_code=code,
                    dead_lettered_at=ago(hours=hours),
                    status=rng.choice(STATUSES),
                    category=rng.choice(CATEGORIES),
                )
            )
    rng.shuffle(entries)
    return tenant, await rows.add(*entries)


async def test_dead_letter_stats_totals_by_status_and_category(client, factory, dead_letters):
    tenant, entries = dead_letters
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    by_status = Counter(e.status for e in entries)
    assert body["total"] == len(entries)
    assert body["byStatus"] == {
        s: by_status.get(s, 0) for s in ("pending", "replaying", "replayed", "discarded")
    }
    assert body["byCategory"] == [
        {
            "category": category,
            "count": sum(e.category == category for e in entries),
            "pending": sum(e.category == category and e.status == "pending" for e in entries),
        }
        for category in sorted({e.category for e in entries})
    ]


async def test_dead_letter_stats_oldest_pending_age_and_inflow_of_the_last_day(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    oldest_pending = ago(days=3)
    await rows.add(
        rows.entry(dead_lettered_at=ago(days=10), status="discarded"),  # older, but not pending
        rows.entry(dead_lettered_at=ago(days=9), status="replayed"),
        rows.entry(dead_lettered_at=oldest_pending, status="pending"),
        rows.entry(dead_lettered_at=ago(days=2), status="pending"),
        rows.entry(dead_lettered_at=ago(hours=25), status="pending"),  # just outside the day
        rows.entry(dead_lettered_at=ago(hours=23), status="replaying"),
        rows.entry(dead_lettered_at=ago(hours=1), status="discarded"),
        rows.entry(dead_lettered_at=ago(minutes=5), status="pending"),
    )
    before = datetime.now(UTC)
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    after = datetime.now(UTC)
    assert datetime.fromisoformat(body["oldestPendingAt"]) == oldest_pending
    age = body["oldestPendingAgeSeconds"]
    assert (
        int((before - oldest_pending).total_seconds()) - 1
        <= age
        <= int((after - oldest_pending).total_seconds())
    )
    assert body["inflowLast24h"] == 3  # every status counts as inflow


async def test_dead_letter_stats_without_pending_entries_has_no_oldest_pending(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(rows.entry(status="discarded", dead_lettered_at=ago(days=30)))
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    assert (body["oldestPendingAt"], body["oldestPendingAgeSeconds"], body["inflowLast24h"]) == (
        None,
        None,
        0,
    )
    assert body["byStatus"]["discarded"] == body["total"] == 1


async def test_top_clusters_are_the_ten_largest_by_error_code_and_template(client, factory, dead_letters):
    tenant, entries = dead_letters
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for entry in entries:
        groups[(entry.error_code, error_template(entry.message))].append(entry)
    assert len(groups) == len(CLUSTERS)  # messages of one cluster differ only in masked parts
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][1], kv[0][0]))[:10]

    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    clusters = body["topClusters"]
    assert [(c["errorCode"], c["template"], c["count"]) for c in clusters] == [
        (code, template, len(members)) for (code, template), members in ranked
    ]
    for cluster, ((_, _), members) in zip(clusters, ranked):
        newest = sorted(members, key=lambda e: (e.dead_lettered_at, e.entry_id), reverse=True)
        assert cluster["sampleEntryIds"] == [e.entry_id for e in newest[:3]]
        assert cluster["pending"] == sum(e.status == "pending" for e in members)
        assert datetime.fromisoformat(cluster["firstSeen"]) == min(e.dead_lettered_at for e in members)
        assert datetime.fromisoformat(cluster["lastSeen"]) == max(e.dead_lettered_at for e in members)
    assert clusters[0]["template"] == "alpha failed after <n> ms for job <uuid>"
    assert "juliet" not in {c["template"].split()[0] for c in clusters}


async def test_top_clusters_group_messages_that_differ_only_in_masked_parts(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    messages = [
        "GET https://api.example.com/v1/items/17 returned 503 at 2026-01-01T10:00:00Z",
        "GET https://api.example.com/v1/items/9000 returned 502 at 2026-02-11T01:02:03Z",
        "GET http://10.0.0.7:8080/x returned 500 at 2025-12-31T23:59:59Z",
    ]
    await rows.add(
        *(rows.entry(m, error_code="E_HTTP") for m in messages), rows.entry("disk full", error_code="E_HTTP")
    )
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    assert [(c["template"], c["count"]) for c in body["topClusters"]] == [
        ("GET <url> returned <n> at <timestamp>", 3),
        ("disk full", 1),
    ]


async def test_dead_letter_summary_groups_by_category_and_error_code(client, factory, dead_letters):
    tenant, entries = dead_letters
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for entry in entries:
        groups[(entry.category, entry.error_code)].append(entry)
    walked = await walk(
        client, "/jobengine/deadletter/summary", factory.headers(tenant, scope=OPERATE), limit=2
    )
    assert [(g["category"], g["errorCode"], g["total"], g["pending"]) for g in walked] == [
        (category, code, len(members), sum(e.status == "pending" for e in members))
        for (category, code), members in sorted(groups.items())
    ]
    for group in walked:
        members = groups[(group["category"], group["errorCode"])]
        assert datetime.fromisoformat(group["firstDeadLetteredAt"]) == min(
            e.dead_lettered_at for e in members
        )
        assert datetime.fromisoformat(group["lastDeadLetteredAt"]) == max(e.dead_lettered_at for e in members)

"""Soak: a bounded mixed workload at a fixed rate against two gateway processes and a worker.

    .venv/bin/python bench/soak.py [--seconds 300] [--rate 50] [--warmup 30] [--max-in-flight 64]

In the throwaway environment the benchmarks share (``bench_environment`` of
``bench/run_foundation.py``: its own database, Redis prefix and folder) it seeds the foundation's
100,000 sources, a few thousand pending dead-letter entries of ``demo.noop`` and eight quotas, and
starts two ``jobgate serve`` processes on two ports (two replicas behind a proxy: the client
alternates between them) and one ``jobgate worker``, so that replayed jobs really run.

The load is open-loop: request ``i`` is sent at ``start + i / rate`` whether or not earlier ones
were answered, with at most ``--max-in-flight`` outstanding (a request that would exceed the
bound is counted as skipped, not queued). The mix: list reads (sources, quotas, jobs, dead
letters, audit, the summaries and stats), polling with ``If-None-Match`` (mostly 304), quota
changes (PUT with ``If-Match``, pause, resume; reason, ticket, ``Idempotency-Key``; one change in
flight per quota, so the client knows the state each quota must end in), single replays of
distinct pending entries, a retry of an earlier replay with its ``Idempotency-Key`` (must answer
the first job), a replay of an entry already replayed (must be 409) and batch replays.

Afterwards, once the worker has run the replayed jobs, it checks in the database: every replay
the client saw accepted produced exactly one job (the one the answer named) and its entry is
replaying or replayed; no entry has two replay jobs and none has a job the client never saw
accepted; every mutation answered has exactly one audit row (matched by its trace id) with the
status the client saw and its Idempotency-Key; each quota is in the state of the last change
applied. It counts 5xx (must be zero) and transport errors, and samples the RSS (VmRSS) of each
gateway process (the granian parent and its worker), and of the job worker, every 2 s: growth is
the median of the last minute minus the median of the minute after the warm-up.

Prints a table per route (count, p50, p99, max, status mix) and the checks; writes
``bench/results/soak-*.json`` (not versioned). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run_foundation as rf

SCOPES = "orch:read orch:quota orch:operate orch:backfill"
QUOTAS = 8
BATCH_FRESH = 10
SAMPLE_SECONDS = 2.0
REQUEST_TIMEOUT = 30.0
PROBLEM_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback")

# Share of the requests per kind; replays draw distinct pending entries.
MIX = {
    "read": 0.42,
    "poll": 0.28,
    "quota_change": 0.12,
    "replay": 0.11,
    "replay_retry": 0.02,
    "replay_again": 0.02,
    "batch_replay": 0.03,
}

READS = [
    ("GET /jobengine/sources", "/jobengine/sources?limit=50"),
    ("GET /jobengine/sources", "/jobengine/sources?limit=50&sourceType=cron&enabled=true"),
    ("GET /jobengine/quotas", "/jobengine/quotas"),
    ("GET /jobengine/quotas/summary", "/jobengine/quotas/summary"),
    ("GET /jobengine/jobs", "/jobengine/jobs?limit=50"),
    ("GET /jobengine/jobs/summary", "/jobengine/jobs/summary"),
    ("GET /jobengine/deadletter", "/jobengine/deadletter?limit=50&status=pending"),
    ("GET /jobengine/deadletter", "/jobengine/deadletter?limit=50"),
    ("GET /jobengine/deadletter/stats", "/jobengine/deadletter/stats"),
    ("GET /jobengine/deadletter/summary", "/jobengine/deadletter/summary"),
    ("GET /jobengine/audit", "/jobengine/audit?limit=50"),
]  # fmt: skip


# --- data --------------------------------------------------------------------------------------


def entries_needed(rate: float, seconds: int) -> int:
    per_second = rate * (MIX["replay"] + MIX["batch_replay"] * BATCH_FRESH)
    return int(per_second * seconds * 1.3) + 200


async def seed_entries(dsn: str, tenant_id: int, entries: int) -> None:
    """``entries`` failed ``demo.noop`` jobs and their pending dead-letter entries, spread over
    the last 10 hours in 50 error clusters, three categories and 50 sources (as
    bench/replay_pending.py builds them). None of the sources is on the first page of sources, so
    replays (which count jobs on their source) leave that page's ETag alone."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO jobs (tenant_id, job_id, source_id, job_type, payload, priority, status, attempt, "
            "max_attempts, run_after, cancel_requested, created_at, updated_at, finished_at) "
            "SELECT $1, 'job-' || n, 'src-0999' || (50 + n % 50), 'demo.noop', jsonb_build_object('n', n), 0, 'failed', 3, 3, "
            "now() - interval '11 hours', false, now() - interval '11 hours', now(), now() "
            "FROM generate_series(1, $2) AS n",
            tenant_id,
            entries,
        )
        await connection.execute(
            "INSERT INTO dead_letter_entries (tenant_id, entry_id, job_id, job_type, source_id, category, "
            "error_code, message, error_template, template_hash, payload, attempts, status, replay_count, "
            "first_dead_lettered_at, dead_lettered_at, updated_at) "
            "SELECT $1, 'dle-' || lpad(n::text, 7, '0'), 'job-' || n, 'demo.noop', 'src-0999' || (50 + n % 50), "
            "(ARRAY['transient', 'upstream', 'validation'])[1 + n % 3], 'soak.error-' || (n % 50), "
            "'upstream timed out after ' || n || ' ms', 'upstream timed out after <n> ms', "
            "lpad(to_hex(n % 50), 16, '0'), jsonb_build_object('n', n), 3, 'pending', 0, "
            "now() - interval '10 hours' * (n::double precision / $2), "
            "now() - interval '10 hours' * (n::double precision / $2), now() "
            "FROM generate_series(1, $2) AS n",
            tenant_id,
            entries,
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


# --- memory ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemorySampler(threading.Thread):
    """VmRSS of every process of each server's tree (the server and its children), every 2 s."""

    def __init__(self, servers: list[rf.Server], started: float) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.started = started
        self.samples: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.halt = threading.Event()

    def processes(self) -> dict[str, int]:
        named: dict[str, int] = {}
        for server in self.servers:
            assert server.process is not None
            named[f"{server.name} (pid {server.process.pid})"] = server.process.pid
            for child in server.worker_pids():
                named[f"{server.name} child (pid {child})"] = child
        return named

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_SECONDS):
            at = time.monotonic() - self.started
            for name, pid in self.processes().items():
                kb = rss_kb(pid)
                if kb is not None:
                    self.samples[name].append((at, kb))

    def growth(self, warmup: float, end: float, window: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, samples in self.samples.items():
            early = [kb for at, kb in samples if warmup <= at < warmup + window]
            late = [kb for at, kb in samples if end - window <= at <= end]
            if not early or not late:
                continue
            out[name] = {
                "post_warmup_median_mb": round(statistics.median(early) / 1024, 1),
                "last_window_median_mb": round(statistics.median(late) / 1024, 1),
                "growth_mb": round((statistics.median(late) - statistics.median(early)) / 1024, 1),
                "max_mb": round(max(kb for _, kb in samples) / 1024, 1),
                "samples": len(samples),
            }
        return out


# --- what the database waits for --------------------------------------------------------------


async def sample_database_waits(dsn: str, halt: asyncio.Event) -> dict[str, Any]:
    """Once a second, the benchmark database's active backends by wait event (``Lock:tuple`` and
    ``Lock:transactionid`` are row locks: writers queueing behind one another), and which
    statements wait for a lock."""
    connection = await asyncpg.connect(dsn)
    waits: Counter[str] = Counter()
    waiting_statements: Counter[str] = Counter()
    samples = busiest = 0
    try:
        while not halt.is_set():
            rows = await connection.fetch(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait, "
                "regexp_replace(left(query, 70), '\\s+', ' ', 'g') AS statement FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
            )
            samples += 1
            busiest = max(busiest, len(rows))
            waits.update(r["wait"] for r in rows)
            waiting_statements.update(r["statement"] for r in rows if r["wait"].startswith("Lock:"))
            try:
                await asyncio.wait_for(halt.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await connection.close()
    return {
        "samples": samples,
        "most_active_backends": busiest,
        "mean_active_backends_by_wait": {w: round(n / max(1, samples), 2) for w, n in waits.most_common(12)},
        "statements_waiting_for_a_lock": dict(waiting_statements.most_common(8)),
    }


# --- the workload ------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    route: str
    gateway: int
    scheduled: float
    lag_ms: float
    status: int | None = None  # None: transport error
    latency_ms: float = 0.0
    error: str | None = None
    trace_id: str | None = None
    idempotency_key: str | None = None
    mutation: bool = False


@dataclass
class QuotaModel:
    quota_id: str
    job_type: str
    max_active: int
    max_per_hour: int
    burst: int
    etag: str
    paused: bool = False
    paused_reason: str | None = None
    busy: bool = False
    uncertain: bool = False  # a change without an answer: its state is unknown


@dataclass
class Workload:
    clients: list[httpx.AsyncClient]
    auth: dict[str, str]
    tenant_id: int
    entry_count: int
    entries: list[str]  # pending entries not yet chosen, popped by the replays
    quotas: list[QuotaModel]
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)  # entry -> job the answer named
    ambiguous: set[str] = field(default_factory=set)  # entries of replays without an answer
    replay_requests: list[tuple[str, dict[str, str], str]] = field(default_factory=list)  # entry, headers, job
    retries: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)

    async def send(
        self, kind: str, route: str, index: int, scheduled: float, method: str, path: str,
        headers: dict[str, str] | None = None, body: Any = None, expect: tuple[int, ...] = (200,),
    ) -> tuple[Outcome, httpx.Response | None]:  # fmt: skip
        gateway = index % len(self.clients)
        mutation = method != "GET"
        trace = f"soak-{index:07d}-{uuid.uuid4().hex[:8]}"
        sent_headers = {**self.auth, "X-Stella-Trace-Id": trace, **(headers or {})}
        started = time.monotonic()
        outcome = Outcome(kind, route, gateway, scheduled, 1000 * (started - scheduled), trace_id=trace,
                          idempotency_key=sent_headers.get("Idempotency-Key"), mutation=mutation)  # fmt: skip
        response = None
        try:
            response = await self.clients[gateway].request(
                method, path, headers=sent_headers, json=body, timeout=REQUEST_TIMEOUT
            )
            outcome.status = response.status_code
            if response.headers.get("x-stella-trace-id") != trace:
                self.unexpected.append({"route": route, "problem": "trace id not echoed", "trace": trace})
            if response.status_code not in expect:
                self.unexpected.append(
                    {"route": route, "status": response.status_code, "expected": list(expect),
                     "trace": trace, "body": response.text[:300]}
                )  # fmt: skip
        except httpx.HTTPError as exc:
            outcome.error = type(exc).__name__
        outcome.latency_ms = 1000 * (time.monotonic() - started)
        self.outcomes.append(outcome)
        return outcome, response

    def mutation_headers(self, index: int, reason: str) -> dict[str, str]:
        return {
            "X-Stella-Operator-Reason": f"soak {reason} #{index}",
            "X-Stella-Operator-Ticket": f"SOAK-{index}",
            "Idempotency-Key": f"soak-{index}-{uuid.uuid4().hex[:12]}",
        }

    async def read(self, index: int, scheduled: float) -> None:
        route, path = self.rng.choice(READS)
        if self.rng.random() < 0.1:
            entry = f"dle-{self.rng.randint(1, self.entry_count):07d}"
            route, path = "GET /jobengine/deadletter/{entryId}", f"/jobengine/deadletter/{entry}"
        await self.send("read", route, index, scheduled, "GET", path)

    async def poll(self, index: int, scheduled: float) -> None:
        # Weighted towards what consoles poll and what rarely changes: most answers are 304.
        targets = [
            ("GET /jobengine/sources (poll)", "/jobengine/sources?limit=50"),
            ("GET /jobengine/sources (poll)", "/jobengine/sources?limit=50"),
            ("GET /admin/t/{tenant}/operations/progress (poll)", f"/admin/t/{self.tenant_id}/operations/progress"),
            ("GET /admin/t/{tenant}/operations/progress (poll)", f"/admin/t/{self.tenant_id}/operations/progress"),
            ("GET /jobengine/quotas/{quotaId} (poll)", f"/jobengine/quotas/{self.quotas[0].quota_id}"),
            ("GET /jobengine/deadletter/summary (poll)", "/jobengine/deadletter/summary"),
        ]  # fmt: skip
        route, path = self.rng.choice(targets)
        etag = self.etags.get(path)
        headers = {"If-None-Match": etag} if etag else {}
        _, response = await self.send("poll", route, index, scheduled, "GET", path, headers, expect=(200, 304))
        if response is not None and response.status_code == 200 and "etag" in response.headers:
            self.etags[path] = response.headers["etag"]

    async def quota_change(self, index: int, scheduled: float) -> None:
        free = [q for q in self.quotas if not q.busy and not q.uncertain]
        if not free:  # every quota has a change in flight: read one instead, keep the rate
            await self.send("read", "GET /jobengine/quotas", index, scheduled, "GET", "/jobengine/quotas")
            return
        quota = self.rng.choice(free)
        quota.busy = True
        try:
            roll = self.rng.random()
            headers = self.mutation_headers(index, "quota change")
            path = f"/jobengine/quotas/{quota.quota_id}"
            if roll < 0.5:
                per_hour = self.rng.randint(100, 100_000)
                limits = {"maxActive": self.rng.randint(1, 1000), "maxPerHour": per_hour,
                          "burst": self.rng.randint(1, min(per_hour, 5000))}  # fmt: skip
                _, response = await self.send(
                    "quota_change", "PUT /jobengine/quotas/{quotaId}", index, scheduled, "PUT", path,
                    {**headers, "If-Match": quota.etag}, limits,
                )  # fmt: skip
                if response is not None and response.status_code == 200:
                    quota.max_active, quota.max_per_hour, quota.burst = (
                        limits["maxActive"], limits["maxPerHour"], limits["burst"]
                    )
            else:
                # Mostly a toggle; one in five repeats the current state (both are idempotent).
                pause = not quota.paused if roll < 0.9 else quota.paused
                action = "pause" if pause else "resume"
                _, response = await self.send(
                    "quota_change", f"POST /jobengine/quotas/{{quotaId}}/{action}", index, scheduled, "POST",
                    f"{path}/{action}", headers,
                )  # fmt: skip
                if response is not None and response.status_code == 200:
                    if pause and not quota.paused:
                        quota.paused_reason = headers["X-Stella-Operator-Reason"]
                    if not pause:
                        quota.paused_reason = None
                    quota.paused = pause
            if response is None:
                quota.uncertain = True
            elif response.status_code == 200:
                quota.etag = response.headers["etag"]
        finally:
            quota.busy = False

    async def replay(self, index: int, scheduled: float) -> None:
        if not self.entries:
            await self.read(index, scheduled)
            return
        entry = self.entries.pop()
        headers = self.mutation_headers(index, "replay")
        _, response = await self.send(
            "replay", "POST /jobengine/deadletter/{entryId}/replay", index, scheduled, "POST",
            f"/jobengine/deadletter/{entry}/replay", headers, expect=(202,),
        )  # fmt: skip
        if response is None:
            self.ambiguous.add(entry)
        elif response.status_code == 202:
            job = response.json()["jobId"]
            self.accepted[entry] = job
            self.replay_requests.append((entry, headers, job))

    async def replay_retry(self, index: int, scheduled: float) -> None:
        """The same request with the same Idempotency-Key: the first answer again, no second job."""
        if not self.replay_requests:
            await self.read(index, scheduled)
            return
        entry, headers, job = self.rng.choice(self.replay_requests)
        _, response = await self.send(
            "replay_retry", "POST /jobengine/deadletter/{entryId}/replay (same key)", index, scheduled, "POST",
            f"/jobengine/deadletter/{entry}/replay", headers, expect=(202,),
        )  # fmt: skip
        if response is not None and response.status_code == 202:
            self.retries.append({
                "entry": entry, "job": job, "answered_job": response.json().get("jobId"),
                "replayed_header": response.headers.get("idempotent-replayed"),
            })  # fmt: skip

    async def replay_again(self, index: int, scheduled: float) -> None:
        """A new replay of an entry already replayed: 409, never a second job."""
        if not self.accepted:
            await self.read(index, scheduled)
            return
        entry = self.rng.choice(list(self.accepted))
        await self.send(
            "replay_again", "POST /jobengine/deadletter/{entryId}/replay (again)", index, scheduled, "POST",
            f"/jobengine/deadletter/{entry}/replay", self.mutation_headers(index, "replay again"), expect=(409,),
        )  # fmt: skip

    async def batch_replay(self, index: int, scheduled: float) -> None:
        if len(self.entries) < BATCH_FRESH:
            await self.read(index, scheduled)
            return
        fresh = [self.entries.pop() for _ in range(BATCH_FRESH)]
        ids = [*fresh, fresh[0], f"dle-missing-{index}"]  # a duplicate and an unknown id
        if self.accepted:
            ids.append(self.rng.choice(list(self.accepted)))
        _, response = await self.send(
            "batch_replay", "POST /jobengine/deadletter/replay/batch", index, scheduled, "POST",
            "/jobengine/deadletter/replay/batch", self.mutation_headers(index, "batch replay"), {"entryIds": ids},
        )  # fmt: skip
        if response is None:
            self.ambiguous.update(fresh)
            return
        if response.status_code != 200:
            return
        results = {r["entryId"]: r for r in response.json()["results"]}
        for entry in fresh:
            result = results.get(entry, {})
            if result.get("outcome") == "replayed" and result.get("jobId"):
                self.accepted[entry] = result["jobId"]
            else:
                self.unexpected.append({"route": "batch", "problem": "fresh entry not replayed", "result": result})
        if len(results) != len(ids) - 1 or results[f"dle-missing-{index}"]["outcome"] != "not_found":
            self.unexpected.append({"route": "batch", "problem": "outcomes", "results": list(results.values())})

    async def one(self, kind: str, index: int, scheduled: float) -> None:
        await getattr(self, kind)(index, scheduled)


async def drive(workload: Workload, rate: float, seconds: int, max_in_flight: int) -> dict[str, Any]:
    kinds, weights = list(MIX), list(MIX.values())
    pending: set[asyncio.Task[None]] = set()
    skipped = 0
    start = time.monotonic()
    total = int(rate * seconds)
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_in_flight:
            skipped += 1
            continue
        kind = workload.rng.choices(kinds, weights)[0]
        task = asyncio.create_task(workload.one(kind, index, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if index % max(1, int(rate * 30)) == 0 and index:
            print(f"  {index / rate:5.0f} s  sent {index:,}, in flight {len(pending)}", flush=True)
    sent_until = time.monotonic() - start
    if pending:
        await asyncio.wait(pending, timeout=REQUEST_TIMEOUT + 5)
    return {"scheduled": total, "skipped_in_flight_bound": skipped, "send_span_s": round(sent_until, 1)}


# --- checks in the database --------------------------------------------------------------------


async def wait_for_replayed_jobs(dsn: str, tenant_id: int, timeout: float) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        while True:
            open_jobs = await connection.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND replay_of_entry_id IS NOT NULL "
                "AND status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')",
                tenant_id,
            )
            if open_jobs == 0 or time.monotonic() - started > timeout:
                return {"open_replay_jobs": int(open_jobs), "waited_s": round(time.monotonic() - started, 1)}
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def check_database(dsn: str, workload: Workload, setup_traces: set[str]) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        tenant_id = workload.tenant_id
        jobs = await connection.fetch(
            "SELECT replay_of_entry_id AS entry, job_id, status, attempt FROM jobs "
            "WHERE tenant_id = $1 AND replay_of_entry_id IS NOT NULL",
            tenant_id,
        )
        entries = {
            r["entry_id"]: r
            for r in await connection.fetch(
                "SELECT entry_id, status, replay_count, last_replay_job_id FROM dead_letter_entries "
                "WHERE tenant_id = $1",
                tenant_id,
            )
        }
        audit = await connection.fetch(
            "SELECT trace_id, result_status, idempotency_key, result_code FROM audit_log WHERE tenant_id = $1",
            tenant_id,
        )
        quotas = {
            r["quota_id"]: r
            for r in await connection.fetch(
                "SELECT quota_id, max_active, max_per_hour, burst, paused, paused_reason FROM quotas "
                "WHERE tenant_id = $1",
                tenant_id,
            )
        }
    finally:
        await connection.close()

    jobs_of: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for job in jobs:
        jobs_of[job["entry"]].append(job)
    replay_problems: list[dict[str, Any]] = []
    for entry, job_id in workload.accepted.items():
        found = jobs_of.get(entry, [])
        state = entries[entry]
        if [j["job_id"] for j in found] != [job_id]:
            replay_problems.append({"entry": entry, "answered_job": job_id, "jobs": [j["job_id"] for j in found]})
        elif state["status"] not in ("replaying", "replayed") or state["replay_count"] != 1:
            replay_problems.append({"entry": entry, "status": state["status"], "replay_count": state["replay_count"]})
    doubled = {e: len(js) for e, js in jobs_of.items() if len(js) > 1}
    unseen = sorted(set(jobs_of) - set(workload.accepted) - workload.ambiguous)
    retry_problems = [r for r in workload.retries if r["answered_job"] != r["job"] or r["replayed_header"] != "true"]

    rows_of: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in audit:
        rows_of[row["trace_id"]].append(row)
    audit_problems: list[dict[str, Any]] = []
    answered = [o for o in workload.outcomes if o.mutation and o.status is not None]
    for o in answered:
        rows = rows_of.get(o.trace_id or "", [])
        if len(rows) != 1 or rows[0]["result_status"] != o.status or rows[0]["idempotency_key"] != o.idempotency_key:
            audit_problems.append({
                "trace": o.trace_id, "route": o.route, "status": o.status, "rows": [dict(r) for r in rows],
            })  # fmt: skip
    known = {o.trace_id for o in workload.outcomes if o.mutation} | setup_traces
    unexplained = sorted(t for t in rows_of if t not in known)

    quota_problems: list[dict[str, Any]] = []
    for q in workload.quotas:
        if q.uncertain:
            continue
        row = quotas[q.quota_id]
        expected = (q.max_active, q.max_per_hour, q.burst, q.paused, q.paused_reason)
        actual = (row["max_active"], row["max_per_hour"], row["burst"], row["paused"], row["paused_reason"])
        if expected != actual:
            quota_problems.append({"quota": q.quota_id, "expected": expected, "actual": actual})

    statuses = Counter(j["status"] for j in jobs)
    return {
        "replays_accepted": len(workload.accepted),
        "replay_jobs_in_database": len(jobs),
        "replay_jobs_by_status": dict(statuses),
        # A worker that could not record an outcome leaves the lease to expire: the job runs again.
        "replay_jobs_by_attempt": dict(sorted(Counter(j["attempt"] for j in jobs).items())),
        "accepted_replays_not_exactly_one_job": replay_problems[:20],
        "accepted_replays_not_exactly_one_job_count": len(replay_problems),
        "entries_with_two_or_more_replay_jobs": doubled,
        "replay_jobs_the_client_never_saw_accepted": unseen[:20],
        "replay_jobs_the_client_never_saw_accepted_count": len(unseen),
        "replays_without_answer": len(workload.ambiguous),
        "idempotent_retries": len(workload.retries),
        "idempotent_retries_not_answering_the_first_job": retry_problems[:20],
        "mutations_answered": len(answered),
        "mutations_without_exactly_one_matching_audit_row": audit_problems[:20],
        "mutations_without_exactly_one_matching_audit_row_count": len(audit_problems),
        "audit_rows_of_unknown_requests": len(unexplained),
        "quotas_checked": sum(not q.uncertain for q in workload.quotas),
        "quotas_not_in_last_applied_state": quota_problems,
    }


def side_effects_ok(checks: dict[str, Any]) -> bool:
    return not (
        checks["accepted_replays_not_exactly_one_job_count"]
        or checks["entries_with_two_or_more_replay_jobs"]
        or checks["replay_jobs_the_client_never_saw_accepted_count"]
        or checks["idempotent_retries_not_answering_the_first_job"]
        or checks["mutations_without_exactly_one_matching_audit_row_count"]
        or checks["audit_rows_of_unknown_requests"]
        or checks["quotas_not_in_last_applied_state"]
    )


# --- summaries ---------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]


def per_route(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.route].append(o)
    table: dict[str, dict[str, Any]] = {}
    for route in sorted(groups):
        group = groups[route]
        answered = [o.latency_ms for o in group if o.status is not None]
        table[route] = {
            "count": len(group),
            "p50_ms": round(percentile(answered, 0.50), 1) if answered else None,
            "p99_ms": round(percentile(answered, 0.99), 1) if answered else None,
            "max_ms": round(max(answered), 1) if answered else None,
            "statuses": dict(sorted(Counter(str(o.status or o.error) for o in group).items())),
        }
    return table


def print_report(result: dict[str, Any]) -> None:
    print(f"\n{'route':<58}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses")
    for route, row in result["routes"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
        print(f"{route:<58}{row['count']:>7}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}  {statuses}")
    load = result["load"]
    print(
        f"\n{load['answered']:,} answered of {load['scheduled']:,} scheduled ({load['skipped_in_flight_bound']} skipped at "
        f"the in-flight bound) at {load['achieved_rate']:.1f} req/s; 5xx: {load['status_5xx']}; transport errors: "
        f"{load['transport_errors']}; unexpected answers: {load['unexpected_answers']}; send lag p99 "
        f"{load['send_lag_p99_ms']} ms"
    )
    print(f"CPU seconds during the load: {load['cpu_seconds']} over {load['memory_window_s']['end']} s")
    checks = result["side_effects"]
    print(
        f"replays accepted {checks['replays_accepted']:,}, replay jobs in the database {checks['replay_jobs_in_database']:,} "
        f"{checks['replay_jobs_by_status']}, by attempt {checks['replay_jobs_by_attempt']}; not exactly one job: {checks['accepted_replays_not_exactly_one_job_count']}; "
        f"entries with two jobs: {len(checks['entries_with_two_or_more_replay_jobs'])}; jobs never seen accepted: "
        f"{checks['replay_jobs_the_client_never_saw_accepted_count']}; idempotent retries {checks['idempotent_retries']} "
        f"(wrong: {len(checks['idempotent_retries_not_answering_the_first_job'])})"
    )
    print(
        f"mutations answered {checks['mutations_answered']:,}, without exactly one matching audit row: "
        f"{checks['mutations_without_exactly_one_matching_audit_row_count']}; audit rows of unknown requests: "
        f"{checks['audit_rows_of_unknown_requests']}; quotas checked {checks['quotas_checked']}, not in the last "
        f"applied state: {len(checks['quotas_not_in_last_applied_state'])}"
    )
    waits = result["database_waits"]
    print(
        f"database: at most {waits['most_active_backends']} active backends; mean by wait: "
        f"{waits['mean_active_backends_by_wait']}"
    )
    for statement, count in waits["statements_waiting_for_a_lock"].items():
        print(f"  waiting for a lock in {count:>5} samples: {statement}")
    print(f"server log lines at WARNING or above: {result['server_logs']['problems']}")
    print(f"\n{'process':<40}{'post-warm-up MB':>16}{'last window MB':>16}{'growth MB':>11}{'max MB':>9}")
    for name, row in result["memory"].items():
        print(
            f"{name:<40}{row['post_warmup_median_mb']:>16}{row['last_window_median_mb']:>16}"
            f"{row['growth_mb']:>11}{row['max_mb']:>9}"
        )
    verdict = result["verdict"]
    print("\n" + "; ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in verdict.items()))


# --- the run -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """``rf.machine()`` (it also records wrk's version), or without wrk, which the soak does not use."""
    if shutil.which("wrk"):
        return rf.machine()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"revision": {"commit": commit.stdout.strip()}, "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(), "python": sys.version.split()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="load duration (default 300)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, both gateways (default 50)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds excluded from memory growth (default 30)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="bound of outstanding requests (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the mix (default 1)")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="database connections per gateway (default 20, the product's)"
    )
    args = parser.parse_args()
    if args.seconds > 3000:
        parser.error("--seconds at most 3000: the benchmark token (rf.signing_key) is valid for one hour")
    with rf.bench_environment() as env:
        document = run(args, env)
    sys.exit(0 if all(document["verdict"].values()) else 1)


def run(args: argparse.Namespace, env: rf.BenchEnvironment) -> dict[str, Any]:
    begun = time.monotonic()
    pg_dsn = rf.with_database(env.admin_url, env.db_name)
    jwks_path, token = rf.signing_key(env.workdir, scope=SCOPES)
    _, gateway_env = rf.gateway_settings(pg_dsn, env.redis_url, env.prefix, jwks_path, env.workdir)
    # The product's pool size by default; the rate limit is raised by gateway_settings: the soak
    # measures the gateway, not the per-tenant budget (600/minute by default).
    gateway_env["JOBGATE_DATABASE_POOL_SIZE"] = str(args.pool_size)
    print(f"database {env.db_name}, Redis prefix {env.prefix}")
    rf.prepare_tenant(gateway_env)
    tenant_id = asyncio.run(rf.seed_sources(pg_dsn))
    entry_count = entries_needed(args.rate, args.seconds)
    asyncio.run(seed_entries(pg_dsn, tenant_id, entry_count))
    print(f"seeded {rf.SOURCES:,} sources and {entry_count:,} pending dead-letter entries of demo.noop")

    def server(name: str, *argv: str) -> rf.Server:
        port = rf.free_port()
        s = rf.Server(name, port, [a.replace("{port}", str(port)) for a in argv], gateway_env, env.workdir / f"{name}.log")
        env.servers.append(s)
        return s

    serve = (rf.PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1")
    gateways = [server("gateway-a", *serve), server("gateway-b", *serve)]
    worker = server("worker", rf.PYTHON, "-m", "app.cli", "worker", "--concurrency", "8", "--worker-id", "soak")
    worker.env = {**gateway_env, "JOBGATE_DATABASE_POOL_SIZE": "8"}  # its 8 jobs at once, the steps, the claims
    for s in env.servers:
        s.start()
    for g in gateways:
        g.wait_ready("/readyz")

    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": rf.TENANT}
    result = asyncio.run(soak(args, pg_dsn, tenant_id, entry_count, gateways, worker, auth))
    for s in env.servers:
        assert s.process is not None
        result["load"].setdefault("exited_early", [])
        if s.process.poll() is not None:
            result["load"]["exited_early"].append(s.name)
    result["verdict"]["processes_alive"] = not result["load"]["exited_early"]

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = rf.BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    result["server_logs"] = keep_logs(env.servers, results_dir / f"soak-{stamp}-logs")
    document = {
        "benchmark": "soak",
        "when": stamp,
        "command": " ".join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]]),
        "settings": {"seconds": args.seconds, "rate": args.rate, "warmup_s": args.warmup,
                     "max_in_flight": args.max_in_flight, "seed": args.seed, "mix": MIX,
                     "gateway_pool_size": args.pool_size, "worker_pool_size": 8,
                     "entries_seeded": entry_count, "sources_seeded": rf.SOURCES, "quotas": QUOTAS},
        "machine": {**machine(), "load_average_at_start": result.pop("load_average_at_start")},
        **result,
        "elapsed_s": round(time.monotonic() - begun, 1),
    }  # fmt: skip
    out = results_dir / f"soak-{stamp}.json"
    out.write_text(json.dumps(document, indent=2, default=str))
    print_report(document)
    print(
        f"load average at start {document['machine']['load_average_at_start']}, at end "
        f"{document['machine']['load_average_at_end']}\nresults: {out.relative_to(ROOT)}  "
        f"({document['elapsed_s']:.0f} s in all)"
    )
    return document


def keep_logs(servers: list[rf.Server], folder: Path) -> dict[str, Any]:
    """Copies the servers' logs (the work folder is removed at the end) and counts the lines that
    report a problem."""
    folder.mkdir(exist_ok=True)
    problems: dict[str, int] = {}
    for server in servers:
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        (folder / server.log.name).write_text(text)
        problems[server.name] = sum(
            1 for line in text.splitlines() if PROBLEM_LINE.search(line)
        )
    return {"folder": str(folder.relative_to(ROOT)), "problems": problems}


async def create_quotas(client: httpx.AsyncClient, auth: dict[str, str]) -> tuple[list[QuotaModel], set[str]]:
    quotas, traces = [], set()
    for n in range(QUOTAS):
        trace = f"soak-setup-{n:04d}"
        limits = {"jobType": f"soak.quota-{n}", "maxActive": 10, "maxPerHour": 1000, "burst": 100}
        response = await client.post(
            "/jobengine/quotas", json=limits,
            headers={**auth, "X-Stella-Trace-Id": trace, "X-Stella-Operator-Reason": "soak setup"},
        )  # fmt: skip
        if response.status_code != 201:
            rf.fail(f"creating a quota answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        quotas.append(QuotaModel(body["quotaId"], body["jobType"], 10, 1000, 100, response.headers["etag"]))
        traces.add(trace)
    return quotas, traces


async def soak(
    args: argparse.Namespace, pg_dsn: str, tenant_id: int, entry_count: int,
    gateways: list[rf.Server], worker: rf.Server, auth: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    clients = [httpx.AsyncClient(base_url=g.url, limits=limits) for g in gateways]
    try:
        quotas, setup_traces = await create_quotas(clients[0], auth)
        rng = random.Random(args.seed)
        entries = [f"dle-{n:07d}" for n in range(1, entry_count + 1)]
        rng.shuffle(entries)
        workload = Workload(clients, auth, tenant_id, entry_count, entries, quotas, rng)
        load_at_start = os.getloadavg()
        started = time.monotonic()
        sampler = MemorySampler([*gateways, worker], started)
        sampler.start()
        cpu_before = {s.name: s.cpu_seconds() for s in [*gateways, worker]}
        client_cpu_before = time.process_time()
        print(f"soak: {args.rate:g} req/s for {args.seconds} s over two gateways (load average {load_at_start})")
        halt_waits = asyncio.Event()
        waits_task = asyncio.create_task(sample_database_waits(pg_dsn, halt_waits))
        driven = await drive(workload, args.rate, args.seconds, args.max_in_flight)
        halt_waits.set()
        database_waits = await waits_task
        load_end = time.monotonic() - started
        cpu = {s.name: round(s.cpu_seconds() - cpu_before[s.name], 1) for s in [*gateways, worker]}
        cpu["client (this process)"] = round(time.process_time() - client_cpu_before, 1)
        sampler.halt.set()
        sampler.join()
    finally:
        for client in clients:
            await client.aclose()
    drained = await wait_for_replayed_jobs(pg_dsn, tenant_id, timeout=120)
    checks = await check_database(pg_dsn, workload, setup_traces)
    checks.update(drained)

    warmup = min(args.warmup, args.seconds / 3)
    window = min(60.0, (args.seconds - warmup) / 2)
    memory = sampler.growth(warmup, load_end, window)
    outcomes = workload.outcomes
    answered = [o for o in outcomes if o.status is not None]
    lags = [o.lag_ms for o in outcomes]
    load = {
        **driven,
        "answered": len(answered),
        "achieved_rate": len(outcomes) / max(1e-9, driven["send_span_s"]),
        "status_5xx": sum(1 for o in answered if o.status >= 500),
        "transport_errors": len(outcomes) - len(answered),
        "transport_error_kinds": dict(Counter(o.error for o in outcomes if o.error)),
        "unexpected_answers": len(workload.unexpected),
        "unexpected_samples": workload.unexpected[:20],
        "send_lag_p99_ms": round(percentile(lags, 0.99), 1) if lags else None,
        "per_gateway": dict(Counter(f"gateway-{'ab'[o.gateway]}" for o in outcomes)),
        "poll_304_share": round(
            sum(o.status == 304 for o in outcomes if o.kind == "poll") / max(1, sum(o.kind == "poll" for o in outcomes)), 3
        ),
        "cpu_seconds": cpu,
        "memory_window_s": {"warmup": warmup, "window": window, "end": round(load_end, 1)},
    }  # fmt: skip
    verdict = {
        "zero_5xx": load["status_5xx"] == 0,
        "zero_transport_errors": load["transport_errors"] == 0,
        "answers_as_expected": not workload.unexpected,
        "side_effects_exact": side_effects_ok(checks),
        "replayed_jobs_ran": drained["open_replay_jobs"] == 0,
        "memory_growth_below_20_mb": bool(memory) and all(m["growth_mb"] < 20 for m in memory.values()),
    }
    return {
        "load_average_at_start": load_at_start,
        "routes": per_route(outcomes),
        "load": load,
        "side_effects": checks,
        "database_waits": database_waits,
        "memory": memory,
        "memory_samples": {name: samples for name, samples in sampler.samples.items()},
        "verdict": verdict,
    }


if __name__ == "__main__":
    main()

"""The change feed: revalidation without the database, fan-out to event streams, coalescing, and
the triggers' cost per write, in one command.

    .venv/bin/python bench/change_feed.py [--duration 5] [--rounds 2] [--subscribers 1000] [--revalidation-only]

1. **304 revalidation of an unchanged list** (GET /jobengine/sources?limit=50, If-None-Match of the
   current page) under ``wrk``, beside the framework ceiling (``bench/baseline_static.py``: the same
   page from memory in a bare Litestar handler), in alternating rounds; the target is a ratio of at
   least 0.50. Beside it, a **changed list**: the same request with an ETag that no longer matches
   (answered 200 from the database after the revalidation's check) against the database-bound ceiling
   (``bench/baseline_db.py``: the same keyset query with raw asyncpg); the target is at least 0.80.
   The same read without ``If-None-Match`` runs beside them, to tell the revalidation's share.
2. **Fan-out**: ``--subscribers`` event streams (``GET /jobengine/events``) on one gateway process,
   held by a separate client process; this command commits a source change through its own
   connection (another process) every 300 ms; each subscriber notes when the event arrives. Reports
   p50/p99 commit→delivery over every (change, subscriber) and the gateway process's RSS per idle
   subscriber, and the process's CPU over 31 s (two heartbeats) with no stream and again with every stream open and
   idle (an idle stream should cost heartbeats only). Target p99 ≤ 250 ms.
3. **Burst**: 10,000 jobs each started and finished (20,000 changes) within 10 s, one subscriber
   counting what it receives: coalescing per object within the stream's window.
4. **Trigger cost**: single-row writes committed one by one (INSERT into sources, UPDATE of a job),
   with and without the feed triggers, on the same database.
5. **Stale window** of a write without a response (a worker's outcome, the reconciler): a source of
   the list's first page updated through a separate PostgreSQL connection, then the list revalidated
   in a tight loop with the ETag held before (remembered: answered from memory until the feed
   delivers the change); the time from COMMIT returned to the first 200, p50/p99 over
   ``--stale-trials`` trials. Target p99 ≤ 50 ms.
6. **Worker fan-out**: ``--tenants`` tenants added; the registration of a worker started without
   ``--tenant`` (one ``worker`` event for every tenant), of one restricted to two tenants, and a
   heartbeat (no event), each committed alone.

Everything it creates is removed at the end (``bench_environment``); results go to
``bench/results/change-feed-*.json`` (not versioned).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run_foundation import (  # noqa: E402
    BENCH,
    PYTHON,
    TENANT,
    Load,
    Sessions,
    bench_environment,
    fail,
    gateway_settings,
    load_options,
    machine,
    measure,
    new_server,
    prepare_tenant,
    seed_sources,
    signing_key,
    with_database,
)

PATH = "/jobengine/sources?limit=50"
TARGET_REVALIDATE = 0.50
TARGET_CHANGED = 0.80
TARGET_P99_MS = 250.0
TARGET_STALE_P99_MS = 50.0

# The subscribers' process: N raw HTTP/1.1 streams, every event's arrival time (epoch seconds) by id.
SUBSCRIBERS = r'''
import asyncio, json, sys, time
host, port, token, tenant, count, kinds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
arrivals = {}
opened = 0
async def one(n):
    global opened
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET /jobengine/events?kinds={kinds} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                  f"X-Stella-Tenant: {tenant}\r\nAccept: text/event-stream\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        print("REFUSED", status.decode().strip(), flush=True); return
    opened += 1
    if opened == count:
        print("OPEN", flush=True)
    mine = arrivals.setdefault(n, {})
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"id: "):
            mine[int(line[4:])] = time.time()
async def main():
    tasks = [asyncio.create_task(one(n)) for n in range(count)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("ARRIVALS " + json.dumps({n: a for n, a in arrivals.items()}), flush=True)
    for t in tasks: t.cancel()
asyncio.run(main())
'''


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


IDLE_SECONDS = 31.0  # two heartbeats of every stream (15 s apart)


def cpu_seconds(pids: list[int], seconds: float) -> float:
    """CPU (user + system) the processes spend over the next ``seconds``."""

    def used() -> float:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(seconds)
    return used() - before


class Subscribers:
    def __init__(self, gateway: Any, token: str, count: int, kinds: str = "source,job") -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-c", SUBSCRIBERS, "127.0.0.1", str(gateway.port), token, TENANT, str(count), kinds],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def wait_open(self, timeout: float = 120) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("OPEN"):
                return
            if line.startswith("REFUSED") or not line:
                fail(f"a subscriber was refused: {line.strip()}")
        fail("the subscribers did not all connect")

    def arrivals(self) -> dict[str, dict[str, float]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("ARRIVALS "):
                self.process.wait(30)
                return json.loads(line.removeprefix("ARRIVALS "))
        fail("the subscribers' process printed no arrivals")
        return {}


async def source_change(pg_dsn: str, tenant_id: int, commits: int, spacing: float) -> list[tuple[int, float]]:
    """``commits`` source updates, each committed alone; (the tenant's sequence, commit instant)."""
    connection = await asyncpg.connect(pg_dsn)
    done = []
    try:
        source_id = await connection.fetchval("SELECT source_id FROM sources WHERE tenant_id = $1 LIMIT 1", tenant_id)
        for _ in range(commits):
            await connection.execute("UPDATE sources SET description = $1 WHERE tenant_id = $2 AND source_id = $3",
                                     uuid.uuid4().hex, tenant_id, source_id)
            committed = time.time()
            seq = await connection.fetchval("SELECT version FROM feed_versions WHERE tenant_id = $1 AND kind = ''",
                                            tenant_id)
            done.append((int(seq), committed))
            await asyncio.sleep(spacing)
    finally:
        await connection.close()
    return done


async def burst(pg_dsn: str, tenant_id: int, jobs: int, seconds: float) -> int:
    """``jobs`` jobs inserted, then each started and finished (two statements) within ``seconds``."""
    connection = await asyncpg.connect(pg_dsn)
    try:
        source_id = await connection.fetchval("SELECT source_id FROM sources WHERE tenant_id = $1 LIMIT 1", tenant_id)
        ids = [f"burst-{uuid.uuid4().hex}" for _ in range(jobs)]
        now = datetime.now(UTC)
        await connection.executemany(
            "INSERT INTO jobs (tenant_id, job_id, source_id, job_type, payload, priority, status, attempt, "
            "max_attempts, run_after, cancel_requested, created_at, updated_at) "
            "VALUES ($1, $2, $3, 'demo.noop', '{}', 0, 'leased', 0, 3, $4, false, $4, $4)",
            [(tenant_id, job_id, source_id, now) for job_id in ids],
        )
        started = time.monotonic()
        batch = 50
        for index in range(0, jobs, batch):
            chunk = ids[index:index + batch]
            for status in ("running", "succeeded"):
                await connection.execute("UPDATE jobs SET status = $1 WHERE tenant_id = $2 AND job_id = ANY($3)",
                                         status, tenant_id, chunk)
            pace = started + seconds * (index + batch) / jobs - time.monotonic()
            if pace > 0:
                await asyncio.sleep(pace)
        return 2 * jobs
    finally:
        await connection.close()


async def trigger_cost(pg_dsn: str, tenant_id: int, writes: int) -> dict[str, float]:
    """Milliseconds per single-row committed write, with and without the feed triggers."""
    connection = await asyncpg.connect(pg_dsn)
    out: dict[str, float] = {}
    try:
        job_id = await connection.fetchval("SELECT job_id FROM jobs WHERE tenant_id = $1 LIMIT 1", tenant_id)
        for label, enabled in (("with_feed", True), ("without_feed", False), ("with_feed_again", True)):
            action = "ENABLE" if enabled else "DISABLE"
            await connection.execute(f"ALTER TABLE sources {action} TRIGGER feed_sources_insert")
            await connection.execute(f"ALTER TABLE jobs {action} TRIGGER feed_jobs_update")
            started = time.perf_counter()
            for n in range(writes):
                await connection.execute(
                    "INSERT INTO sources (tenant_id, source_id, name, source_type, enabled, created_at, updated_at, "
                    "jobs_submitted, jobs_active, jobs_failed) VALUES ($1, $2, 'cost', 'bench', true, now(), now(), 0, 0, 0)",
                    tenant_id, f"cost-{label}-{n}",
                )
            out[f"insert_source_ms_{label}"] = 1000 * (time.perf_counter() - started) / writes
            started = time.perf_counter()
            for _ in range(writes):
                await connection.execute("UPDATE jobs SET heartbeat_at = now() WHERE tenant_id = $1 AND job_id = $2",
                                         tenant_id, job_id)
            out[f"update_job_ms_{label}"] = 1000 * (time.perf_counter() - started) / writes
    finally:
        await connection.close()
    return out


async def stale_window(url: str, auth: dict[str, str], pg_dsn: str, tenant_id: int, trials: int) -> dict[str, Any]:
    """Milliseconds from a write's COMMIT (another connection: no gateway answer, no write epoch)
    to the first revalidation answered 200, and how many stale 304s came before it."""
    connection = await asyncpg.connect(pg_dsn)
    windows: list[float] = []
    stale_answers: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as http:
            for _ in range(trials):
                page = await http.get(PATH)
                etag = page.headers["etag"]
                source_id = page.json()["items"][0]["sourceId"]
                for _ in range(2):  # remembered, then answered from memory
                    remembered = await http.get(PATH, headers={"If-None-Match": etag})
                if remembered.status_code != 304:
                    fail(f"the unchanged list was answered {remembered.status_code}, not 304")
                await connection.execute(
                    "UPDATE sources SET description = $1 WHERE tenant_id = $2 AND source_id = $3",
                    uuid.uuid4().hex, tenant_id, source_id,
                )
                committed = time.perf_counter()
                stale = 0
                while True:
                    answer = await http.get(PATH, headers={"If-None-Match": etag})
                    if answer.status_code == 200:
                        break
                    stale += 1
                    if time.perf_counter() - committed > 10:
                        fail("a write without a response was still answered 304 after 10 s")
                windows.append(1000 * (time.perf_counter() - committed))
                stale_answers.append(stale)
    finally:
        await connection.close()
    return {
        "trials": trials, "p50_ms": statistics.median(windows), "p99_ms": percentile(windows, 0.99),
        "max_ms": max(windows), "target_p99_ms": TARGET_STALE_P99_MS,
        "stale_304_per_trial_mean": statistics.mean(stale_answers), "stale_304_max": max(stale_answers),
    }


WORKER_ROW = (
    "INSERT INTO workers (worker_id, host, pid, job_types, tenant_ids, concurrency, running, heartbeat_seconds, "
    "started_at, last_seen_at, expires_at) VALUES ($1, 'bench', 1, '[\"scan\"]', $2::jsonb, 4, 0, 5, now(), now(), "
    "now() + interval '15 s')"
)
HEARTBEAT = (
    "UPDATE workers SET running = 1, last_seen_at = now(), expires_at = now() + interval '15 s', stopped_at = NULL, "
    "lapsed_at = NULL WHERE worker_id = $1"
)


async def worker_fan_out(pg_dsn: str, tenants: int, repeats: int = 3, beats: int = 200) -> dict[str, float]:
    """Milliseconds per committed worker registration (every tenant / two tenants) and heartbeat."""
    connection = await asyncpg.connect(pg_dsn)
    total = 0
    out: dict[str, list[float]] = {"register_all_tenants_ms": [], "register_two_tenants_ms": [], "heartbeat_ms": []}
    try:
        workspace = await connection.fetchval("SELECT workspace_id FROM tenants LIMIT 1")
        await connection.execute(
            "INSERT INTO tenants (key, external_id, workspace_id, created_at) "
            "SELECT 'fan-' || g, 'fan-' || g, $1, now() FROM generate_series(1, $2) g", workspace, tenants)
        total = await connection.fetchval("SELECT count(*) FROM tenants")
        two = json.dumps([r[0] for r in await connection.fetch("SELECT id FROM tenants ORDER BY id LIMIT 2")])
        for n in range(repeats):
            for key, worker_id, tenant_ids in (("register_all_tenants_ms", f"all-{n}", "null"),
                                               ("register_two_tenants_ms", f"two-{n}", two)):
                started = time.perf_counter()
                await connection.execute(WORKER_ROW, worker_id, tenant_ids)
                out[key].append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            for _ in range(beats):
                await connection.execute(HEARTBEAT, f"all-{n}")
            out["heartbeat_ms"].append(1000 * (time.perf_counter() - started) / beats)
    finally:
        await connection.close()
    return {key: statistics.median(values) for key, values in out.items()} | {"tenants": total}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = load_options(__doc__, duration=5, rounds=2)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--burst-jobs", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--revalidation-only", action="store_true", help="measure the first part only")
    parser.add_argument("--stale-trials", type=int, default=50)
    args = parser.parse_args()
    with bench_environment() as env:
        pg_dsn = with_database(env.admin_url, env.db_name)
        jwks_path, token = signing_key(env.workdir, scope="orch:read")
        base_env, gateway_env = gateway_settings(pg_dsn, env.redis_url, env.prefix, jwks_path, env.workdir)
        gateway_env["JOBGATE_STREAMS_PER_TENANT"] = str(max(100, args.subscribers + 10))
        prepare_tenant(gateway_env)
        tenant_id = asyncio.run(seed_sources(pg_dsn))
        gateway = new_server(env.servers, env.workdir, "gateway", gateway_env,
                             PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1")
        gateway.start()
        gateway.wait_ready("/healthz")
        auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
        first = httpx.get(gateway.url + PATH, headers=auth, timeout=10)
        if first.status_code != 200:
            fail(f"the gateway answered {first.status_code}: {first.text[:300]}")
        etag = first.headers["etag"]
        body_path = env.workdir / "page.json"
        body_path.write_bytes(first.content)
        for _ in range(2):  # remembered, then answered from memory
            check = httpx.get(gateway.url + PATH, headers={**auth, "If-None-Match": etag}, timeout=10)
        static = new_server(env.servers, env.workdir, "baseline-static", {**base_env, "BENCH_STATIC_BODY": str(body_path)},
                            PYTHON, str(BENCH / "serve.py"), "bench.baseline_static:create_app", "{port}")
        static.start()
        static.wait_ready(PATH)
        database = new_server(env.servers, env.workdir, "baseline-db",
                              {**base_env, "BENCH_PG_DSN": pg_dsn, "BENCH_TENANT_ID": str(tenant_id)},
                              PYTHON, str(BENCH / "serve.py"), "bench.baseline_db:create_app", "{port}")
        database.start()
        database.wait_ready(PATH)
        results: dict[str, Any] = {"machine": machine(), "immediate_revalidation": check.status_code}

        print("1. revalidation of an unchanged list")
        loads = [
            Load("revalidate", "gateway 304 revalidation (from memory)", gateway, {**auth, "If-None-Match": etag},
                 expect=304, path=PATH),
            Load("framework_ceiling", "baseline: static (framework ceiling)", static, path=PATH),
            Load("changed", "gateway revalidation of a changed list", gateway,
                 {**auth, "If-None-Match": '"0-no-longer-current"'}, path=PATH),
            Load("plain", "gateway list read (no If-None-Match)", gateway, auth, path=PATH),
            Load("database_ceiling", "baseline: raw asyncpg (database-bound ceiling)", database, path=PATH),
        ]
        sessions = Sessions(pg_dsn)
        try:
            measure(loads, args, sessions)
        finally:
            sessions.close()
        ratio = loads[0].rps() / loads[1].rps()
        results["revalidation"] = {
            "gateway_rps": loads[0].rps(), "ceiling_rps": loads[1].rps(), "ratio": ratio, "target": TARGET_REVALIDATE,
            "gateway_cpu_ms_per_request": loads[0].cpu_ms(), "ceiling_cpu_ms_per_request": loads[1].cpu_ms(),
            "share_304": loads[0].expected_share(),
            "pg_connections_opened": sum(r["pg_connections_opened"] for r in loads[0].rounds),
        }
        print(f"   304 revalidation {loads[0].rps():.0f} req/s ({loads[0].cpu_ms():.3f} ms CPU) vs ceiling "
              f"{loads[1].rps():.0f} ({loads[1].cpu_ms():.3f} ms CPU): ratio {ratio:.2f} (target ≥ {TARGET_REVALIDATE})")
        changed = loads[2].rps() / loads[4].rps()
        results["changed_list"] = {
            "gateway_rps": loads[2].rps(), "ceiling_rps": loads[4].rps(), "ratio": changed,
            "target": TARGET_CHANGED, "gateway_cpu_ms_per_request": loads[2].cpu_ms(),
            "ceiling_cpu_ms_per_request": loads[4].cpu_ms(),
            "plain_read_rps": loads[3].rps(), "plain_read_cpu_ms_per_request": loads[3].cpu_ms(),
        }
        print(f"   changed list {loads[2].rps():.0f} req/s ({loads[2].cpu_ms():.3f} ms CPU) vs database ceiling "
              f"{loads[4].rps():.0f} ({loads[4].cpu_ms():.3f} ms CPU): ratio {changed:.2f} (target ≥ {TARGET_CHANGED}); "
              f"the same read without If-None-Match {loads[3].rps():.0f} req/s ({loads[3].cpu_ms():.3f} ms CPU)")
        database.stop()
        if not args.revalidation_only:
            the_other_parts(args, results, gateway, token, pg_dsn, tenant_id)


        out = BENCH / "results" / f"change-feed-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {out}")


def the_other_parts(args: Any, results: dict[str, Any], gateway: Any, token: str, pg_dsn: str, tenant_id: int) -> None:
    """Parts 2 to 6, into ``results``."""
    print(f"2. {args.subscribers} subscribers on one process, changes committed by another")
    workers = gateway.worker_pids() or [gateway.process.pid]  # type: ignore[union-attr]
    idle_before = rss_kb(workers)
    cpu_without = cpu_seconds(workers, IDLE_SECONDS)
    subscribers = Subscribers(gateway, token, args.subscribers, kinds="source")
    subscribers.wait_open()
    time.sleep(2)
    idle_after = rss_kb(workers)
    cpu_with = cpu_seconds(workers, IDLE_SECONDS)
    commits = asyncio.run(source_change(pg_dsn, tenant_id, args.commits, 0.3))
    time.sleep(1.5)
    arrivals = subscribers.arrivals()
    latencies = [
        1000 * (mine[str(seq)] - committed)
        for mine in arrivals.values() for seq, committed in commits if str(seq) in mine
    ]
    expected = args.subscribers * len(commits)
    results["fan_out"] = {
        "subscribers": args.subscribers, "commits": len(commits), "delivered": len(latencies),
        "expected": expected, "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": percentile(latencies, 0.99) if latencies else None, "target_p99_ms": TARGET_P99_MS,
        "rss_kb_per_idle_subscriber": (idle_after - idle_before) / args.subscribers,
        "cpu_share_idle_without_streams": cpu_without / IDLE_SECONDS,
        "cpu_share_idle_with_streams": cpu_with / IDLE_SECONDS,
    }
    print(f"   delivered {len(latencies)}/{expected}; p50 {results['fan_out']['p50_ms']:.1f} ms, "
          f"p99 {results['fan_out']['p99_ms']:.1f} ms (target ≤ {TARGET_P99_MS}); "
          f"{results['fan_out']['rss_kb_per_idle_subscriber']:.1f} KB RSS per idle subscriber")
    print(f"   CPU over {IDLE_SECONDS:.0f} s idle: {100 * cpu_without / IDLE_SECONDS:.2f} % of a core without streams, "
          f"{100 * cpu_with / IDLE_SECONDS:.2f} % with {args.subscribers} open")

    print(f"3. burst: {args.burst_jobs} jobs started and finished in 10 s, one subscriber")
    one = Subscribers(gateway, token, 1, kinds="job")
    one.wait_open()
    changes = asyncio.run(burst(pg_dsn, tenant_id, args.burst_jobs, 10.0))
    time.sleep(2)
    received = sum(len(mine) for mine in one.arrivals().values())
    results["burst"] = {"changes": changes + args.burst_jobs, "events_received": received,
                        "coalescing_window_ms": 100}
    print(f"   {changes + args.burst_jobs} job changes (insert, start, finish) → {received} events received")

    print(f"4. trigger cost: {args.writes} single-row committed writes each way")
    results["trigger_cost"] = asyncio.run(trigger_cost(pg_dsn, tenant_id, args.writes))
    for key, value in results["trigger_cost"].items():
        print(f"   {key}: {value:.3f} ms")

    print(f"5. stale window: a write without a response, then revalidations ({args.stale_trials} trials)")
    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
    window = asyncio.run(stale_window(gateway.url, auth, pg_dsn, tenant_id, args.stale_trials))
    results["stale_window"] = window
    print(f"   COMMIT → first 200: p50 {window['p50_ms']:.1f} ms, p99 {window['p99_ms']:.1f} ms "
          f"(target ≤ {TARGET_STALE_P99_MS}); stale 304s per trial: "
          f"mean {window['stale_304_per_trial_mean']:.1f}, max {window['stale_304_max']}")

    print(f"6. worker fan-out over {args.tenants} more tenants")
    results["worker_fan_out"] = asyncio.run(worker_fan_out(pg_dsn, args.tenants))
    for key, value in results["worker_fan_out"].items():
        print(f"   {key}: {value:.3f}")


if __name__ == "__main__":
    main()

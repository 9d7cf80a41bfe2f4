"""The progress overlay (issue 5): the gateway's hottest read, against the foundation ceilings.

    .venv/bin/python bench/progress_overlay.py [--duration 6] [--rounds 3] [--profile]

Consoles poll ``GET /admin/t/{tenant}/operations/progress`` every 10 s, so it is the read the
gateway answers most. This benchmark builds on ``bench/run_foundation.py`` (same throwaway
database, Redis prefix, JWKS and token, the same granian settings and the same two ceilings) and
gives the ``bench`` tenant 100,000 completed operation runs (30 days of history, every outcome,
some reconciled) and 50 active ones (40 running with a fresh heartbeat, 10 queued, interleaved in
time with the completed runs of the last hours), plus the foundation's 100,000 sources that the
database ceiling reads.

It measures with ``wrk`` in two regimes, each in rounds of alternating order:

* **latency** (``--latency-connections``, default 1): one request at a time, what a console
  waits for; the overlay's p50 here is the figure for the 10 ms target;
* **saturation** (``--connections``, default 32, as the foundation benchmark): requests/s and
  p50/p99 under a full queue, compared as ratios to the ceilings measured in the same run.

Four loads in each regime: the overlay (200), its 304 revalidation (``If-None-Match`` with the
ETag of a first request; the labels do not depend on the clock, so the ETag is stable while the
runs stay fresh), and the foundation's two ceilings: ``bench/baseline_db.py`` (a bare handler
running the sources keyset query with raw asyncpg) and ``bench/baseline_static.py`` (the same
page from memory). The overlay query's plan (``EXPLAIN ANALYZE``) is recorded. ``--profile`` adds
a py-spy sample of the gateway serving the overlay.

Everything created is removed at the end, also on failure. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run_foundation as rf

HISTORICAL = 100_000
ACTIVE = 50
SOURCES_PATH = rf.PATH  # the ceilings' request: /jobengine/sources?limit=50
TARGET_P50_MS = 10.0


# --- data --------------------------------------------------------------------------------------

# 100,000 completed runs over the last 30 days (one every ~26 s), every outcome, 1 in 50
# reconciled; then 40 running runs created in the last 3 hours with a heartbeat now (kept fresh
# by ``Heartbeats`` during the run, as their workers would), and 10 queued pack runs created in
# the last 2 minutes (fresh for 15 minutes). Identity hashes are distinct (sha256 of the number).
COMPLETED_SQL = """
INSERT INTO operation_runs (workspace_id, tenant_id, project_id, user_id, initiator_name, type, status,
    outcome, run_identity_hash, summary_counts, failure_summary, context, operator_message, heartbeat_at,
    reconciled_at, reconciliation, started_at, completed_at, created_at, updated_at)
SELECT $1, $2, (ARRAY[NULL, 'alpha', 'beta'])[1 + n % 3], 'user-' || (n % 40), 'operator ' || (n % 40),
    (ARRAY['pack_run.execute', 'pack_run.retry', 'deadletter.replay_batch', 'deadletter.replay_pending'])[1 + n % 4],
    'completed',
    CASE WHEN n % 50 = 0 THEN 'failed'
         ELSE (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'partially_succeeded', 'canceled',
                     'blocked'])[1 + n % 7] END,
    encode(sha256(('completed-' || n)::bytea), 'hex'),
    jsonb_build_object('total', n % 500, 'processed', n % 500, 'succeeded', n % 450, 'failed', n % 50),
    CASE WHEN n % 7 = 3 OR n % 50 = 0
         THEN jsonb_build_array(jsonb_build_object('code', 'step.failed', 'message', 'step ' || (n % 9) || ' failed'))
         ELSE '[]'::jsonb END,
    '{}'::jsonb, NULL, c + interval '50 seconds',
    CASE WHEN n % 50 = 0 THEN c + interval '40 minutes' END,
    CASE WHEN n % 50 = 0 THEN jsonb_build_object('source', 'scheduled_reconciler', 'reason_code',
         'run.no_heartbeat', 'reason_message', 'No heartbeat within the threshold',
         'evidence', jsonb_build_object('threshold_seconds', 1800)) END,
    c + interval '2 seconds', c + interval '60 seconds', c, c + interval '60 seconds'
FROM generate_series(1, $3) AS n,
     LATERAL (SELECT now() - interval '30 days' + (n::double precision / $3) * interval '30 days'
                  - interval '10 minutes' AS c) AS t
"""

ACTIVE_SQL = """
INSERT INTO operation_runs (workspace_id, tenant_id, project_id, user_id, initiator_name, type, status,
    outcome, run_identity_hash, summary_counts, failure_summary, context, operator_message, heartbeat_at,
    reconciled_at, reconciliation, started_at, completed_at, created_at, updated_at)
SELECT $1, $2, (ARRAY[NULL, 'alpha', 'beta'])[1 + n % 3], 'user-' || (n % 40), 'operator ' || (n % 40),
    CASE WHEN n <= 40 THEN (ARRAY['pack_run.execute', 'pack_run.retry', 'deadletter.replay_batch'])[1 + n % 3]
         ELSE (ARRAY['pack_run.execute', 'pack_run.retry'])[1 + n % 2] END,
    CASE WHEN n <= 40 THEN 'running' ELSE 'queued' END,
    'pending',
    encode(sha256(('active-' || n)::bytea), 'hex'),
    jsonb_build_object('total', 100, 'processed', n), '[]'::jsonb, '{}'::jsonb, NULL,
    CASE WHEN n <= 40 THEN now() END, NULL, NULL,
    CASE WHEN n <= 40 THEN now() - interval '1 minute' * (n * 4) END, NULL,
    CASE WHEN n <= 40 THEN now() - interval '1 minute' * (n * 4 + 1)
         ELSE now() - interval '10 seconds' * (n - 40) END,
    now()
FROM generate_series(1, $3) AS n
"""


async def seed_runs(dsn: str, tenant_id: int) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        workspace_id = await connection.fetchval("SELECT workspace_id FROM tenants WHERE id = $1", tenant_id)
        await connection.execute(COMPLETED_SQL, workspace_id, tenant_id, HISTORICAL)
        await connection.execute(ACTIVE_SQL, workspace_id, tenant_id, ACTIVE)
        await connection.execute("VACUUM ANALYZE operation_runs")
        counts = await connection.fetch(
            "SELECT status, count(*) AS n FROM operation_runs WHERE tenant_id = $1 GROUP BY status", tenant_id
        )
        return {"workspace_id": workspace_id, "runs": {r["status"]: r["n"] for r in counts}}
    finally:
        await connection.close()


class Heartbeats:
    """The workers of the running runs: a heartbeat every ``every`` seconds (as ``ledger.heartbeat``
    does), so no run turns ``likely_stale`` during the measurement (``deadletter.replay_batch``
    allows 120 s). The overlay shows no instant, so heartbeats leave its ETag unchanged."""

    def __init__(self, dsn: str, tenant_id: int, every: float = 10.0) -> None:
        self.dsn, self.tenant_id, self.every = dsn, tenant_id, every
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        async def beat() -> None:
            connection = await asyncpg.connect(self.dsn)
            try:
                while not self._stop.is_set():
                    await connection.execute(
                        "UPDATE operation_runs SET heartbeat_at = now(), updated_at = now() "
                        "WHERE tenant_id = $1 AND status = 'running'",
                        self.tenant_id,
                    )
                    self.beats += 1
                    await asyncio.get_running_loop().run_in_executor(None, self._stop.wait, self.every)
            finally:
                await connection.close()

        asyncio.run(beat())


async def overlay_plan(dsn: str, sql: str, params: list[Any]) -> list[str]:
    """EXPLAIN ANALYZE of the statement the gateway sends for the overlay (captured from its log)."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
        return [r[0] for r in rows]
    finally:
        await connection.close()


def overlay_statement(tenant_id: int, workspace_id: int) -> tuple[str, list[Any]]:
    """The overlay's SELECT compiled by SQLAlchemy for asyncpg, with its parameters in order."""
    from sqlalchemy.dialects import postgresql

    from app.domain.operations.routes import OVERLAY_ITEMS
    from app.domain.operations.service import Visibility
    from app.storage.models import OperationRun

    seen = Visibility(workspace_id, {tenant_id: None}, None)  # type: ignore[dict-item]
    stmt = (
        seen.select()
        .where(OperationRun.tenant_id == tenant_id, OperationRun.status.in_(("queued", "running")))
        .order_by(OperationRun.created_at.desc(), OperationRun.id.desc())
        .limit(OVERLAY_ITEMS)
    )
    compiled = stmt.compile(dialect=postgresql.asyncpg.dialect(), compile_kwargs={"render_postcompile": True})
    names = list(compiled.positiontup or [])
    return str(compiled), [compiled.params[n] for n in names]


# --- measuring ---------------------------------------------------------------------------------


class Load(rf.Load):
    """A foundation load with its own request path."""

    def __init__(self, key: str, label: str, server: rf.Server, path: str, headers: dict[str, str] | None = None,
                 expect: int = 200) -> None:  # fmt: skip
        super().__init__(key, label, server, dict(headers or {}), expect)
        self.path = path

    def p50_ms(self) -> float:
        return statistics.median(r["p50_ms"] for r in self.rounds)


def run_wrk(load: Load, seconds: int, connections: int) -> dict[str, Any]:
    """``rf.run_wrk`` for a load's own path (the same wrk script and result line)."""
    env = {
        **os.environ,
        "BENCH_TOKEN": load.headers.get("Authorization", "").removeprefix("Bearer "),
        "BENCH_TENANT": load.headers.get("X-Stella-Tenant", ""),
        "BENCH_IF_NONE_MATCH": load.headers.get("If-None-Match", ""),
        "BENCH_FOLLOW_ETAG": "",
    }
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(rf.BENCH / "wrk.lua"),
            load.server.url + load.path]  # fmt: skip
    cpu = load.server.cpu_seconds()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    cpu = load.server.cpu_seconds() - cpu
    line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        rf.fail(f"wrk printed no result for {load.label}:\n{out}")
    raw = json.loads(line.removeprefix("BENCH "))
    expected = raw["status_304" if load.expect == 304 else "status_200"]
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "expected_share": expected / max(1, raw["requests"]),
        "server_cpu_ms_per_request": 1000 * cpu / max(1, raw["requests"]),
        **raw,
    }


def measure(loads: list[Load], connections: int, rounds: int, duration: int, warmup: int) -> None:
    for load in loads:
        run_wrk(load, warmup, connections)
    for index in range(rounds):
        for load in loads if index % 2 == 0 else list(reversed(loads)):
            result = run_wrk(load, duration, connections)
            load.rounds.append(result)
            print(
                f"  c{connections:<3} round {index + 1}  {load.label:<38}{result['rps']:>7.0f} req/s  "
                f"p50 {result['p50_ms']:>6.2f} ms  p99 {result['p99_ms']:>6.1f} ms  "
                f"{result['server_cpu_ms_per_request']:>5.2f} ms CPU/req  {result['expected_share']:>6.1%} {load.expect}",
                flush=True,
            )


def summarise(loads: list[Load]) -> dict[str, Any]:
    by_key = {load.key: load for load in loads}
    db, fw = by_key["db_ceiling"], by_key["framework_ceiling"]
    out: dict[str, Any] = {
        "loads": {
            load.key: {
                "label": load.label,
                "rps": round(load.rps()),
                "p50_ms": round(load.p50_ms(), 2),
                "p99_ms": round(load.p99_ms(), 1),
                "server_cpu_ms_per_request": round(load.cpu_ms(), 3),
                "expected_status": load.expect,
                "expected_share": round(load.expected_share(), 4),
            }
            for load in loads
        },
        "ratios": {},
    }
    for key in ("overlay", "revalidate"):
        load = by_key[key]
        out["ratios"][f"{key}_rps_vs_db_ceiling"] = round(load.rps() / db.rps(), 3)
        out["ratios"][f"{key}_rps_vs_framework_ceiling"] = round(load.rps() / fw.rps(), 3)
        out["ratios"][f"{key}_p50_vs_db_ceiling_p50"] = round(load.p50_ms() / db.p50_ms(), 2)
        out["ratios"][f"{key}_p50_vs_framework_ceiling_p50"] = round(load.p50_ms() / fw.p50_ms(), 2)
    return out


def print_summary(title: str, loads: list[Load], summary: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"{'load':<40}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'answered as expected':>23}")
    for load in loads:
        print(
            f"{load.label:<40}{load.rps():>8.0f}{load.p50_ms():>9.2f}{load.p99_ms():>9.1f}{load.cpu_ms():>12.2f}"
            f"{load.expected_share():>17.1%} {load.expect}"
        )
    for name, ratio in summary["ratios"].items():
        print(f"  {name:<42}{ratio:>7.3f}")


def profile(load: Load, seconds: int, connections: int, out: Path) -> dict[str, Any] | None:
    py_spy = shutil.which("py-spy") or str(Path(rf.PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not installed: pip install py-spy to profile)")
        return None
    pids = load.server.worker_pids() or [load.server.process.pid]  # type: ignore[union-attr]
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(pids[0]), "--rate", "250", "--nonblocking", "--format", "raw",
         "--output", str(raw), "--duration", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)
    run_wrk(load, seconds, connections)
    spy.wait(timeout=seconds + 30)
    if not raw.exists():
        print(f"  (py-spy failed: {spy.stderr.read().decode()[-500:] if spy.stderr else ''})")
        return None
    return rf.summarise_stacks(raw)


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per measurement (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per load, alternating order")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per load (default 2)")
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections, saturation (default 32)"
    )
    parser.add_argument(
        "--latency-connections", type=int, default=1, help="wrk connections, latency (default 1)"
    )
    parser.add_argument("--profile", action="store_true", help="also sample the gateway with py-spy")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        rf.fail("wrk is not installed; install it with: apt-get install wrk")
    with rf.bench_environment() as env, contextlib.ExitStack() as stack:
        run(args, env.admin_url, env.redis_url, env.db_name, env.prefix, env.workdir, env.servers, stack)


def run(
    args: argparse.Namespace,
    admin_url: str,
    redis_url: str,
    db_name: str,
    prefix: str,
    workdir: Path,
    servers: list[rf.Server],
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    begun = time.monotonic()
    pg_dsn = rf.with_database(admin_url, db_name)
    gateway_url = pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    jwks_path, token = rf.signing_key(workdir)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    base_env["PYTHONPATH"] = str(ROOT)
    gateway_env = {
        **base_env,
        "JOBGATE_ENV": "prod",
        "JOBGATE_DATABASE_URL": gateway_url,
        "JOBGATE_REDIS_URL": redis_url,
        "JOBGATE_REDIS_PREFIX": prefix,
        "JOBGATE_AUTH_JWKS_FILE": str(jwks_path),
        "JOBGATE_AUTH_ISSUER": rf.ISSUER,
        "JOBGATE_AUTH_AUDIENCE": rf.AUDIENCE,
        "JOBGATE_CURSOR_SECRET": "bench:" + uuid.uuid4().hex,
        "JOBGATE_RATE_LIMIT": "1000000/second",
        "JOBGATE_DATA_DIR": str(workdir / "data"),
        "JOBGATE_PUBLIC_URL": "http://gateway.bench",
    }

    print(f"database {db_name}, Redis prefix {prefix}")
    for argv in (["db", "upgrade"], ["tenants", "add", rf.TENANT, "--workspace", rf.TENANT, "--create-workspace"]):
        done = subprocess.run(
            [rf.PYTHON, "-m", "app.cli", *argv],
            cwd=ROOT,
            env=gateway_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            rf.fail(f"jobgate {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    started = time.monotonic()
    tenant_id = asyncio.run(rf.seed_sources(pg_dsn))
    seeded = asyncio.run(seed_runs(pg_dsn, tenant_id))
    print(
        f"seeded {rf.SOURCES:,} sources and operation runs {seeded['runs']} in {time.monotonic() - started:.1f} s"
    )
    heartbeats = stack.enter_context(Heartbeats(pg_dsn, tenant_id))

    def server(name: str, env: dict[str, str], *argv: str) -> rf.Server:
        port = rf.free_port()
        s = rf.Server(
            name, port, [a.replace("{port}", str(port)) for a in argv], env, workdir / f"{name}.log"
        )
        servers.append(s)
        return s

    gateway = server(
        "gateway", gateway_env, rf.PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1"
    )
    db_env = {**base_env, "BENCH_PG_DSN": pg_dsn, "BENCH_TENANT_ID": str(tenant_id)}
    database = server(
        "baseline-db", db_env, rf.PYTHON, str(rf.BENCH / "serve.py"), "bench.baseline_db:create_app", "{port}"
    )
    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": rf.TENANT}
    for s in (gateway, database):
        s.start()
    gateway.wait_ready("/healthz")
    database.wait_ready(SOURCES_PATH)

    # The framework ceiling serves the gateway's own sources page, as in the foundation benchmark.
    page = httpx.get(gateway.url + SOURCES_PATH, headers=auth, timeout=10)
    if page.status_code != 200:
        rf.fail(f"the gateway answered {page.status_code} to {SOURCES_PATH}: {page.text[:500]}")
    body_path = workdir / "page.json"
    body_path.write_bytes(page.content)
    static_env = {**base_env, "BENCH_STATIC_BODY": str(body_path)}
    static = server("baseline-static", static_env, rf.PYTHON, str(rf.BENCH / "serve.py"), "bench.baseline_static:create_app", "{port}")  # fmt: skip
    static.start()
    static.wait_ready(SOURCES_PATH)

    overlay_path = f"/admin/t/{tenant_id}/operations/progress"
    first = httpx.get(gateway.url + overlay_path, headers=auth, timeout=10)
    if first.status_code != 200:
        rf.fail(f"the gateway answered {first.status_code} to {overlay_path}: {first.text[:500]}")
    overlay = first.json()
    states = sorted({i["active_state"]["freshness_state"] for i in overlay["items"]})
    etag = first.headers["etag"]
    if len(overlay["items"]) != ACTIVE or overlay["poll_interval"] != "10s" or states != ["fresh_active"]:
        rf.fail(
            f"unexpected overlay: {len(overlay['items'])} items, poll {overlay['poll_interval']}, states {states}"
        )
    time.sleep(1.1)  # a later second: the ETag must not depend on the clock
    again = httpx.get(gateway.url + overlay_path, headers={**auth, "If-None-Match": etag}, timeout=10)
    print(
        f"overlay: {len(overlay['items'])} items ({states}), poll_interval {overlay['poll_interval']}, "
        f"{len(first.content):,} bytes, Cache-Control {first.headers.get('cache-control')!r}, ETag {etag}; "
        f"revalidation 1 s later: {again.status_code}"
    )
    if again.status_code != 304:
        rf.fail("the overlay's revalidation is not answered 304")

    sql, params = overlay_statement(tenant_id, seeded["workspace_id"])
    plan = asyncio.run(overlay_plan(pg_dsn, sql, params))
    print("overlay query plan:\n  " + "\n  ".join(plan))

    def loads() -> list[Load]:
        return [
            Load("overlay", "overlay (200)", gateway, overlay_path, auth),
            Load("revalidate", "overlay 304 revalidation", gateway, overlay_path, {**auth, "If-None-Match": etag}, 304),
            Load("db_ceiling", "baseline: raw asyncpg (DB ceiling)", database, SOURCES_PATH),
            Load("framework_ceiling", "baseline: static (framework ceiling)", static, SOURCES_PATH),
        ]  # fmt: skip

    regimes: dict[str, list[Load]] = {"latency": loads(), "saturation": loads()}
    print(
        f"\nwrk -t1, {args.rounds} rounds of {args.duration} s in alternating order (+{args.warmup} s warm-up each); "
        f"latency at -c{args.latency_connections}, saturation at -c{args.connections}"
    )
    measure(regimes["latency"], args.latency_connections, args.rounds, args.duration, args.warmup)
    measure(regimes["saturation"], args.connections, args.rounds, args.duration, args.warmup)
    summaries = {name: summarise(group) for name, group in regimes.items()}
    last = httpx.get(gateway.url + overlay_path, headers={**auth, "If-None-Match": etag}, timeout=10)
    print(
        f"\nrevalidation with the first ETag after the loads: {last.status_code} ({heartbeats.beats} heartbeat rounds)"
    )
    for name, group in regimes.items():
        connections = args.latency_connections if name == "latency" else args.connections
        print_summary(f"{name} (-c{connections}), medians of the rounds:", group, summaries[name])

    latency = summaries["latency"]["loads"]
    met = {
        key: latency[key]["p50_ms"] <= TARGET_P50_MS and latency[key]["expected_share"] >= 0.99
        for key in ("overlay", "revalidate")
    }
    print(
        f"\ntarget p50 <= {TARGET_P50_MS:.0f} ms (one request at a time): overlay {latency['overlay']['p50_ms']:.2f} ms "
        f"{'met' if met['overlay'] else 'MISSED'}; 304 revalidation {latency['revalidate']['p50_ms']:.2f} ms "
        f"{'met' if met['revalidate'] else 'MISSED'}"
    )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = rf.BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    document: dict[str, Any] = {
        "benchmark": "progress_overlay",
        "when": stamp,
        "machine": rf.machine(),
        "command": " ".join([".venv/bin/python", "bench/progress_overlay.py", *sys.argv[1:]]),
        "wrk": {"threads": 1, "connections": {"latency": args.latency_connections, "saturation": args.connections},
                "duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup,
                "overlay_path": overlay_path, "ceiling_path": SOURCES_PATH},
        "data": {"sources": rf.SOURCES, **seeded},
        "overlay_bytes": len(first.content),
        "etag": {"first": etag, "revalidation_after_loads": last.status_code, "heartbeat_rounds": heartbeats.beats},
        "query_plan": plan,
        "summary": summaries,
        "target_p50_ms": {"target": TARGET_P50_MS, "met": met},
        "rounds": {name: {load.key: load.rounds for load in group} for name, group in regimes.items()},
        "profiles": {},
    }  # fmt: skip
    out = results_dir / f"progress-overlay-{stamp}.json"
    out.write_text(json.dumps(document, indent=2))
    if args.profile:
        print("\nprofiling the overlay with py-spy (share of the gateway's Python samples) ...")
        by_key = {load.key: load for load in regimes["saturation"]}
        for key in ("overlay", "revalidate"):
            stacks = profile(
                by_key[key], args.duration, args.connections, results_dir / f"progress-overlay-{stamp}-{key}"
            )
            if stacks:
                document["profiles"][key] = stacks
                print(f"\n{by_key[key].label}: {stacks['samples']} samples")
                for name, pct in stacks["buckets"]:
                    print(f"  {pct:5.1f}%  {name}")
        out.write_text(json.dumps(document, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}  ({time.monotonic() - begun:.0f} s in all)")
    return document


if __name__ == "__main__":
    main()

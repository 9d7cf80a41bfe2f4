"""The write path: job submission (one job, and batches of 500) against its ceiling, in one run.

    .venv/bin/python bench/submission.py [--duration 5] [--rounds 2] [--profile]

Starts, under the settings of ``jobgate serve`` (one granian worker), the gateway on PostgreSQL +
Redis (production settings, a valid ES256 token) and ``bench/baseline_submission.py``: a bare
Litestar handler doing the same writes with raw asyncpg in one transaction (the write ceiling).
Then it drives with ``wrk`` (32 connections by default):

- ``POST /jobengine/jobs`` (one ``demo.noop`` job) on both;
- ``POST /jobengine/jobs/batch`` with 500 jobs on both (jobs/s = requests/s × 500);
- the other mutation routes of the gateway, one at a time (CPU per request and p99), and
  ``POST /jobengine/quotas/{id}/pause`` from one connection while 31 others submit jobs
  (a mutation's p99 under submission load).

Loads run in alternating order for ``--rounds`` rounds; medians are compared as ratios within the
run (the machine is shared). ``--before REV`` also starts a gateway of the commit REV (exported
with ``git archive``) and measures its single submission in the same rounds, so that the change is
a ratio measured in the same command too. ``--profile`` adds a py-spy sample of the gateway under the single
submission load. Everything it creates is removed at the end (``bench_environment``); results go
to ``bench/results/`` (not versioned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run_foundation import (  # noqa: E402
    BENCH,
    PYTHON,
    ROOT,
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
    profile,
    run_wrk,
    signing_key,
    with_database,
)

SCOPES = "orch:submit orch:read orch:quota orch:operate orch:backfill"
BATCH = 500
TARGETS = {"single_vs_ceiling": 0.50, "batch_jobs_per_second": 10_000}
BEFORE_RPS = 300  # POST /jobengine/jobs measured from outside before this change (docs/benchmarks.md)


async def seed(pg_dsn: str) -> int:
    connection = await asyncpg.connect(pg_dsn)
    try:
        tenant_id = await connection.fetchval("SELECT id FROM tenants WHERE key = $1", TENANT)
        await connection.execute(
            "INSERT INTO sources (tenant_id, source_id, name, source_type, enabled, created_at, updated_at, "
            "jobs_submitted, jobs_active, jobs_failed) "
            "SELECT $1, 'src-' || i, 'source ' || i, 'bench', true, now(), now(), 0, 0, 0 FROM generate_series(1, 4) i",
            tenant_id,
        )
        await connection.execute(
            "INSERT INTO quotas (tenant_id, quota_id, job_type, max_active, max_per_hour, burst, paused, "
            "created_at, updated_at) VALUES ($1, 'quota-bench', 'bench.type', 10, 1000, 20, false, now(), now())",
            tenant_id,
        )
        return int(tenant_id)
    finally:
        await connection.close()


def _write(workdir: Path, name: str, body: Any) -> str:
    path = workdir / name
    path.write_bytes(json.dumps(body).encode())
    return str(path)


def main() -> None:
    parser = load_options(__doc__, duration=5, rounds=2)
    parser.add_argument("--profile", action="store_true", help="also sample the gateway with py-spy")
    parser.add_argument("--skip-routes", action="store_true", help="only the submission loads")
    parser.add_argument("--before", default=None, help="also measure the single submission of this commit")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        fail("wrk is not installed; install it with: apt-get install wrk")
    with bench_environment() as env:
        run(args, env)


def run(args: argparse.Namespace, env: Any) -> None:
    pg_dsn = with_database(env.admin_url, env.db_name)
    jwks_path, token = signing_key(env.workdir, SCOPES)
    base_env, gateway_env = gateway_settings(pg_dsn, env.redis_url, env.prefix, jwks_path, env.workdir)
    print(f"database {env.db_name}, Redis prefix {env.prefix}")
    prepare_tenant(gateway_env)
    tenant_id = asyncio.run(seed(pg_dsn))

    def server(name: str, extra: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
        return new_server(env.servers, env.workdir, name, {**base_env, **extra}, *argv)

    gateway = server("gateway", gateway_env, PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1")
    ceiling_env = {"BENCH_PG_DSN": pg_dsn, "BENCH_TENANT_ID": str(tenant_id)}
    ceiling = server("ceiling", ceiling_env, PYTHON, str(BENCH / "serve.py"), "bench.baseline_submission:create_app", "{port}")
    before = None
    if args.before:
        checkout = env.workdir / "before"
        checkout.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "app"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
        before = server("gateway-before", {**gateway_env, "PYTHONPATH": str(checkout)}, PYTHON, "-m", "app.cli", "serve",
                        "--port", "{port}", "--workers", "1")
        before.cwd = checkout
    for s in (gateway, ceiling, *([before] if before else [])):
        s.start()
    gateway.wait_ready("/healthz")
    if before:
        before.wait_ready("/healthz")
    ceiling.wait_ready("/schema/openapi.json")
    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
    job = {"jobType": "demo.noop", "sourceId": "src-1", "payload": {"n": 1}}
    batch = {"jobs": [{**job, "payload": {"n": i}} for i in range(BATCH)]}
    single_file = _write(env.workdir, "job.json", job)
    batch_file = _write(env.workdir, "batch.json", batch)
    for target, headers in ((gateway, auth), (ceiling, {})):
        for path, body, status in (("/jobengine/jobs", job, 201), ("/jobengine/jobs/batch", batch, 200)):
            answer = httpx.post(target.url + path, json=body, headers=headers, timeout=30)
            if answer.status_code != status:
                fail(f"{target.name} answered {answer.status_code} to {path}: {answer.text[:400]}")

    loads = [
        Load("single|gateway", "POST /jobengine/jobs gateway", gateway, auth, path="/jobengine/jobs", body_file=single_file),
        Load("single|ceiling", "POST /jobengine/jobs ceiling", ceiling, path="/jobengine/jobs", body_file=single_file),
        Load("batch|gateway", f"POST /jobengine/jobs/batch ({BATCH}) gateway", gateway, auth,
             path="/jobengine/jobs/batch", body_file=batch_file),
        Load("batch|ceiling", f"POST /jobengine/jobs/batch ({BATCH}) ceiling", ceiling,
             path="/jobengine/jobs/batch", body_file=batch_file),
    ]  # fmt: skip
    if before:
        loads.append(Load("single|before", f"POST /jobengine/jobs gateway at {args.before}", before, auth,
                          path="/jobengine/jobs", body_file=single_file))
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds, alternating order")
    sessions = Sessions(pg_dsn)
    try:
        measure(loads, args, sessions)
        routes = [] if args.skip_routes else mutation_routes(args, gateway, auth, env.workdir, single_file)
        spy = profile(loads[0], args.duration, args, env.workdir / "profile") if args.profile else None
    finally:
        sessions.close()
    by_key = {load.key: load for load in loads}
    sg, sc, bg, bc = (by_key[k] for k in ("single|gateway", "single|ceiling", "batch|gateway", "batch|ceiling"))
    summary = {
        "single_gateway_rps": round(sg.rps()),
        "single_ceiling_rps": round(sc.rps()),
        "single_vs_ceiling": round(sg.rps() / sc.rps(), 3),
        "single_vs_before_absolute": round(sg.rps() / BEFORE_RPS, 2),
        "single_gateway_cpu_ms": round(sg.cpu_ms(), 3),
        "single_ceiling_cpu_ms": round(sc.cpu_ms(), 3),
        "single_gateway_p99_ms": round(sg.p99_ms(), 1),
        "batch_gateway_jobs_per_second": round(bg.rps() * BATCH),
        "batch_ceiling_jobs_per_second": round(bc.rps() * BATCH),
        "batch_vs_ceiling": round(bg.rps() / bc.rps(), 3),
        "batch_gateway_cpu_ms_per_batch": round(bg.cpu_ms(), 2),
        "batch_gateway_p99_ms": round(bg.p99_ms(), 1),
    }
    if before:
        sb = by_key["single|before"]
        summary.update(single_before_rps=round(sb.rps()), single_vs_before_same_run=round(sg.rps() / sb.rps(), 2),
                       single_before_cpu_ms=round(sb.cpu_ms(), 3))
    print()
    for key, value in summary.items():
        print(f"  {key:<34}{value}")
    if routes:
        print(f"\n  {'mutation route':<62}{'req/s':>8}{'p99 ms':>9}{'CPU ms/req':>12}")
        for row in routes:
            cpu = "" if row["cpu_ms"] is None else row["cpu_ms"]
            print(f"  {row['route']:<62}{row['rps']:>8}{row['p99_ms']:>9}{cpu:>12}")
    if spy:
        print("\n  py-spy, POST /jobengine/jobs (inclusive %):")
        for name, share in spy["inclusive_top"]:
            print(f"    {share:>5}  {name}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = results / f"submission-{stamp}.json"
    out.write_text(json.dumps({
        "benchmark": "submission", "when": stamp,
        "command": " ".join([".venv/bin/python", "bench/submission.py", *sys.argv[1:]]),
        "wrk": vars(args), "targets": TARGETS, "summary": summary, "mutation_routes": routes,
        "profile": spy, "rounds": {load.key: load.rounds for load in loads}, "machine": machine(),
    }, indent=2, default=str))  # fmt: skip
    print(f"\nresults: {out.relative_to(ROOT)}")


def mutation_routes(
    args: argparse.Namespace, gateway: Any, auth: dict[str, str], workdir: Path, single_file: str
) -> list[dict[str, Any]]:
    """Each mutation route alone (CPU per request, p99), then a quota pause from one connection
    while the other connections submit jobs (its p99 under submission load)."""
    operator = {**auth, "X-Stella-Operator-Reason": "benchmark"}
    routes = [
        ("POST /jobengine/jobs", "/jobengine/jobs", auth, single_file),
        ("POST /jobengine/sources", "/jobengine/sources", operator,
         _write(workdir, "source.json", {"name": "bench source", "sourceType": "bench"})),
        ("POST /jobengine/quotas/{quotaId}/pause", "/jobengine/quotas/quota-bench/pause", operator,
         _write(workdir, "pause.json", {})),
        ("POST /jobengine/quotas/{quotaId}/resume", "/jobengine/quotas/quota-bench/resume", operator,
         _write(workdir, "resume.json", {})),
    ]  # fmt: skip
    rows = []
    for label, path, headers, body in routes:
        load = Load(label, label, gateway, headers, path=path, body_file=body)
        result = run_wrk(load, args.duration, args.threads, args.connections)
        rows.append({"route": label, "rps": round(result["rps"]), "p99_ms": round(result["p99_ms"], 1),
                     "cpu_ms": round(result["server_cpu_ms_per_request"], 3),
                     "answered_2xx": round(result["status_200"] / max(1, result["requests"]), 3)})  # fmt: skip
    # A mutation's p99 while the other connections submit jobs.
    submit = Load("submit", "submit", gateway, auth, path="/jobengine/jobs", body_file=single_file)
    background = threading.Thread(
        target=run_wrk, args=(submit, args.duration + 2, args.threads, max(1, args.connections - 1))
    )
    background.start()
    pause = Load("pause", "pause", gateway, operator, path="/jobengine/quotas/quota-bench/pause",
                 body_file=routes[2][3])  # fmt: skip
    under = run_wrk(pause, args.duration, 1, 1)
    background.join()
    rows.append({"route": "POST /jobengine/quotas/{quotaId}/pause, under submission load", "rps": round(under["rps"]),
                 "p99_ms": round(under["p99_ms"], 1), "cpu_ms": None,
                 "answered_2xx": round(under["status_200"] / max(1, under["requests"]), 3)})  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

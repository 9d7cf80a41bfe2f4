"""Replay pending of N dead-letter entries at the maximum rate, driven in-process.

    .venv/bin/python bench/replay_pending.py [--entries 100000]

Creates a throwaway database on ``BENCH_PG_ADMIN`` (default
postgresql://postgres@127.0.0.1:5432/postgres), migrates it, inserts N failed jobs and their N
pending dead-letter entries of one tenant (one statement each), then, in this process, starts the
gateway app, sends ``POST /jobengine/deadletter/replay/pending`` (``ratePerSecond`` 100000, the
maximum; ``maxEntries`` N) and drives the runner (``app.engine.replays.advance_replays``, the
worker's background step) until the operation run completes. Reports the time from the request to
the run's completion, replays/s, the jobs created, the run's counts and the process RSS growth,
and drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def prepare(admin: str, database: str, entries: int, env: dict[str, str]) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{database}"')
    await conn.close()
    subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True
    )
    subprocess.run(
        [sys.executable, "-m", "app.cli", "tenants", "add", "bench", "--workspace", "bench", "--create-workspace"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    conn = await asyncpg.connect(f"{admin.rpartition('/')[0]}/{database}")
    try:
        tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE key = 'bench'")
        await conn.execute(
            "INSERT INTO sources (tenant_id, source_id, name, source_type, enabled, created_at, updated_at, "
            "jobs_submitted, jobs_active, jobs_failed) VALUES ($1, 'bench', 'bench', 'bench', true, now(), now(), "
            "$2, 0, $2)",
            tenant_id,
            entries,
        )
        await conn.execute(
            "INSERT INTO jobs (tenant_id, job_id, source_id, job_type, payload, priority, status, attempt, "
            "max_attempts, run_after, cancel_requested, created_at, updated_at, finished_at) "
            "SELECT $1, 'job-' || n, 'bench', 'bench.replay', jsonb_build_object('n', n), 0, 'failed', 3, 3, "
            "now() - interval '1 hour', false, now() - interval '1 hour', now(), now() "
            "FROM generate_series(1, $2) AS n",
            tenant_id,
            entries,
        )
        await conn.execute(
            "INSERT INTO dead_letter_entries (tenant_id, entry_id, job_id, job_type, source_id, category, error_code, "
            "message, error_template, template_hash, payload, attempts, status, replay_count, "
            "first_dead_lettered_at, dead_lettered_at, updated_at) "
            "SELECT $1, 'dle-' || lpad(n::text, 7, '0'), 'job-' || n, 'bench.replay', 'bench', 'transient', "
            "'upstream.timeout', 'upstream timed out after ' || n || ' ms', 'upstream timed out after <n> ms', "
            "'0123456789abcdef', jsonb_build_object('n', n), 3, 'pending', 0, "
            "now() - interval '1 minute' * (n % 600), now() - interval '1 minute' * (n % 600), now() "
            "FROM generate_series(1, $2) AS n",
            tenant_id,
            entries,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def measure(env: dict[str, str], entries: int) -> dict[str, object]:
    os.environ.update(env)
    from sqlalchemy import func, select

    from app.engine.replays import advance_replays
    from app.server import create_app
    from app.settings import load_settings
    from app.storage.models import Job, OperationRun

    token = subprocess.run(
        [sys.executable, "-m", "app.cli", "token", "--tenant", "bench", "--scope", "orch:backfill"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    app = create_app(load_settings(env))
    runtime = app.state.runtime
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            rss_before = rss_mb()
            started = time.perf_counter()
            response = await client.post(
                "/jobengine/deadletter/replay/pending",
                json={"filter": {"jobType": "bench.replay"}, "maxEntries": entries, "ratePerSecond": 100_000},
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Stella-Tenant": "bench",
                    "X-Stella-Operator-Reason": "benchmark",
                },
            )
            accepted_after = time.perf_counter() - started
            assert response.status_code == 202, response.text
            run_id = response.json()["operationRunId"]
            rss_peak = rss_mb()
            while True:
                await advance_replays(runtime, budget_seconds=2.0)
                rss_peak = max(rss_peak, rss_mb())
                async with runtime.sessions() as session:
                    run = await session.get(OperationRun, run_id)
                    if run.status == "completed":
                        break
                if time.perf_counter() - started > 600:
                    raise SystemExit("the run did not complete within 10 minutes")
            elapsed = time.perf_counter() - started
            async with runtime.sessions() as session:
                jobs = (
                    await session.execute(
                        select(func.count()).select_from(Job).where(Job.replay_of_entry_id.is_not(None))
                    )
                ).scalar_one()
            return {
                "entries": entries,
                "accepted_seconds": round(accepted_after, 3),
                "seconds": round(elapsed, 2),
                "replays_per_second": round(entries / elapsed),
                "jobs_created": jobs,
                "outcome": run.outcome,
                "summary_counts": run.summary_counts,
                "rss_before_mb": round(rss_before, 1),
                "rss_peak_mb": round(rss_peak, 1),
                "rss_growth_mb": round(rss_peak - rss_before, 1),
            }
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
    database = f"jobgate_bench_replay_{secrets.token_hex(4)}"
    url = f"{admin.rpartition('/')[0]}/{database}".replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")},
        "JOBGATE_DATABASE_URL": url,
        "JOBGATE_DATA_DIR": tempfile.mkdtemp(prefix="jobgate-bench-"),
        "JOBGATE_CURSOR_SECRET": "bench:" + "b" * 32,
    }

    async def run() -> dict[str, object]:
        try:
            await prepare(admin, database, args.entries, env)
            return await measure(env, args.entries)
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.close()
            shutil.rmtree(env["JOBGATE_DATA_DIR"], ignore_errors=True)

    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    ok = result["jobs_created"] == args.entries and float(result["seconds"]) <= 30  # type: ignore[arg-type]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Worker throughput: two `jobgate worker` processes on PostgreSQL drain N `demo.noop` jobs.

    .venv/bin/python bench/worker_throughput.py [--jobs 20000] [--workers 2] [--concurrency 200] [--batch 200]

Two runs in one command, each on a database of its own: the workers started without flags or
``JOBGATE_WORKER_*`` settings (the defaults), then tuned (``--concurrency``, ``JOBGATE_WORKER_BATCH``
= ``--batch``, ``JOBGATE_WORKER_POLL_SECONDS`` = 0.05).

Creates a throwaway database on ``BENCH_PG_ADMIN`` (default
postgresql://postgres@127.0.0.1:5432/postgres), migrates it, inserts the jobs of one tenant in
one statement (distinct ``run_after`` values, as jobs submitted over time), starts the workers and samples the job statuses every 100 ms until every job
succeeded. Reports jobs/s claimed (left the queue) and completed (succeeded), over the time from
the first claim to the last completion, and drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent


async def _create(admin: str, database: str) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{database}"')
    await conn.close()


def _prepare(admin: str, database: str, jobs: int) -> str:
    asyncio.run(_create(admin, database))
    base = admin.rpartition("/")[0]
    url = f"{base}/{database}".replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {**os.environ, "JOBGATE_DATABASE_URL": url, "JOBGATE_DATA_DIR": tempfile.mkdtemp()}
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "app.cli", "tenants", "add", "bench", "--workspace", "bench", "--create-workspace"], env=env,
                   cwd=ROOT, check=True, capture_output=True)
    asyncio.run(_fill(f"{base}/{database}", jobs))
    return url


async def _fill(dsn: str, jobs: int) -> None:
    conn = await asyncpg.connect(dsn)
    tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE key = 'bench'")
    await conn.execute(
        "INSERT INTO sources (tenant_id, source_id, name, source_type, enabled, created_at, updated_at, "
        "jobs_submitted, jobs_active, jobs_failed) VALUES ($1, 'bench', 'bench', 'bench', true, now(), now(), $2, 0, 0)",
        tenant_id, jobs,
    )
    await conn.execute(
        "INSERT INTO jobs (tenant_id, job_id, source_id, job_type, payload, priority, status, attempt, max_attempts, "
        "run_after, cancel_requested, created_at, updated_at) "
        "SELECT $1, 'job-' || g, 'bench', 'demo.noop', '{}'::jsonb, 0, 'pending', 0, 3, "
        # submitted over the last minutes, as a real queue is (distinct run_after values)
        "now() - interval '10 minutes' + g * interval '10 microseconds', false, now(), now() "
        "FROM generate_series(1, $2) AS g",
        tenant_id, jobs,
    )
    await conn.execute("ANALYZE jobs")
    await conn.close()


async def _sample(dsn: str, jobs: int, timeout: float) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    first_claim = last_done = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            rows = dict(await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status"))
            now = time.monotonic()
            queued = rows.get("pending", 0) + rows.get("scheduled", 0)
            if first_claim is None and queued < jobs:
                first_claim = now
            if rows.get("succeeded", 0) == jobs:
                last_done = now
                break
            await asyncio.sleep(0.1)
        claimed_at = await conn.fetchval("SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM jobs")
        done_at = await conn.fetchval("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs")
        succeeded = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND attempt = 1")
    finally:
        await conn.close()
    if last_done is None:
        raise SystemExit(f"not drained within {timeout}s")
    return {
        "jobs": jobs,
        "succeeded_first_attempt": succeeded,
        "claim_seconds": round(float(claimed_at), 3),
        "complete_seconds": round(float(done_at), 3),
        "claimed_per_second": round(jobs / float(claimed_at), 1),
        "completed_per_second": round(jobs / float(done_at), 1),
    }


def drain(admin: str, jobs: int, workers: int, flags: list[str], settings: dict[str, str]) -> dict[str, float]:
    database = f"jobgate_bench_{secrets.token_hex(4)}"
    url = _prepare(admin, database, jobs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_WORKER_")}
    env.update({"JOBGATE_DATABASE_URL": url, "JOBGATE_DATA_DIR": tempfile.mkdtemp(), **settings})
    processes = [
        subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *flags, "--worker-id", f"bench-{n}"], env=env,
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in range(workers)
    ]
    try:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        return asyncio.run(_sample(dsn, jobs, timeout=600))
    finally:
        for worker in processes:
            worker.send_signal(signal.SIGTERM)
        for worker in processes:
            worker.wait(30)

        async def drop() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.close()

        asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
    default = drain(admin, args.jobs, args.workers, [], {})
    default.update(workers=args.workers, settings="defaults (no flags, no JOBGATE_WORKER_* settings)")
    tuned = drain(admin, args.jobs, args.workers, ["--concurrency", str(args.concurrency)],
                  {"JOBGATE_WORKER_BATCH": str(args.batch), "JOBGATE_WORKER_POLL_SECONDS": "0.05"})
    tuned.update(workers=args.workers, concurrency=args.concurrency, batch=args.batch)
    print(json.dumps({"default": default, "tuned": tuned}, indent=2))


if __name__ == "__main__":
    main()

"""Deep keyset paging of the dead-letter list against OFFSET, through a running ``jobgate serve``.

    .venv/bin/python bench/deep_paging.py [--entries 2000000] [--depth 1000000] [--repeat 25]

Creates a throwaway database on ``BENCH_PG_ADMIN`` (default
postgresql://postgres@127.0.0.1:5432/postgres) and a Redis key prefix of its own, migrates the
database, loads N dead-letter entries of one tenant with COPY (the secondary indexes are dropped
for the load and rebuilt from their own definitions afterwards, then ``ANALYZE``), and starts
``jobgate serve`` (one worker) on it. It then measures, each as the median of ``--repeat``
requests in alternating order:

- ``first``: GET ``/jobengine/deadletter?limit=50``;
- ``deep``: the same request with the continuation token of the position after ``--depth`` rows,
  computed with the gateway's own ``CursorCodec`` and ``PageScope`` exactly as
  ``app.domain.deadletter.service.list_entries`` builds them (its first item is checked against
  the row the OFFSET query returns first);
- ``offset`` (contrast, raw asyncpg, no HTTP): the same 50 rows by ``OFFSET depth``, and the
  first page by ``OFFSET 0`` for its own ratio.

Target: deep ≤ 1.5 × first. Everything it creates is removed at the end, also on failure;
results go to ``bench/results/`` (not versioned).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

TENANT = "bench"
COLUMNS = (
    "tenant_id", "entry_id", "project_id", "job_id", "job_type", "source_id", "category", "error_code",
    "message", "error_template", "template_hash", "payload", "attempts", "status", "replay_count",
    "first_dead_lettered_at", "dead_lettered_at", "updated_at",
)  # fmt: skip
LIST = "/jobengine/deadletter?limit=50"
ORDER_SQL = "ORDER BY dead_lettered_at DESC, entry_id DESC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dsn_of(admin: str, database: str) -> str:
    return f"{admin.rpartition('/')[0]}/{database}"


class Environment:
    """A throwaway database + Redis prefix + data dir, and a gateway process on them."""

    def __init__(self, label: str) -> None:
        self.admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
        self.redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.database = f"jobgate_bench_{label}_{secrets.token_hex(4)}"
        self.prefix = f"jobgate-bench-{secrets.token_hex(4)}:"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"jobgate-bench-{label}-"))
        self.dsn = dsn_of(self.admin, self.database)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")},
            "JOBGATE_DATABASE_URL": self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
            "JOBGATE_REDIS_URL": self.redis_url,
            "JOBGATE_REDIS_PREFIX": self.prefix,
            "JOBGATE_DATA_DIR": str(self.workdir / "data"),
            "JOBGATE_CURSOR_SECRET": "bench:" + secrets.token_hex(16),
            "JOBGATE_RATE_LIMIT": "1000000/second",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "gateway.log"
        self.url = ""

    def cli(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *argv],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"jobgate {' '.join(argv)} failed: {done.stderr[-2000:]}")
        return done.stdout.strip()

    async def create(self) -> int:
        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()
        self.cli("db", "upgrade")
        self.cli("tenants", "add", TENANT, "--workspace", TENANT, "--create-workspace")
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval("SELECT id FROM tenants WHERE key = $1", TENANT))
        finally:
            await conn.close()

    def token(self, scope: str) -> str:
        return self.cli("token", "--tenant", TENANT, "--scope", scope)

    def serve(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1"],
                env={**self.env, "JOBGATE_PUBLIC_URL": self.url},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    async def destroy(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(self.redis_url)
            for key in client.scan_iter(match=self.prefix + "*", count=1000):
                client.delete(key)
            client.close()
        for path in sorted(self.workdir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        self.workdir.rmdir()


@contextlib.asynccontextmanager
async def environment(label: str) -> AsyncIterator[Environment]:
    env = Environment(label)
    try:
        yield env
    finally:
        await env.destroy()


async def bulk_load(dsn: str, rows: Iterable[tuple[Any, ...]], chunk: int = 100_000) -> float:
    """COPY the rows into dead_letter_entries with its secondary indexes dropped, rebuild them, ANALYZE."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        indexes = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'dead_letter_entries' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == chunk:
                await conn.copy_records_to_table("dead_letter_entries", records=batch, columns=COLUMNS)
                batch = []
        if batch:
            await conn.copy_records_to_table("dead_letter_entries", records=batch, columns=COLUMNS)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("VACUUM ANALYZE dead_letter_entries")
    finally:
        await conn.close()
    return time.perf_counter() - started


def entry_row(
    tenant_id: int,
    n: int,
    at: datetime,
    *,
    category: str,
    code: str,
    message: str,
    template: str,
    hash_: str,
    status: str = "pending",
) -> tuple[Any, ...]:
    return (
        tenant_id, f"dle-{n:08d}", None, f"job-{n:08d}", "bench.deadletter", "bench", category, code,
        message, template, hash_, "{}", 3, status, 0, at, at, at,
    )  # fmt: skip


def deep_rows(tenant_id: int, entries: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    # Three entries share each instant, so the keyset's tie-breaker (entry_id) is exercised.
    for n in range(entries):
        at = now - timedelta(seconds=n // 3)
        yield entry_row(
            tenant_id, n, at, category="transient", code="upstream.timeout",
            message=f"upstream timed out after {n % 1000} ms", template="upstream timed out after <n> ms",
            hash_="0123456789abcdef",
        )  # fmt: skip


def timed_get(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:500]}")
    return elapsed * 1000, response


async def timed_sql(conn: asyncpg.Connection, sql: str, *args: Any) -> tuple[float, list[asyncpg.Record]]:
    started = time.perf_counter()
    rows = await conn.fetch(sql, *args)
    return (time.perf_counter() - started) * 1000, rows


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


def deep_token(env: dict[str, str], last_key: list[Any]) -> str:
    """The token ``list_entries`` issues after the row ``last_key``, built with the gateway's own code."""
    from app.core.cursors import CursorCodec, PageScope
    from app.domain.deadletter.service import ORDER, EntryFilter
    from app.settings import load_settings

    settings = load_settings(env)
    scope = PageScope(TENANT, None, "deadletter", EntryFilter().binding(), ORDER.name)
    return CursorCodec(settings.cursor_secrets).encode(last_key, scope)


def write_result(name: str, result: dict[str, Any]) -> Path:
    out = BENCH / "results" / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    async with environment("paging") as env:
        tenant_id = await env.create()
        now = datetime.now(UTC).replace(microsecond=0)
        log(f"loading {args.entries:,} entries with COPY ...")
        load_seconds = await bulk_load(env.dsn, deep_rows(tenant_id, args.entries, now))
        log(f"loaded and indexed in {load_seconds:.1f} s")
        token = env.token("orch:operate")
        env.serve()
        headers = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
        conn = await asyncpg.connect(env.dsn)
        try:
            select = f"SELECT * FROM dead_letter_entries WHERE tenant_id = $1 {ORDER_SQL} LIMIT 50 OFFSET $2"
            boundary = await conn.fetchrow(
                f"SELECT dead_lettered_at, entry_id FROM dead_letter_entries WHERE tenant_id = $1 {ORDER_SQL} "
                "LIMIT 1 OFFSET $2",
                tenant_id,
                args.depth - 1,
            )
            at = boundary["dead_lettered_at"].astimezone(UTC)
            deep = f"{LIST}&continuationToken={deep_token(env.env, [at.isoformat(), boundary['entry_id']])}"
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) "
                    + select.replace("$1", str(tenant_id)).replace("$2", str(args.depth))
                )
            )
            samples: dict[str, list[float]] = {"first": [], "deep": [], "offset_first": [], "offset_deep": []}
            with httpx.Client(base_url=env.url, timeout=60) as client:
                # Correctness: the deep page is the OFFSET page of the same depth.
                _, page = timed_get(client, deep, headers)
                _, rows = await timed_sql(conn, select, tenant_id, args.depth)
                got = [item["entryId"] for item in page.json()["items"]]
                want = [r["entry_id"] for r in rows]
                if got != want:
                    raise RuntimeError(f"deep page differs from OFFSET page: {got[:3]} vs {want[:3]}")
                for _ in range(3):  # warm-up
                    timed_get(client, LIST, headers)
                    timed_get(client, deep, headers)
                for i in range(args.repeat):
                    pair = [("first", LIST), ("deep", deep)]
                    for name, url in pair if i % 2 == 0 else reversed(pair):
                        samples[name].append(timed_get(client, url, headers)[0])
                    samples["offset_first"].append((await timed_sql(conn, select, tenant_id, 0))[0])
                    samples["offset_deep"].append((await timed_sql(conn, select, tenant_id, args.depth))[0])
        finally:
            await conn.close()
        measured = {name: summary(values) for name, values in samples.items()}
        ratio = measured["deep"]["median_ms"] / measured["first"]["median_ms"]
        return {
            "benchmark": "deep_paging",
            "entries": args.entries,
            "depth": args.depth,
            "repeat": args.repeat,
            "load_seconds": round(load_seconds, 1),
            "http": {
                "first": measured["first"],
                "deep": measured["deep"],
                "deep_over_first": round(ratio, 2),
            },
            "offset_sql": {
                "first": measured["offset_first"],
                "deep": measured["offset_deep"],
                "deep_over_first": round(
                    measured["offset_deep"]["median_ms"] / measured["offset_first"]["median_ms"], 1
                ),
            },
            "offset_deep_plan": plan,
            "target": {"deep_over_first_max": 1.5, "met": ratio <= 1.5},
            "machine": machine(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--depth", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    result = asyncio.run(run(args, lambda m: print(m, file=sys.stderr, flush=True)))
    out = write_result("deep_paging", result)
    print(json.dumps({k: v for k, v in result.items() if k != "offset_deep_plan"}, indent=2))
    print(f"written to {out}", file=sys.stderr)
    sys.exit(0 if result["target"]["met"] else 1)


if __name__ == "__main__":
    main()

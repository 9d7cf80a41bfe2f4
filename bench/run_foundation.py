"""The foundation benchmark: the gateway against two ceilings measured in the same run.

    .venv/bin/python bench/run_foundation.py [--duration 6] [--rounds 3] [--profile]

It starts, under the same granian settings as ``jobgate serve`` (one worker, ASGI, no access
log), three servers on this machine:

1. the gateway on PostgreSQL + Redis, with a tenant holding 100,000 sources;
2. ``bench/baseline_db.py``: a bare Litestar handler running the gateway's keyset query with
   raw asyncpg and returning the same 50 items, no authentication (the database-bound ceiling);
3. ``bench/baseline_static.py``: a bare Litestar handler returning the same 50-item page from
   memory (the framework ceiling).

Then it measures with ``wrk`` GET ``/jobengine/sources?limit=50`` on each (the gateway with a
valid ES256 token) and the gateway's 304 revalidation of that request: with the ETag of a first
request (as specified) and with the ETag of the latest 200 each client received. Every load runs
several rounds in alternating order, because the machine is shared and noisy; the medians are
compared as ratios to the ceilings measured in the same run. Beside requests/s and p99 it
records the server's CPU time per request (from /proc, robust against a busy machine) and the
PostgreSQL connections opened during each load. ``--profile`` adds a py-spy sample of the
servers under load and the in-process CPU cost of each gateway layer (bench/gateway_layers.py).

Everything it creates (database, Redis keys under its own prefix, processes, temporary files)
is removed at the end, also on failure. Results go to ``bench/results/`` (not versioned).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
SOURCES = 100_000
TENANT = "bench"
ISSUER = "https://issuer.bench.local"
AUDIENCE = "stella-jobengine-bench"
PATH = "/jobengine/sources?limit=50"
TARGETS = {"list": 0.80, "revalidate": 0.90}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def fail(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


# --- data --------------------------------------------------------------------------------------

SOURCE_COLUMNS = [
    "tenant_id", "source_id", "project_id", "name", "source_type", "enabled", "description",
    "created_at", "updated_at", "last_job_at", "jobs_submitted", "jobs_active", "jobs_failed",
]  # fmt: skip


def source_rows(tenant_id: int) -> list[tuple[Any, ...]]:
    """Unique zero-padded names: the first page (name, sourceId order) is sources 0-49."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    types = ("http", "queue", "cron", "webhook")
    projects = (None, "alpha", "beta")
    return [
        (
            tenant_id,
            f"src-{i:06d}",
            projects[i % 3],
            f"source {i:06d}",
            types[i % 4],
            i % 7 != 0,
            f"Benchmark source number {i}, feeding {types[i % 4]} jobs",
            base + timedelta(seconds=i),
            base + timedelta(seconds=i, minutes=5),
            None if i % 5 == 0 else base + timedelta(hours=1, seconds=i),
            i % 1000,
            i % 10,
            i % 13,
        )
        for i in range(SOURCES)
    ]


async def create_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def seed_sources(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        tenant_id = await connection.fetchval("SELECT id FROM tenants WHERE key = $1", TENANT)
        await connection.copy_records_to_table(
            "sources", records=source_rows(tenant_id), columns=SOURCE_COLUMNS
        )
        await connection.execute("VACUUM ANALYZE sources")
        return int(tenant_id)
    finally:
        await connection.close()


def signing_key(folder: Path, scope: str = "orch:read") -> tuple[Path, str]:
    """A JWKS file with one ES256 key, and a token for the bench tenant signed with it."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private))
    jwk.update(kid="bench-es256", alg="ES256", use="sig")
    jwks_path = folder / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [{k: v for k, v in jwk.items() if k != "d"}]}))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-reader",
        "client_id": "bench",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scope": scope,
        "tenant": TENANT,
    }
    return jwks_path, jwt.encode(claims, private, algorithm="ES256", headers={"kid": "bench-es256"})


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    cwd: Path = ROOT  # the checkout it runs from

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped together with its workers
        )

    def wait_ready(self, path: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                fail(f"{self.name} exited during start-up:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        fail(f"{self.name} did not become ready in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its workers so far."""
        assert self.process is not None
        total = 0.0
        for pid in [self.process.pid, *self.worker_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        return total

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGINT)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Load:
    key: str
    label: str
    server: Server
    headers: dict[str, str] = field(default_factory=dict)
    expect: int = 200
    follow_etag: bool = False
    path: str = PATH
    body_file: str = ""  # POST this file's content instead of a GET
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def rps(self) -> float:
        return statistics.median(r["rps"] for r in self.rounds)

    def p99_ms(self) -> float:
        return statistics.median(r["p99_ms"] for r in self.rounds)

    def cpu_ms(self) -> float:
        return statistics.median(r["server_cpu_ms_per_request"] for r in self.rounds)

    def expected_share(self) -> float:
        return min(r["expected_share"] for r in self.rounds)


class Sessions:
    """Counts PostgreSQL connections opened in the benchmark database (pg_stat_database.sessions)."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.connection = self.loop.run_until_complete(asyncpg.connect(dsn))

    def count(self) -> int:
        query = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        return int(self.loop.run_until_complete(self.connection.fetchval(query)) or 0)

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.close()


def run_wrk(
    load: Load, seconds: int, threads: int, connections: int, sessions: Sessions | None = None
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_TOKEN": load.headers.get("Authorization", "").removeprefix("Bearer "),
        "BENCH_TENANT": load.headers.get("X-Stella-Tenant", ""),
        "BENCH_IF_NONE_MATCH": load.headers.get("If-None-Match", ""),
        "BENCH_FOLLOW_ETAG": "1" if load.follow_etag else "",
        "BENCH_BODY_FILE": load.body_file,
    }
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(BENCH / "wrk.lua"), load.server.url + load.path,
    ]  # fmt: skip
    opened, cpu = (sessions.count() if sessions else 0), load.server.cpu_seconds()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    cpu = load.server.cpu_seconds() - cpu
    opened = (sessions.count() if sessions else 0) - opened
    line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        fail(f"wrk printed no result for {load.label}:\n{out}")
    raw = json.loads(line.removeprefix("BENCH "))
    expected = raw["status_304" if load.expect == 304 else "status_200"]
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "expected_share": expected / max(1, raw["requests"]),
        "server_cpu_ms_per_request": 1000 * cpu / max(1, raw["requests"]),
        "pg_connections_opened": opened,
        **raw,
    }


def measure(loads: list[Load], args: argparse.Namespace, sessions: Sessions) -> None:
    for load in loads:  # warm-up: connection pools, statement caches, first-use paths
        run_wrk(load, args.warmup, args.threads, args.connections)
    for index in range(args.rounds):
        order = loads if index % 2 == 0 else list(reversed(loads))
        for load in order:
            result = run_wrk(load, args.duration, args.threads, args.connections, sessions)
            load.rounds.append(result)
            print(
                f"  round {index + 1}  {load.label:<40}{result['rps']:>8.0f} req/s  p99 {result['p99_ms']:>6.1f} ms  "
                f"{result['server_cpu_ms_per_request']:>5.2f} ms CPU/req  "
                f"{result['expected_share']:>6.1%} {load.expect}  {result['pg_connections_opened']} new PG conn",
                flush=True,
            )


def profile(load: Load, seconds: int, args: argparse.Namespace, out: Path) -> dict[str, Any] | None:
    """Sample the gateway worker with py-spy while wrk drives ``load``; summarise the stacks."""
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
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
    run_wrk(load, seconds, args.threads, args.connections)
    spy.wait(timeout=seconds + 30)
    if not raw.exists():
        print(f"  (py-spy failed: {spy.stderr.read().decode()[-500:] if spy.stderr else ''})")
        return None
    return summarise_stacks(raw)


def _frame(text: str) -> str:
    """A py-spy frame ``func (path/module.py:12)`` as ``func (package/module.py)``, without the line."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


# Where a sample's time goes: the first rule matching a frame, walking from the leaf to the root.
# SQLAlchemy's sync work runs in greenlets, whose stacks py-spy reports without the request's
# frames above them, hence the rules on ``Session.execute``/``Session.close``.
BUCKETS = (
    ("PostgreSQL BEGIN (the session opens a transaction)", ("_start_transaction",)),
    (
        "PostgreSQL ROLLBACK and session close",
        ("Transaction.rollback", "AsyncSession.close", "Session.close"),
    ),
    ("SELECT: prepare cache, bind, fetch (SQLAlchemy asyncpg adapter)", ("_prepare_and_execute",)),
    ("ORM: Source objects from rows (instances, identity map)", ("instances (sqlalchemy/orm/loading.py)",)),
    ("ORM execute: cache key, compiled cache, result setup", ("Session.execute", "greenlet_spawn")),
    ("view(): Source objects to SourceView", ("view (app/domain/sources/service.py)",)),
    ("statement building and paging token", ("fetch_page", "list_sources (app/domain/sources/service.py)")),
    ("JWT verification (ES256, PyJWT)", ("TokenVerifier.verify",)),
    ("rate limit (Redis GCRA round trip)", ("Envelope.rate_limit", "(redis/")),
    ("tenant lookup", ("Envelope.establish",)),
    ("JSON encode, ETag, cache headers", ("GatewayResponse.to_asgi_response",)),
    ("baseline handler: asyncpg fetch, Structs, encode", ("(baseline_db.py)", "(bench/baseline_db.py)")),
    ("Litestar dependency injection (an anyio task group per request)", ("resolve_dependency", "(anyio/")),
    (
        "Litestar routing, parameters, response send; envelope glue",
        ("EnvelopeMiddleware", "Litestar.__call__"),
    ),
)


def bucket_of(frames: list[str]) -> str:
    if not frames:
        return "no Python frame (granian runtime, waiting for the GIL)"
    for frame in reversed(frames):
        for label, markers in BUCKETS:
            if any(frame.startswith(m) or m in frame for m in markers):
                return label
    return "server runtime, event loop and socket I/O outside a request frame"


def summarise_stacks(raw: Path) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if frames and frames[0].startswith("_run_module_as_main"):
            frames = frames[1:]
        total += count
        buckets[bucket_of(frames)] += count
        if frames:
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count

    def top(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * c / max(1, total), 1)) for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "buckets": top(buckets, len(BUCKETS) + 2),
        "self_top": top(own, 25),
        "inclusive_top": top(inclusive, 60),
    }


# --- the run -----------------------------------------------------------------------------------



@dataclass
class BenchEnvironment:
    admin_url: str
    redis_url: str
    db_name: str
    prefix: str
    workdir: Path
    servers: list[Server]


@contextlib.contextmanager
def bench_environment() -> Iterator[BenchEnvironment]:
    """A throwaway database, a Redis key prefix and a work folder; all removed at the end, with
    every server started into ``servers``, also when the benchmark fails."""
    admin_url = os.environ.get("JOBGATE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("JOBGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    run_id = uuid.uuid4().hex[:10]
    env = BenchEnvironment(
        admin_url, redis_url, f"jobgate_bench_{run_id}", f"jobgate-bench-{run_id}:",
        Path(tempfile.mkdtemp(prefix="jobgate-bench-")), [],
    )
    created_db = False
    try:
        try:
            asyncio.run(create_database(admin_url, env.db_name))
        except (OSError, asyncpg.PostgresError) as exc:
            fail(f"PostgreSQL at {admin_url} is unusable ({exc}); set JOBGATE_BENCH_DATABASE_URL")
        created_db = True
        import redis

        try:
            redis.Redis.from_url(redis_url).ping()
        except redis.RedisError as exc:
            fail(f"Redis at {redis_url} is unusable ({exc}); set JOBGATE_BENCH_REDIS_URL")
        yield env
    finally:
        for server in env.servers:
            server.stop()
        if created_db:
            asyncio.run(drop_database(admin_url, env.db_name))
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=env.prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning
            print(f"bench: could not delete Redis keys {env.prefix}* ({exc})", file=sys.stderr)
        shutil.rmtree(env.workdir, ignore_errors=True)

def load_options(doc: str, *, duration: int, rounds: int) -> argparse.ArgumentParser:
    """The options of every wrk-driven benchmark (what ``measure`` reads)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=duration, help=f"seconds per measurement (default {duration})")
    parser.add_argument("--rounds", type=int, default=rounds, help="measurements per load, alternating order")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per load (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the CPU is shared)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    return parser


def main() -> None:
    parser = load_options(__doc__, duration=6, rounds=3)
    parser.add_argument("--profile", action="store_true", help="also sample the gateway with py-spy")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        fail("wrk is not installed; install it with: apt-get install wrk")
    with bench_environment() as env:
        run(args, env.admin_url, env.redis_url, env.db_name, env.prefix, env.workdir, env.servers)


def gateway_settings(
    pg_dsn: str, redis_url: str, prefix: str, jwks_path: Path, workdir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of any benchmark process, and the gateway's production settings on top."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    base_env["PYTHONPATH"] = str(ROOT)
    gateway_env = {
        **base_env,
        "JOBGATE_ENV": "prod",
        "JOBGATE_DATABASE_URL": pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        "JOBGATE_REDIS_URL": redis_url,
        "JOBGATE_REDIS_PREFIX": prefix,
        "JOBGATE_AUTH_JWKS_FILE": str(jwks_path),
        "JOBGATE_AUTH_ISSUER": ISSUER,
        "JOBGATE_AUTH_AUDIENCE": AUDIENCE,
        "JOBGATE_CURSOR_SECRET": "bench:" + uuid.uuid4().hex,
        "JOBGATE_RATE_LIMIT": "1000000/second",
        "JOBGATE_DATA_DIR": str(workdir / "data"),
        "JOBGATE_PUBLIC_URL": "http://gateway.bench",
    }
    return base_env, gateway_env


def prepare_tenant(gateway_env: dict[str, str]) -> None:
    """Migrate the throwaway database and register the bench tenant."""
    for argv in (["db", "upgrade"], ["tenants", "add", TENANT, "--workspace", TENANT, "--create-workspace"]):
        done = subprocess.run(
            [PYTHON, "-m", "app.cli", *argv],
            cwd=ROOT,
            env=gateway_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            fail(f"jobgate {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


def new_server(servers: list[Server], workdir: Path, name: str, env: dict[str, str], *argv: str) -> Server:
    """A server on a free port (``{port}`` in ``argv``), stopped with the environment."""
    port = free_port()
    argv_ = [a.replace("{port}", str(port)) for a in argv]
    s = Server(name, port, argv_, env, workdir / f"{name}.log")
    servers.append(s)
    return s


def run(
    args: argparse.Namespace,
    admin_url: str,
    redis_url: str,
    db_name: str,
    prefix: str,
    workdir: Path,
    servers: list[Server],
) -> dict[str, Any]:
    pg_dsn = with_database(admin_url, db_name)
    jwks_path, token = signing_key(workdir)
    base_env, gateway_env = gateway_settings(pg_dsn, redis_url, prefix, jwks_path, workdir)

    print(f"database {db_name}, Redis prefix {prefix}")
    prepare_tenant(gateway_env)
    started = time.monotonic()
    tenant_id = asyncio.run(seed_sources(pg_dsn))
    print(f"seeded {SOURCES:,} sources for tenant {TENANT!r} in {time.monotonic() - started:.1f} s")

    def server(name: str, env: dict[str, str], *argv: str) -> Server:
        return new_server(servers, workdir, name, env, *argv)

    gateway = server(
        "gateway", gateway_env, PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1"
    )
    db_env = {**base_env, "BENCH_PG_DSN": pg_dsn, "BENCH_TENANT_ID": str(tenant_id)}
    database = server(
        "baseline-db", db_env, PYTHON, str(BENCH / "serve.py"), "bench.baseline_db:create_app", "{port}"
    )
    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
    for s in (gateway, database):
        s.start()
    gateway.wait_ready("/healthz")
    database.wait_ready(PATH)

    # The gateway's own first page: its ETag drives the revalidation, its body the static page.
    first = httpx.get(gateway.url + PATH, headers=auth, timeout=10)
    if first.status_code != 200:
        fail(f"the gateway answered {first.status_code} to the benchmark request: {first.text[:500]}")
    etag = first.headers["etag"]
    body_path = workdir / "page.json"
    body_path.write_bytes(first.content)
    gateway_page, db_page = first.json(), httpx.get(database.url + PATH, timeout=10).json()
    if len(gateway_page["items"]) != 50 or gateway_page["items"] != db_page["items"]:
        fail("the database baseline does not return the gateway's 50 items")
    check = httpx.get(gateway.url + PATH, headers={**auth, "If-None-Match": etag}, timeout=10)
    print(
        f"gateway page: {len(first.content):,} bytes, ETag {etag}; immediate revalidation: {check.status_code}"
    )

    static_env = {**base_env, "BENCH_STATIC_BODY": str(body_path)}
    static = server(
        "baseline-static",
        static_env,
        PYTHON,
        str(BENCH / "serve.py"),
        "bench.baseline_static:create_app",
        "{port}",
    )
    static.start()
    static.wait_ready(PATH)
    if httpx.get(static.url + PATH, timeout=10).json()["items"] != gateway_page["items"]:
        fail("the static baseline does not return the gateway's 50 items")

    revalidate = {**auth, "If-None-Match": etag}
    loads = [
        Load("list", "gateway list (ES256 Bearer)", gateway, auth),
        Load("revalidate", "gateway 304 revalidation (first ETag)", gateway, revalidate, expect=304),
        Load("revalidate_current", "gateway 304 revalidation (current ETag)", gateway, revalidate, 304, True),
        Load("db_ceiling", "baseline: raw asyncpg (DB ceiling)", database),
        Load("framework_ceiling", "baseline: static (framework ceiling)", static),
    ]
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds in alternating order "
        f"(+{args.warmup} s warm-up each), GET {PATH}"
    )
    sessions = Sessions(pg_dsn)
    try:
        measure(loads, args, sessions)
    finally:
        sessions.close()

    by_key = {load.key: load for load in loads}
    db_rps, fw_rps = by_key["db_ceiling"].rps(), by_key["framework_ceiling"].rps()
    ratios = {
        "list_vs_db_ceiling": by_key["list"].rps() / db_rps,
        "revalidate_vs_db_ceiling": by_key["revalidate"].rps() / db_rps,
        "revalidate_current_vs_db_ceiling": by_key["revalidate_current"].rps() / db_rps,
        "revalidate_vs_framework_ceiling": by_key["revalidate"].rps() / fw_rps,
        "db_ceiling_vs_framework_ceiling": db_rps / fw_rps,
    }
    # A revalidation only counts when it is answered 304 (99 % of the answers or more).
    targets = {
        "list_vs_db_ceiling": (TARGETS["list"], ratios["list_vs_db_ceiling"] >= TARGETS["list"]),
        "revalidate_vs_db_ceiling": (
            TARGETS["revalidate"],
            ratios["revalidate_vs_db_ceiling"] >= TARGETS["revalidate"]
            and by_key["revalidate"].expected_share() >= 0.99,
        ),
    }
    summary = {
        "loads": {
            load.key: {
                "label": load.label,
                "rps": round(load.rps()),
                "p99_ms": round(load.p99_ms(), 1),
                "server_cpu_ms_per_request": round(load.cpu_ms(), 3),
                "expected_status": load.expect,
                "expected_share": round(load.expected_share(), 4),
                "pg_connections_opened": sum(r["pg_connections_opened"] for r in load.rounds),
            }
            for load in loads
        },
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {k: {"target": t, "met": met} for k, (t, met) in targets.items()},
    }

    print()
    print(f"{'load':<42}{'req/s':>8}{'p99 ms':>9}{'CPU ms/req':>12}{'answered as expected':>23}")
    for load in loads:
        print(
            f"{load.label:<42}{load.rps():>8.0f}{load.p99_ms():>9.1f}{load.cpu_ms():>12.2f}"
            f"{load.expected_share():>17.1%} {load.expect}"
        )
    print()
    for name, ratio in ratios.items():
        verdict = ""
        if name in targets:
            target, met = targets[name]
            verdict = f"  target >= {target:.2f}: {'met' if met else 'MISSED'}"
        print(f"{name:<36}{ratio:>7.3f}{verdict}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    document = {
        "benchmark": "foundation",
        "when": stamp,
        "machine": machine(),
        "command": " ".join([".venv/bin/python", "bench/run_foundation.py", *sys.argv[1:]]),
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration,
                "rounds": args.rounds, "warmup_s": args.warmup, "path": PATH},
        "sources": SOURCES,
        "page_bytes": len(first.content),
        "summary": summary,
        "rounds": {load.key: load.rounds for load in loads},
        "profiles": {},
    }  # fmt: skip
    out = results_dir / f"foundation-{stamp}.json"
    out.write_text(json.dumps(document, indent=2))
    if args.profile:
        print("\nprofiling with py-spy (share of the server's Python samples) ...")
        for key in ("list", "revalidate_current", "db_ceiling"):
            stacks = profile(by_key[key], args.duration, args, results_dir / f"foundation-{stamp}-{key}")
            if stacks:
                document["profiles"][key] = stacks
                print(f"\n{by_key[key].label}: {stacks['samples']} samples")
                for name, pct in stacks["buckets"]:
                    print(f"  {pct:5.1f}%  {name}")
        layers = measure_layers(gateway_env, token, pg_dsn)
        if layers:
            document["profiles"]["layers_cpu_ms"] = layers
            print("\nCPU per call of each gateway layer, in-process (bench/gateway_layers.py):")
            for name, ms in layers.items():
                print(f"  {ms:6.3f} ms  {name}")
        out.write_text(json.dumps(document, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return document


def measure_layers(gateway_env: dict[str, str], token: str, pg_dsn: str) -> dict[str, float] | None:
    env = {**gateway_env, "BENCH_TOKEN": token, "BENCH_PG_DSN": pg_dsn}
    done = subprocess.run(
        [PYTHON, str(BENCH / "gateway_layers.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        print(f"  (layer measurement failed: {done.stderr[-800:]})")
        return None
    return json.loads(lines[-1])


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    model = next(
        (
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        ),
        "unknown",
    )
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    packages = ("granian", "litestar", "msgspec", "sqlalchemy", "asyncpg", "pyjwt", "redis")

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "revision": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "modified_files": len(git("status", "--porcelain").splitlines()),
        },
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_average_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "versions": {**{name: version(name) for name in packages}, "wrk": " ".join(wrk_version).strip()},
    }


if __name__ == "__main__":
    main()

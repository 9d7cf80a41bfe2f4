"""Every list route of the gateway against its own two ceilings, in one ``wrk`` run.

    .venv/bin/python bench/list_routes.py [--duration 5] [--rounds 2] [--routes sources,jobs]

The foundation benchmark (``bench/run_foundation.py``) measures the sources list; this one runs
the same loads for each list route: the gateway (production settings, one granian worker, a valid
ES256 token) beside

- the database-bound ceiling (``bench/baseline_routes.py:create_db_app``): the statements the
  gateway itself sent for the route's first page, captured in-process from its engine and its driver, replayed
  with raw asyncpg in a bare Litestar handler that answers the same rows as JSON;
- the framework ceiling (``create_static_app``): the gateway's own first page, encoded per request.

The bench tenant holds 100,000 sources, 100,000 jobs, 100,000 dead-letter entries (600 error
clusters), 60 quotas, 20,000 pack runs, 100,000 audit rows and 20,000 operation runs. Loads run
in alternating order for ``--rounds`` rounds; the medians are compared as ratios within the run
(the machine is shared), beside each server's CPU time per request. Everything it creates is
removed at the end (see ``bench_environment``); results go to ``bench/results/`` (not versioned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import shutil
import sys
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
    seed_sources,
    signing_key,
    with_database,
)

TARGET = 0.80
ALL_SCOPES = "orch:read orch:quota orch:operate orch:backfill"
# path (first page, 50 items) -> the page's array key and the sort columns of its keyset
ROUTES = {
    "/jobengine/sources": ("items", ("name", "source_id")),
    "/jobengine/quotas": ("items", ("job_type", "quota_id")),
    "/jobengine/jobs": ("items", ("created_at", "job_id")),
    "/jobengine/deadletter": ("items", ("dead_lettered_at", "entry_id")),
    "/jobengine/deadletter/summary": ("items", ("category", "error_code")),
    "/jobengine/pack-runs": ("items", ("created_at", "pack_run_id")),
    "/jobengine/audit": ("items", ("occurred_at", "id")),
    "/api/admin/operations": ("data", ("created_at", "id")),
}
LIMIT = 50

# Bulk rows beside the 100,000 sources, all of the bench tenant ($1), made by PostgreSQL itself.
SEED = (
    """INSERT INTO quotas (tenant_id, quota_id, job_type, max_active, max_per_hour, burst, paused,
                           created_at, updated_at)
       SELECT $1, 'quota-' || lpad(i::text, 4, '0'), 'type.' || lpad(i::text, 3, '0'), 10, 1000, 20,
              i % 7 = 0, now(), now() FROM generate_series(1, 60) i""",
    """INSERT INTO jobs (tenant_id, job_id, source_id, job_type, payload, priority, status, attempt,
                        max_attempts, run_after, created_at, updated_at, project_id, cancel_requested)
       SELECT $1, 'job-' || lpad(i::text, 7, '0'), 'src-' || lpad((i % 1000)::text, 6, '0'),
              'type.' || lpad((i % 60)::text, 3, '0'), jsonb_build_object('n', i), 0,
              (ARRAY['succeeded','failed','canceled','timed_out'])[i % 4 + 1], 1, 3,
              now() - interval '1 day', now() - i * interval '1 second', now(),
              (ARRAY[NULL,'alpha','beta'])[i % 3 + 1], false
         FROM generate_series(1, 100000) i""",
    """INSERT INTO dead_letter_entries (tenant_id, entry_id, job_id, job_type, source_id, category,
                        error_code, message, error_template, template_hash, payload, attempts, status,
                        replay_count, first_dead_lettered_at, dead_lettered_at, updated_at, project_id)
       SELECT $1, 'dle-' || lpad(i::text, 7, '0'), 'dlj-' || lpad(i::text, 7, '0'),
              'type.' || lpad((i % 60)::text, 3, '0'), 'src-' || lpad((i % 1000)::text, 6, '0'),
              (ARRAY['transient','permanent','policy','timeout','validation','quota','auth'])[i % 7 + 1],
              'E_' || (i % 40), 'step ' || (i % 600) || ' failed on item ' || i,
              'step ' || (i % 600) || ' failed on item <n>', md5('E_' || (i % 40) || (i % 600))::text,
              jsonb_build_object('n', i), 3, 'pending', 0, now() - i * interval '10 seconds',
              now() - i * interval '10 seconds', now(), (ARRAY[NULL,'alpha','beta'])[i % 3 + 1]
         FROM generate_series(1, 100000) i""",
    """INSERT INTO pack_runs (tenant_id, pack_run_id, pack_name, pack_version, status, steps_total,
                             steps_succeeded, steps_failed, initiated_by, created_at, updated_at)
       SELECT $1, 'pr-' || lpad(i::text, 6, '0'), 'pack-' || (i % 20), '1.' || (i % 5) || '.0',
              (ARRAY['succeeded','failed','canceled','partially_succeeded'])[i % 4 + 1], 5, 4, 1,
              'bench-operator', now() - i * interval '1 minute', now()
         FROM generate_series(1, 20000) i""",
    """INSERT INTO audit_log (occurred_at, tenant_id, subject, client_id, action, method, route, target,
                             reason, ticket, trace_id, result_status)
       SELECT now() - i * interval '1 second', $1, 'operator-' || (i % 9), 'console',
              'quota.pause', 'POST', '/jobengine/quotas/{quotaId}/pause', 'quota-' || (i % 60),
              'benchmark reason ' || i, 'OPS-' || i, md5(i::text), 200
         FROM generate_series(1, 100000) i""",
    """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash,
                                  summary_counts, failure_summary, context, initiator_name, started_at,
                                  completed_at, created_at, updated_at)
       SELECT (SELECT workspace_id FROM tenants WHERE id = $1), $1, 'pack.run', 'completed', 'succeeded',
              md5(i::text), '{"total": 5, "succeeded": 5}'::jsonb, '[]'::jsonb, '{}'::jsonb,
              'bench-operator', now() - i * interval '1 minute', now() - i * interval '1 minute',
              now() - i * interval '1 minute', now() - i * interval '1 minute'
         FROM generate_series(1, 20000) i""",
)


async def seed(pg_dsn: str) -> int:
    tenant_id = await seed_sources(pg_dsn)
    connection = await asyncpg.connect(pg_dsn)
    try:
        for statement in SEED:
            await connection.execute(statement, tenant_id)
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    return tenant_id


async def capture(gateway_env: dict[str, str], token: str, paths: list[str]) -> dict[str, dict[str, Any]]:
    """Each route's first page and the statements the gateway sent for it (a warm second request)."""
    from litestar.testing import AsyncTestClient
    from sqlalchemy import event

    os.environ.update({**gateway_env, "JOBGATE_LOG_LEVEL": "WARNING"})  # no access lines from the capture
    from app.server import create_app
    from app.settings import load_settings

    app = create_app(load_settings())
    engine = app.state.runtime.engine.sync_engine
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append((statement, tuple(parameters or ())))

    # List pages are read with asyncpg directly (app/storage/reads.py), past the engine's events.
    driver_fetch = asyncpg.Connection.fetch

    async def fetch(self, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        if capturing:
            sent.append((query, args))
        return await driver_fetch(self, query, *args, **kwargs)

    asyncpg.Connection.fetch = fetch  # type: ignore[method-assign]
    capturing = False

    headers = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
    out: dict[str, dict[str, Any]] = {}
    async with AsyncTestClient(app, base_url="http://gateway.bench") as client:
        for path in paths:
            url = f"{path}?limit={LIMIT}"
            first = await client.get(url, headers=headers)
            if first.status_code != 200:
                fail(f"{path}: the gateway answered {first.status_code}: {first.text[:400]}")
            sent.clear()
            capturing = True
            event.listen(engine, "before_cursor_execute", record)
            await client.get(url, headers=headers)
            event.remove(engine, "before_cursor_execute", record)
            capturing = False
            statements = [(s, p) for s, p in sent if s.lstrip().upper().startswith("SELECT")]
            if not statements:
                fail(f"{path}: no statement of the gateway was captured")
            page_key, key_columns = ROUTES[path]
            items = first.json()[page_key]
            if len(items) != LIMIT:
                fail(f"{path}: the first page has {len(items)} items, not {LIMIT}")
            out[path] = {
                "statements": statements,
                "limit": LIMIT,
                "key_columns": key_columns,
                "page_key": page_key,
                "body": first.content,
                "bytes": len(first.content),
            }
    return out


def main() -> None:
    parser = load_options(__doc__, duration=5, rounds=2)
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated paths (default: all)")
    args = parser.parse_args()
    paths = [p for p in args.routes.split(",") if p]
    unknown = [p for p in paths if p not in ROUTES]
    if unknown:
        fail(f"unknown routes {unknown}; known: {', '.join(ROUTES)}")
    if shutil.which("wrk") is None:
        fail("wrk is not installed; install it with: apt-get install wrk")
    with bench_environment() as env:
        run(args, paths, env)


def run(args: argparse.Namespace, paths: list[str], env: Any) -> None:
    pg_dsn = with_database(env.admin_url, env.db_name)
    jwks_path, token = signing_key(env.workdir, ALL_SCOPES)
    base_env, gateway_env = gateway_settings(pg_dsn, env.redis_url, env.prefix, jwks_path, env.workdir)
    print(f"database {env.db_name}, Redis prefix {env.prefix}")
    prepare_tenant(gateway_env)
    asyncio.run(seed(pg_dsn))
    captured = asyncio.run(capture(gateway_env, token, paths))
    routes_file = env.workdir / "routes.pickle"
    routes_file.write_bytes(pickle.dumps(captured))

    def server(name: str, extra: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
        return new_server(env.servers, env.workdir, name, {**base_env, **extra}, *argv)

    gateway = server("gateway", gateway_env, PYTHON, "-m", "app.cli", "serve", "--port", "{port}", "--workers", "1")
    baseline = {"BENCH_ROUTES": str(routes_file), "BENCH_PG_DSN": pg_dsn}
    database = server("baseline-db", baseline, PYTHON, str(BENCH / "serve.py"), "bench.baseline_routes:create_db_app", "{port}")
    static = server("baseline-static", baseline, PYTHON, str(BENCH / "serve.py"), "bench.baseline_routes:create_static_app", "{port}")
    for s in (gateway, database, static):
        s.start()
    gateway.wait_ready("/healthz")
    auth = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
    for path in paths:
        url = f"{path}?limit={LIMIT}"
        database.wait_ready(url)
        static.wait_ready(url)
        want = json.loads(captured[path]["body"])[ROUTES[path][0]]
        got = httpx.get(database.url + url, timeout=10).json()[ROUTES[path][0]]
        if len(got) != len(want):
            fail(f"{path}: the database baseline answers {len(got)} items, the gateway {len(want)}")
        live = httpx.get(gateway.url + url, headers=auth, timeout=10)
        if live.status_code != 200:
            fail(f"{path}: the gateway process answered {live.status_code}")

    loads: list[Load] = []
    for path in paths:
        url = f"{path}?limit={LIMIT}"
        loads += [
            Load(f"{path}|gateway", f"{path} gateway", gateway, auth, path=url),
            Load(f"{path}|db", f"{path} DB ceiling", database, path=url),
            Load(f"{path}|static", f"{path} framework ceiling", static, path=url),
        ]
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds, alternating order")
    sessions = Sessions(pg_dsn)
    try:
        measure(loads, args, sessions)
    finally:
        sessions.close()

    by_key = {load.key: load for load in loads}
    table = []
    print()
    header = f"{'route':<32}{'gateway':>9}{'DB':>8}{'static':>8}{'/DB':>7}{'/static':>9}{'CPU ms gw':>11}{'CPU ms DB':>11}"
    print(header)
    for path in paths:
        gw, db, st = (by_key[f"{path}|{k}"] for k in ("gateway", "db", "static"))
        row = {
            "route": path,
            "page_bytes": captured[path]["bytes"],
            "statements": len(captured[path]["statements"]),
            "gateway_rps": round(gw.rps()),
            "db_ceiling_rps": round(db.rps()),
            "framework_ceiling_rps": round(st.rps()),
            "vs_db_ceiling": round(gw.rps() / db.rps(), 3),
            "vs_framework_ceiling": round(gw.rps() / st.rps(), 3),
            "gateway_p99_ms": round(gw.p99_ms(), 1),
            "gateway_cpu_ms_per_request": round(gw.cpu_ms(), 3),
            "db_cpu_ms_per_request": round(db.cpu_ms(), 3),
            "static_cpu_ms_per_request": round(st.cpu_ms(), 3),
            "gateway_answered_200": gw.expected_share(),
            "target_met": gw.rps() / db.rps() >= TARGET,
        }
        table.append(row)
        print(
            f"{path:<32}{row['gateway_rps']:>9}{row['db_ceiling_rps']:>8}{row['framework_ceiling_rps']:>8}"
            f"{row['vs_db_ceiling']:>7.2f}{row['vs_framework_ceiling']:>9.2f}"
            f"{row['gateway_cpu_ms_per_request']:>11.2f}{row['db_cpu_ms_per_request']:>11.2f}"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = results / f"list_routes-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "list_routes",
                "when": stamp,
                "command": " ".join([".venv/bin/python", "bench/list_routes.py", *sys.argv[1:]]),
                "wrk": vars(args),
                "target_vs_db_ceiling": TARGET,
                "routes": table,
                "statements": {p: [s for s, _ in captured[p]["statements"]] for p in paths},
                "rounds": {load.key: load.rounds for load in loads},
                "machine": machine(),
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Dead-letter stats on N pending entries of one tenant, through a running ``jobgate serve``.

    .venv/bin/python bench/deadletter_stats.py [--entries 1000000] [--repeat 40] [--no-plans]

Creates a throwaway database and Redis prefix (see bench/deep_paging.py, whose helpers it uses),
loads N pending dead-letter entries of one tenant with COPY (600 error clusters of skewed sizes
over 40 error codes and 5 categories, dead-lettered over the last 14 days; the row triggers of
migration 0004 maintain the aggregates during the load, as for any writer), runs ``ANALYZE``,
starts ``jobgate serve`` (one worker) and measures GET ``/jobengine/deadletter/stats``
sequentially ``--repeat`` times after a warm-up: p50, p90, min, max. The response is checked
against counts computed independently with plain SQL (totals, categories, the ten largest
clusters). Unless ``--no-plans``, it records the statements ``app.domain.deadletter.service.stats``
sends (captured in-process on the same database) with their ``EXPLAIN (ANALYZE, BUFFERS)`` plans
and times. Target: p50 ≤ 50 ms. Everything it creates is removed at the end, also on failure;
results go to ``bench/results/`` (not versioned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deep_paging import (
    TENANT,
    bulk_load,
    entry_row,
    environment,
    machine,
    summary,
    timed_get,
    write_result,
)

STATS = "/jobengine/deadletter/stats"
CATEGORIES = ("auth", "config", "data", "quota", "transient")
CLUSTERS = 600
CODES = 40


def clusters() -> list[tuple[str, str, str, str, float]]:
    """(category, errorCode, message pattern, template, weight): Zipf-like sizes."""
    from app.domain.deadletter.templates import template_hash

    out = []
    for k in range(CLUSTERS):
        code = f"err.code{k % CODES:02d}"
        category = CATEGORIES[(k % CODES) % len(CATEGORIES)]
        template = f"step {k} failed for job <uuid> after <n> ms"
        out.append((category, code, template, template_hash(code, template), 1.0 / (k + 1) ** 0.8))
    return out


def stats_rows(tenant_id: int, entries: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(7)
    table = clusters()
    picks = rng.choices(range(len(table)), weights=[c[4] for c in table], k=entries)
    span = 14 * 24 * 3600
    for n, k in enumerate(picks):
        category, code, template, hash_, _ = table[k]
        at = now - timedelta(seconds=rng.random() * span)
        message = f"step {k} failed for job {rng.getrandbits(128):032x} after {n % 997} ms"
        yield entry_row(
            tenant_id, n, at, category=category, code=code, message=message, template=template, hash_=hash_
        )


async def expected(dsn: str, tenant_id: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        statuses = dict(
            await conn.fetch(
                "SELECT status, count(*) FROM dead_letter_entries WHERE tenant_id = $1 GROUP BY status",
                tenant_id,
            )
        )
        categories = [
            {"category": r[0], "count": r[1], "pending": r[2]}
            for r in await conn.fetch(
                "SELECT category, count(*), count(*) FILTER (WHERE status = 'pending') FROM dead_letter_entries "
                "WHERE tenant_id = $1 GROUP BY category ORDER BY category",
                tenant_id,
            )
        ]
        top = [
            [r[0], r[1], r[2]]
            for r in await conn.fetch(
                "SELECT error_code, min(error_template) AS t, count(*) AS n FROM dead_letter_entries "
                "WHERE tenant_id = $1 GROUP BY error_code, template_hash ORDER BY n DESC, t, error_code LIMIT 10",
                tenant_id,
            )
        ]
        return {"byStatus": statuses, "byCategory": categories, "top": top}
    finally:
        await conn.close()


def check(body: dict[str, Any], want: dict[str, Any]) -> None:
    for status, count in want["byStatus"].items():
        if body["byStatus"][status] != count:
            raise RuntimeError(f"byStatus.{status}: {body['byStatus'][status]} != {count}")
    if body["byCategory"] != want["byCategory"]:
        raise RuntimeError(f"byCategory differs: {body['byCategory']} != {want['byCategory']}")
    got = [[c["errorCode"], c["template"], c["count"]] for c in body["topClusters"]]
    if got != want["top"]:
        raise RuntimeError(f"topClusters differ: {got} != {want['top']}")
    if any(len(c["sampleEntryIds"]) != 3 for c in body["topClusters"]):
        raise RuntimeError("a top cluster lacks its three samples")


async def plans(env: dict[str, str], tenant_id: int) -> list[dict[str, Any]]:
    """The statements ``service.stats`` sends, each with its EXPLAIN ANALYZE plan."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from app.core.caller import Caller, TenantInfo
    from app.domain.deadletter import service

    engine = create_async_engine(env["JOBGATE_DATABASE_URL"])
    sent: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "dead_letter_" in statement:  # the entries and the maintained aggregates
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    caller = Caller(
        subject="bench",
        client_id=None,
        scopes=frozenset({"orch:operate"}),
        granted_tenants=(TENANT,),
        tenant=TenantInfo(id=tenant_id, key=TENANT, external_id=TENANT, workspace_id=0, workspace_key=TENANT),
        project=None,
        trace_id="bench",
    )
    try:
        async with AsyncSession(engine) as session:
            await service.stats(session, caller)
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        out = []
        async with engine.connect() as conn:
            for statement, parameters in sent:
                result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                plan = [r[0] for r in result]
                took = next((line for line in reversed(plan) if line.startswith("Execution Time")), "")
                out.append(
                    {"statement": statement, "parameters": repr(parameters), "execution": took, "plan": plan}
                )
        return out
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    async with environment("stats") as env:
        tenant_id = await env.create()
        now = datetime.now(UTC)
        log(f"loading {args.entries:,} pending entries with COPY ...")
        load_seconds = await bulk_load(env.dsn, stats_rows(tenant_id, args.entries, now))
        log(f"loaded, indexed and analysed in {load_seconds:.1f} s")
        want = await expected(env.dsn, tenant_id)
        token = env.token("orch:operate")
        env.serve()
        headers = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": TENANT}
        samples: list[float] = []
        with httpx.Client(base_url=env.url, timeout=120) as client:
            _, first = timed_get(client, STATS, headers)
            check(first.json(), want)
            for _ in range(3):
                timed_get(client, STATS, headers)
            for _ in range(args.repeat):
                samples.append(timed_get(client, STATS, headers)[0])
        measured = summary(samples)
        explained = [] if args.no_plans else await plans(env.env, tenant_id)
        return {
            "benchmark": "deadletter_stats",
            "entries": args.entries,
            "repeat": args.repeat,
            "load_seconds": round(load_seconds, 1),
            "http": measured,
            "statements": [{"execution": p["execution"], "statement": p["statement"]} for p in explained],
            "plans": explained,
            "target": {"p50_ms_max": 50, "met": measured["median_ms"] <= 50},
            "machine": machine(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--no-plans", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args, lambda m: print(m, file=sys.stderr, flush=True)))
    out = write_result("deadletter_stats", result)
    print(json.dumps({k: v for k, v in result.items() if k != "plans"}, indent=2))
    for p in result["plans"]:
        print("\n" + p["statement"] + "\n" + "\n".join(p["plan"]))
    print(f"written to {out}", file=sys.stderr)
    sys.exit(0 if result["target"]["met"] else 1)


if __name__ == "__main__":
    main()

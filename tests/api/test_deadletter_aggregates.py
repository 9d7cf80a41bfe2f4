"""The maintained dead-letter aggregates (migration 0004) stay equal to the entries they summarise.

Triggers on ``dead_letter_entries`` keep ``dead_letter_counts`` and ``dead_letter_clusters`` exact
through inserts, status changes (replay: pending -> replaying -> replayed, a failed replay back to
pending with a new error and time), moves of ``dead_lettered_at``, and deletes; the stats route
reads them and must answer what a count over the entries gives, also narrowed to a project.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update

from app.domain.deadletter.aggregates import fold_stripes
from app.domain.deadletter.templates import error_template, template_hash
from app.storage.models import DeadLetterCluster, DeadLetterCount, DeadLetterEntry
from tests.api.rows import Rows, ago, tenant_rows

OPERATE = "orch:operate"


async def entries_of(runtime: Any, tenant_id: int) -> list[DeadLetterEntry]:
    async with runtime.sessions() as session:
        return list(
            (await session.execute(select(DeadLetterEntry).where(DeadLetterEntry.tenant_id == tenant_id))).scalars()
        )


async def assert_aggregates_match_entries(runtime: Any, tenant_id: int) -> list[DeadLetterEntry]:
    """Both aggregate tables, summed over their stripes, equal a grouping of the tenant's entries
    computed here, and no all-zero row is left behind."""
    entries = await entries_of(runtime, tenant_id)
    want_counts = Counter((e.project_id or "", e.category, e.status) for e in entries)
    want_clusters: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        totals = want_clusters[(e.project_id or "", e.error_code, e.template_hash)]
        totals[0] += 1
        totals[1] += e.status == "pending"
    async with runtime.sessions() as session:
        count_rows = list(
            (await session.execute(select(DeadLetterCount).where(DeadLetterCount.tenant_id == tenant_id))).scalars()
        )
        cluster_rows = list(
            (await session.execute(select(DeadLetterCluster).where(DeadLetterCluster.tenant_id == tenant_id))).scalars()
        )
    counts: Counter[tuple[str, str, str]] = Counter()
    for r in count_rows:
        counts[(r.project_key, r.category, r.status)] += r.entries
    clusters: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in cluster_rows:
        totals = clusters[(r.project_key, r.error_code, r.template_hash)]
        totals[0] += r.entries
        totals[1] += r.pending
    assert {k: v for k, v in counts.items() if v} == dict(want_counts)
    assert {k: v for k, v in clusters.items() if v != [0, 0]} == dict(want_clusters)
    assert all(r.entries for r in count_rows)
    assert all(r.entries or r.pending for r in cluster_rows)
    return entries


def expected_stats(entries: list[DeadLetterEntry], project: str | None) -> dict[str, Any]:
    kept = [e for e in entries if project is None or e.project_id == project]
    statuses = Counter(e.status for e in kept)
    groups: dict[tuple[str, str], list[DeadLetterEntry]] = defaultdict(list)
    for e in kept:
        groups[(e.error_code, e.error_template)].append(e)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][1], kv[0][0]))[:10]
    return {
        "total": len(kept),
        "byStatus": {s: statuses.get(s, 0) for s in ("pending", "replaying", "replayed", "discarded")},
        "byCategory": [
            {
                "category": c,
                "count": sum(e.category == c for e in kept),
                "pending": sum(e.category == c and e.status == "pending" for e in kept),
            }
            for c in sorted({e.category for e in kept})
        ],
        "clusters": [
            (
                code,
                template,
                len(group),
                sum(e.status == "pending" for e in group),
                min(e.dead_lettered_at for e in group),
                max(e.dead_lettered_at for e in group),
                [e.entry_id for e in sorted(group, key=lambda e: (e.dead_lettered_at, e.entry_id), reverse=True)][:3],
            )
            for (code, template), group in ranked
        ],
    }


async def assert_stats_match_entries(client: Any, factory: Any, tenant: str, entries: list[DeadLetterEntry]) -> None:
    for project in (None, "billing", "scanner"):
        response = await client.get(
            "/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE, project=project)
        )
        assert response.status_code == 200
        body = response.json()
        want = expected_stats(entries, project)
        assert body["total"] == want["total"]
        assert body["byStatus"] == want["byStatus"]
        assert body["byCategory"] == want["byCategory"]
        got = [
            (
                c["errorCode"],
                c["template"],
                c["count"],
                c["pending"],
                datetime.fromisoformat(c["firstSeen"]),
                datetime.fromisoformat(c["lastSeen"]),
                c["sampleEntryIds"],
            )
            for c in body["topClusters"]
        ]
        assert got == want["clusters"]


async def seed(rows: Rows) -> list[DeadLetterEntry]:
    """Three clusters over two projects and no project, at distinct times."""
    entries = []
    for n, (word, code, project, category) in enumerate(
        [
            ("alpha", "E_IO", None, "transient"),
            ("alpha", "E_IO", "billing", "transient"),
            ("alpha", "E_IO", "billing", "policy"),
            ("alpha", "E_IO", "scanner", "transient"),
            ("bravo", "E_TIMEOUT", None, "transient"),
            ("bravo", "E_TIMEOUT", "billing", "permanent"),
            ("bravo", "E_TIMEOUT", "billing", "permanent"),
            ("charlie", "E_DENIED", "scanner", "policy"),
            ("charlie", "E_DENIED", "billing", "policy"),
            ("alpha", "E_IO", "billing", "transient"),
        ]
    ):
        entries.append(
            rows.entry(
                f"{word} failed after {n * 17} ms",
                error_code=code,
                project_id=project,
                category=category,
                dead_lettered_at=ago(hours=40 - n),
            )
        )
    return await rows.add(*entries)


async def change(runtime: Any, tenant_id: int, entry_id: str, **values: Any) -> None:
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(DeadLetterEntry)
            .where(DeadLetterEntry.tenant_id == tenant_id, DeadLetterEntry.entry_id == entry_id)
            .values(**values)
        )


async def test_aggregates_are_backfilled_and_follow_inserts(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    await seed(rows)
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    assert len(entries) == 10
    await assert_stats_match_entries(client, factory, tenant, entries)


async def test_aggregates_follow_a_replay_and_its_return_to_pending(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    seeded = await seed(rows)
    oldest_billing = seeded[1]  # the oldest alpha entry of project billing
    await change(runtime, rows.tenant_id, oldest_billing.entry_id, status="replaying", replay_count=1)
    await assert_aggregates_match_entries(runtime, rows.tenant_id)
    # The replay failed again with another error: the same entry returns to pending, now later,
    # under another error code and template (a cluster it joins, and one its old cluster loses).
    message = "delta refused by 10.1.2.3"
    template = error_template(message)
    await change(
        runtime,
        rows.tenant_id,
        oldest_billing.entry_id,
        status="pending",
        error_code="E_REFUSED",
        message=message,
        error_template=template,
        template_hash=template_hash("E_REFUSED", template),
        dead_lettered_at=ago(minutes=1),
    )
    await assert_aggregates_match_entries(runtime, rows.tenant_id)
    # Another replay that succeeds.
    await change(runtime, rows.tenant_id, seeded[5].entry_id, status="replaying")
    await change(runtime, rows.tenant_id, seeded[5].entry_id, status="replayed")
    await change(runtime, rows.tenant_id, seeded[7].entry_id, status="discarded")
    # Columns outside the aggregates change nothing.
    await change(runtime, rows.tenant_id, seeded[6].entry_id, replay_count=4, attempts=9)
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    assert Counter(e.status for e in entries) == {"pending": 8, "replayed": 1, "discarded": 1}
    await assert_stats_match_entries(client, factory, tenant, entries)


async def test_aggregates_follow_moves_of_the_dead_lettered_time(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    seeded = await seed(rows)
    # The newest entry of the alpha/billing cluster moves back before all others, then the oldest
    # moves forward past all others: first and last seen are both re-read.
    await change(runtime, rows.tenant_id, seeded[9].entry_id, dead_lettered_at=ago(days=30))
    await assert_aggregates_match_entries(runtime, rows.tenant_id)
    await change(runtime, rows.tenant_id, seeded[9].entry_id, dead_lettered_at=ago(seconds=30))
    await change(runtime, rows.tenant_id, seeded[0].entry_id, category="policy", project_id="scanner")
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    await assert_stats_match_entries(client, factory, tenant, entries)


async def test_aggregates_follow_deletes_and_drop_emptied_rows(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    seeded = await seed(rows)
    async with runtime.sessions.begin() as session:
        # The oldest and the newest entry of alpha/billing, and the whole charlie cluster.
        gone = [seeded[1].entry_id, seeded[9].entry_id, seeded[7].entry_id, seeded[8].entry_id]
        await session.execute(
            delete(DeadLetterEntry).where(
                DeadLetterEntry.tenant_id == rows.tenant_id, DeadLetterEntry.entry_id.in_(gone)
            )
        )
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    assert "E_DENIED" not in {e.error_code for e in entries}
    await fold_stripes(runtime.engine)
    async with runtime.sessions() as session:
        codes = set(
            (
                await session.execute(
                    select(DeadLetterCluster.error_code).where(DeadLetterCluster.tenant_id == rows.tenant_id)
                )
            ).scalars()
        )
    assert codes == {"E_IO", "E_TIMEOUT"}  # once folded, the emptied cluster's rows are gone
    await assert_stats_match_entries(client, factory, tenant, entries)
    async with runtime.sessions.begin() as session:
        await session.execute(delete(DeadLetterEntry).where(DeadLetterEntry.tenant_id == rows.tenant_id))
    await assert_aggregates_match_entries(runtime, rows.tenant_id)
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    assert (body["total"], body["byCategory"], body["topClusters"]) == (0, [], [])


async def test_concurrent_writers_of_one_cluster_keep_the_counts_exact(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    seeded = await seed(rows)

    async def insert(n: int) -> None:
        await rows.add(rows.entry(f"alpha failed after {n} ms", error_code="E_IO", dead_lettered_at=ago(hours=n)))

    async def replay(entry: DeadLetterEntry) -> None:
        await change(runtime, rows.tenant_id, entry.entry_id, status="replaying")

    await asyncio.gather(*(insert(n) for n in range(20)), *(replay(e) for e in seeded))
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    assert Counter(e.status for e in entries) == {"pending": 20, "replaying": 10}
    await assert_stats_match_entries(client, factory, tenant, entries)


async def _connections_on_two_stripes(runtime: Any) -> tuple[Any, Any, list[Any]]:
    """Two connections whose writes land on different aggregate stripes (backend ids mod 64)."""
    async def stripe(connection: Any) -> int:
        value = (await connection.execute(text("SELECT pg_backend_pid() % 64"))).scalar_one()
        await connection.commit()
        return value

    opened = [await runtime.engine.connect()]
    first_stripe = await stripe(opened[0])
    while True:
        other = await runtime.engine.connect()
        opened.append(other)
        if await stripe(other) != first_stripe:
            return opened[0], other, opened


# Stripes exist on PostgreSQL only: SQLite has one writer at a time and a single stripe.
@pytest.mark.backends("postgresql")
async def test_writers_of_one_cluster_do_not_wait_for_each_other(client, factory, runtime):
    """A replay left uncommitted on one connection does not hold up another connection's changes to
    entries of the same cluster, category and status; an entry added through one connection and
    removed through the other leaves nothing in the sums."""
    tenant, rows = await tenant_rows(runtime, factory)
    seeded = await seed(rows)
    first, second, opened = await _connections_on_two_stripes(runtime)
    try:
        holder = await first.begin()
        await first.execute(
            update(DeadLetterEntry)
            .where(DeadLetterEntry.tenant_id == rows.tenant_id, DeadLetterEntry.entry_id == seeded[1].entry_id)
            .values(status="replaying")
        )
        async with second.begin():
            await second.execute(text("SET LOCAL lock_timeout = '2s'"))
            await second.execute(
                update(DeadLetterEntry)
                .where(DeadLetterEntry.tenant_id == rows.tenant_id, DeadLetterEntry.entry_id == seeded[9].entry_id)
                .values(status="replaying")
            )
        await holder.commit()
        added = rows.entry("echo failed after 5 ms", error_code="E_ECHO", category="echo")
        values = {c.key: getattr(added, c.key) for c in DeadLetterEntry.__table__.columns}
        async with first.begin():
            await first.execute(insert(DeadLetterEntry).values({k: v for k, v in values.items() if v is not None}))
        async with second.begin():
            await second.execute(
                delete(DeadLetterEntry).where(
                    DeadLetterEntry.tenant_id == rows.tenant_id, DeadLetterEntry.entry_id == added.entry_id
                )
            )
    finally:
        for connection in opened:
            await connection.close()
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    assert Counter(e.status for e in entries) == {"pending": 8, "replaying": 2}
    await assert_stats_match_entries(client, factory, tenant, entries)
    assert len(await stripes_of(runtime, rows.tenant_id)) > 1

    # The workers' fold moves every stripe into stripe 0 and drops what sums to zero (the echo
    # entry's +1 and -1); the sums do not change.
    assert await fold_stripes(runtime.engine) > 0
    assert await stripes_of(runtime, rows.tenant_id) == {0}
    async with runtime.sessions() as session:
        echo = (
            await session.execute(
                select(DeadLetterCluster).where(
                    DeadLetterCluster.tenant_id == rows.tenant_id, DeadLetterCluster.error_code == "E_ECHO"
                )
            )
        ).scalars().all()
    assert echo == []
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    await assert_stats_match_entries(client, factory, tenant, entries)


async def stripes_of(runtime: Any, tenant_id: int) -> set[int]:
    async with runtime.sessions() as session:
        counts = await session.execute(select(DeadLetterCount.stripe).where(DeadLetterCount.tenant_id == tenant_id))
        clusters = await session.execute(
            select(DeadLetterCluster.stripe).where(DeadLetterCluster.tenant_id == tenant_id)
        )
        return set(counts.scalars()) | set(clusters.scalars())


async def test_later_instants_only_widen_the_cluster_range(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    first = ago(days=5)
    await rows.add(rows.entry("alpha failed after 1 ms", dead_lettered_at=first))
    await rows.add(rows.entry("alpha failed after 2 ms", dead_lettered_at=first + timedelta(days=1)))
    await rows.add(rows.entry("alpha failed after 3 ms", dead_lettered_at=first - timedelta(days=1)))
    entries = await assert_aggregates_match_entries(runtime, rows.tenant_id)
    body = (
        await client.get("/jobengine/deadletter/stats", headers=factory.headers(tenant, scope=OPERATE))
    ).json()
    (cluster,) = body["topClusters"]
    assert datetime.fromisoformat(cluster["firstSeen"]) == first - timedelta(days=1)
    assert datetime.fromisoformat(cluster["lastSeen"]) == first + timedelta(days=1)
    assert cluster["count"] == len(entries) == 3


async def test_sqlite_triggers_keep_the_aggregates_exact(tmp_path):
    """The embedded default (SQLite) maintains the same aggregates with its own triggers."""
    from types import SimpleNamespace

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from app.storage.migrate import upgrade
    from app.storage.models import Tenant, Workspace

    engine = create_async_engine(f"sqlite+aiosqlite:///{(tmp_path / 'aggregates.db').as_posix()}")
    try:
        await upgrade(engine)
        local = SimpleNamespace(sessions=async_sessionmaker(engine, expire_on_commit=False))
        async with local.sessions.begin() as session:
            workspace = Workspace(key="ws", name="ws", created_at=ago(days=1))
            session.add(workspace)
            await session.flush()
            tenant = Tenant(key="t", external_id="t", workspace_id=workspace.id, created_at=ago(days=1))
            session.add(tenant)
            await session.flush()
            tenant_id = tenant.id
        rows = Rows(local, "t", tenant_id)
        seeded = await seed(rows)
        await assert_aggregates_match_entries(local, tenant_id)
        await change(local, tenant_id, seeded[1].entry_id, status="replaying")
        await change(local, tenant_id, seeded[1].entry_id, status="pending", dead_lettered_at=ago(minutes=1))
        await change(local, tenant_id, seeded[5].entry_id, status="replayed", project_id=None)
        await change(local, tenant_id, seeded[9].entry_id, dead_lettered_at=ago(days=30))
        await assert_aggregates_match_entries(local, tenant_id)
        async with local.sessions.begin() as session:
            await session.execute(
                delete(DeadLetterEntry).where(
                    DeadLetterEntry.entry_id.in_([seeded[9].entry_id, seeded[7].entry_id, seeded[8].entry_id])
                )
            )
        entries = await assert_aggregates_match_entries(local, tenant_id)
        assert len(entries) == 7
    finally:
        await engine.dispose()

"""Every maintained aggregate stays equal to a ``GROUP BY`` over its rows whatever writes reach the
rows, concurrently.

Seeded random sequences of the write paths (submission, claim, start, success, retry,
dead-lettering and cancel one by one and in the worker's batches of mixed ends, release,
heartbeat, lease expiry, the reconciler, replays single, batched and by filter with the runner,
discard and restore, pack runs submitted, canceled and retried, the stripe fold, and plain
statements that change many rows at once, some to a status no code lists) run in several
concurrent writers, each on its own connections (so on several stripes); after every round
``aggregates.check`` (the ``jobgate db check-aggregates`` comparison) must find no drift, and the
summaries must answer what the ``GROUP BY`` answers.

PostgreSQL only: the stripes and concurrent writers exist there; the embedded SQLite default has
one writer and one stripe, and its triggers are held to the rows by ``tests/api/test_console_aggregates.py``.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from app.core.caller import Caller, TenantInfo
from app.domain.deadletter.summary import summary as groups_summary
from app.engine import dispatcher, outcomes
from app.engine.handlers import JobContext, JobFailure
from app.engine.reconciler import reconcile_once
from app.engine.replays import advance_replays
from app.storage import aggregates
from app.storage.job_counts import by_type_and_status
from app.storage.models import DeadLetterEntry, Job
from tests.api import grouped

pytestmark = pytest.mark.backends("postgresql")

JOB_TYPES = ("demo.noop", "scan", "mail")
ROUNDS = 8
WRITERS = 4
STEPS = 8


class Writer:
    """One concurrent writer: a worker id, the jobs it holds, and the operations it may do."""

    def __init__(self, n: int, rng: random.Random, ctx: Any) -> None:
        self.worker_id = f"prop-worker-{n}"
        self.rng = rng
        self.ctx = ctx
        self.held: list[JobContext] = []

    def take(self, k: int = 1) -> list[JobContext]:
        taken = self.rng.sample(self.held, min(k, len(self.held)))
        self.held = [j for j in self.held if j not in taken]
        return taken

    async def submit(self) -> None:
        c = self.ctx
        source_id, project = self.rng.choice(c.sources)
        body = {"jobType": self.rng.choice(JOB_TYPES), "sourceId": source_id}
        if self.rng.random() < 0.3:
            body["runAfter"] = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        response = await c.client.post(
            "/jobengine/jobs", json=body, headers=c.factory.headers(c.tenant, reason=None, project=project)
        )
        assert response.status_code == 201, response.text

    async def claim(self) -> None:
        async with self.ctx.runtime.sessions() as session:
            self.held += await dispatcher.claim(
                session, worker_id=self.worker_id, job_types=JOB_TYPES, limit=self.rng.randint(1, 4),
                lease_seconds=60, now=datetime.now(UTC), tenants=(self.ctx.tenant_id,),
            )

    async def start(self) -> None:
        async with self.ctx.runtime.sessions() as session:
            self.held += await outcomes.start(session, self.worker_id, self.take(3), datetime.now(UTC))

    async def succeed(self) -> None:
        for job in self.take(1):
            async with self.ctx.runtime.sessions() as session:
                await outcomes.succeed(session, self.worker_id, job)

    def _failure(self, retryable: bool) -> JobFailure:
        return JobFailure(self.rng.choice(("E_IO", "E_DENIED")), self.rng.choice(("transient", "policy")),
                          f"failed after {self.rng.randrange(100)} ms", retryable=retryable)

    async def end_many(self) -> None:
        """A batch of the worker's outcome loop: successes, retries, dead-letters and cancels."""
        plain = [j for j in self.held if j.pack_run_id is None and j.replay_of_entry_id is None][:4]
        self.held = [j for j in self.held if j not in plain]
        ends = []
        for job in plain:
            end = self.rng.choice(("succeeded", "cancel", "retry", "dead_letter"))
            if end in ("retry", "dead_letter"):
                ends.append(outcomes.Ending(job, "failed", self._failure(end == "retry")))
            else:
                ends.append(outcomes.Ending(job, end))
        async with self.ctx.runtime.sessions() as session:
            await outcomes.end_many(session, self.worker_id, ends, backoff_base=0.01, backoff_max=0.02)

    async def fail(self, retryable: bool) -> None:
        for job in self.take(1):
            failure = self._failure(retryable)
            async with self.ctx.runtime.sessions() as session:
                await outcomes.fail(session, self.worker_id, job, failure, backoff_base=0.01, backoff_max=0.02)

    async def retry(self) -> None:
        await self.fail(True)

    async def dead_letter(self) -> None:
        await self.fail(False)

    async def cancel(self) -> None:
        for job in self.take(1):
            async with self.ctx.runtime.sessions() as session:
                await outcomes.cancel(session, self.worker_id, job)

    async def release(self) -> None:
        async with self.ctx.runtime.sessions() as session:
            await outcomes.release(session, self.worker_id, self.take(2))

    async def heartbeat(self) -> None:
        async with self.ctx.runtime.sessions() as session:
            await outcomes.heartbeat(session, self.worker_id, list(self.held), 60)

    async def expire(self) -> None:
        # Leases seen from two minutes ahead: every lease of this test has run out.
        await outcomes.expire_leases(self.ctx.runtime, now=datetime.now(UTC) + timedelta(minutes=2))

    async def reconcile(self) -> None:
        # Seen from a day ahead every active run is stale: the reconciler fails them and cancels
        # their pack runs' remaining jobs.
        now = datetime.now(UTC) + (timedelta(days=1) if self.rng.random() < 0.5 else timedelta())
        await reconcile_once(self.ctx.runtime, now, workspace_ids=[self.ctx.workspace_id])

    async def pack_submit(self) -> None:
        c = self.ctx
        source_id, project = c.sources[0]
        steps = [{"jobType": self.rng.choice(JOB_TYPES)} for _ in range(self.rng.randint(1, 3))]
        response = await c.client.post(
            "/jobengine/pack-runs",
            json={"packName": "prop", "packVersion": "1.0.0", "sourceId": source_id, "steps": steps},
            headers=c.factory.headers(c.tenant, reason=None, project=project),
        )
        assert response.status_code == 201, response.text

    async def _pack_runs(self) -> list[str]:
        async with self.ctx.runtime.sessions() as session:
            return list(
                (
                    await session.execute(
                        text("SELECT pack_run_id FROM pack_runs WHERE tenant_id = :t"), {"t": self.ctx.tenant_id}
                    )
                ).scalars()
            )

    async def pack_cancel(self) -> None:
        runs = await self._pack_runs()
        if runs:
            await self._post(f"/jobengine/pack-runs/{self.rng.choice(runs)}/cancel")

    async def pack_retry(self) -> None:
        runs = await self._pack_runs()
        if runs:
            await self._post(f"/jobengine/pack-runs/{self.rng.choice(runs)}/retry")

    async def _entries(self, status: str) -> list[str]:
        async with self.ctx.runtime.sessions() as session:
            return list(
                (
                    await session.execute(
                        select(DeadLetterEntry.entry_id).where(
                            DeadLetterEntry.tenant_id == self.ctx.tenant_id, DeadLetterEntry.status == status
                        )
                    )
                ).scalars()
            )

    async def _post(self, path: str, body: Any = None) -> None:
        c = self.ctx
        response = await c.client.post(path, json=body, headers=c.factory.headers(c.tenant))
        assert response.status_code < 500, response.text

    async def replay(self) -> None:
        pending = await self._entries("pending")
        if pending:
            await self._post(f"/jobengine/deadletter/{self.rng.choice(pending)}/replay")

    async def replay_batch(self) -> None:
        pending = await self._entries("pending")
        if pending:
            await self._post("/jobengine/deadletter/replay/batch",
                             {"entryIds": self.rng.sample(pending, min(3, len(pending)))})

    async def replay_pending(self) -> None:
        await self._post("/jobengine/deadletter/replay/pending",
                         {"filter": {"errorCode": self.rng.choice(("E_IO", "E_DENIED"))}, "maxEntries": 3,
                          "ratePerSecond": 100_000})
        await advance_replays(self.ctx.runtime)

    async def discard(self) -> None:
        pending = await self._entries("pending")
        if pending:
            await self._post(f"/jobengine/deadletter/{self.rng.choice(pending)}/discard")

    async def discard_pending(self) -> None:
        await self._post("/jobengine/deadletter/discard/pending",
                         {"filter": {"category": self.rng.choice(("transient", "policy"))}, "maxEntries": 2})

    async def restore(self) -> None:
        discarded = await self._entries("discarded")
        if discarded:
            await self._post(f"/jobengine/deadletter/{self.rng.choice(discarded)}/restore")

    async def fold(self) -> None:
        await aggregates.fold_stripes(self.ctx.runtime.engine)

    async def bulk(self) -> None:
        """Plain statements over many rows: statuses no code lists, moves between keys, deletes.
        Each in a transaction of its own, on rows no one holds (``SKIP LOCKED``); if two still
        deadlock, PostgreSQL rolls one back, which must leave the aggregates as exact as a commit."""
        # Never back to pending: a dead-lettered job run again would be dead-lettered twice.
        status = self.rng.choice(("succeeded", "timed_out", "cancel_requested", "future_status"))
        params = {"tenant": self.ctx.tenant_id, "status": status, "n": self.rng.randint(1, 5)}
        statements = [
            (
                "UPDATE jobs SET status = :status, job_type = CASE WHEN random() < 0.5 THEN job_type ELSE 'mail' END "
                "WHERE tenant_id = :tenant AND job_id IN (SELECT job_id FROM jobs WHERE tenant_id = :tenant "
                "AND lease_owner IS NULL AND pack_run_id IS NULL ORDER BY random() LIMIT :n FOR UPDATE SKIP LOCKED)"
            ),
            (
                "UPDATE dead_letter_entries SET category = 'policy', project_id = NULL WHERE tenant_id = :tenant "
                "AND entry_id IN (SELECT entry_id FROM dead_letter_entries WHERE tenant_id = :tenant "
                "ORDER BY random() LIMIT :n FOR UPDATE SKIP LOCKED)"
            ),
        ]
        if self.rng.random() < 0.3:
            statements.append(
                "DELETE FROM jobs WHERE tenant_id = :tenant AND job_id IN (SELECT job_id FROM jobs "
                "WHERE tenant_id = :tenant AND status IN ('succeeded', 'future_status') AND pack_run_id IS NULL "
                "LIMIT 2 FOR UPDATE SKIP LOCKED)"
            )
        for statement in statements:
            try:
                async with self.ctx.runtime.sessions.begin() as session:
                    await session.execute(text(statement), params)
            except DBAPIError as error:
                if "deadlock detected" not in str(error):
                    raise

    OPERATIONS = (
        "submit", "submit", "claim", "claim", "start", "succeed", "end_many", "end_many", "retry", "dead_letter",
        "dead_letter", "cancel", "release", "heartbeat", "expire", "reconcile", "replay", "replay_batch",
        "replay_pending", "discard", "discard_pending", "restore", "pack_submit", "pack_cancel", "pack_retry",
        "fold", "bulk",
    )

    async def run(self, steps: int) -> list[str]:
        done = []
        for _ in range(steps):
            name = self.rng.choice(self.OPERATIONS)
            await getattr(self, name)()
            done.append(name)
        return done


class Context:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


async def assert_no_drift_and_same_summaries(ctx: Any) -> None:
    assert await aggregates.check(ctx.runtime.engine, ctx.tenant_id) == []
    # The grouped counts over the rows, status by status (statuses no code lists included).
    async with ctx.runtime.sessions() as session:
        rows = {
            (kind, status): n
            for kind, status, n in await session.execute(
                text("SELECT job_type, status, count(*) FROM jobs WHERE tenant_id = :t GROUP BY 1, 2"),
                {"t": ctx.tenant_id},
            )
        }
        assert {(k, s): n for k, s, n in await by_type_and_status(session, ctx.tenant_id)} == rows
        for project in (None, "billing"):
            scoped = _caller(ctx.info, project)
            token = None
            while True:
                now = await groups_summary(session, scoped, ctx.runtime.cursors, limit=2, token=token)
                before = await grouped.deadletter_summary(session, scoped, ctx.runtime.cursors, limit=2, token=token)
                assert now == before
                token = now.continuation_token
                if token is None:
                    break


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_aggregates_stay_exact_under_concurrent_random_writes(client, factory, runtime, seed):
    tenant = await factory.tenant()
    sources = [((await factory.source(client, tenant, projectId=p))["sourceId"], p) for p in (None, "billing")]
    async with runtime.sessions() as session:
        tenant_id, workspace_id = (
            await session.execute(text("SELECT id, workspace_id FROM tenants WHERE key = :k"), {"k": tenant})
        ).one()
    ctx = Context(client=client, factory=factory, runtime=runtime, tenant=tenant, tenant_id=tenant_id,
                  workspace_id=workspace_id, sources=sources, seed=seed, info=await runtime.tenants.get(tenant))
    writers = [Writer(n, random.Random(seed * 100 + n), ctx) for n in range(WRITERS)]
    for writer in writers:  # something to work on from the start
        for _ in range(3):
            await writer.submit()
    done: list[str] = []
    for _ in range(ROUNDS):
        for names in await asyncio.gather(*(w.run(STEPS) for w in writers)):
            done += names
        await assert_no_drift_and_same_summaries(ctx)
    async with runtime.sessions() as session:
        statuses = set(
            (await session.execute(select(Job.status).where(Job.tenant_id == tenant_id))).scalars()
        )
        entries = (
            await session.execute(select(DeadLetterEntry.entry_id).where(DeadLetterEntry.tenant_id == tenant_id))
        ).all()
    # The sequences reached the states that matter (not only the pending jobs of the start). How many
    # entries they made depends on how the concurrent writers interleave (as few as 2 under load).
    assert len(statuses) >= 3 and len(entries) >= 1, (statuses, len(entries), sorted(set(done)))
    assert {"claim", "dead_letter", "bulk"} <= set(done)


def _caller(info: TenantInfo, project: str | None) -> Caller:
    """A caller of the tenant, as the routes hand one to the services."""
    return Caller("tester", None, frozenset({"orch:operate"}), (info.key,), info, project, "trace")

"""What the API says about a waiting job is what the dispatcher does: over random states (seeded),
the jobs whose ``waitingReason`` is null are exactly the jobs a worker's claim takes, and the
per-type counts of the summaries are the per-job reasons counted.

Each state is a fresh tenant with job types under random quotas (none, paused, a concurrency limit,
a rate budget), served by no worker, by a full worker or by one with free slots; sources enabled or
not; jobs in random statuses, priorities and due times; pack runs whose steps wait for each other.
The reasons are read with the gateway's own read (``app/domain/jobs/why.py``) and the claim is the
dispatcher's (``app/engine/dispatcher.py``), on the same database at the same instant. The summaries
read the reasons over the head of each type's queue: with a head shorter than the queues, the
counts are those of the jobs at the head (the tenant's first due waiting jobs of the type in
dispatch order), narrowed or not to a source, and every due job past it is counted unattributed."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from app.domain.jobs import queue, waiting, why
from app.domain.workers import registry
from app.engine.dispatcher import claim
from app.storage.models import Job
from tests.api.rows import Rows

STATES = 30
SHORT_HEAD = 3  # a head shorter than most states' queues, so that most types go past it
STATUSES = ("pending", "pending", "pending", "scheduled", "running", "leased", "succeeded", "failed")


async def random_state(runtime, factory, rng: random.Random, now: datetime) -> tuple[Rows, dict[str, str]]:
    """A tenant's rows; returns them and, per job type, how its workers stand (none, full, free)."""
    tenant = await factory.tenant(prefix="agree")
    rows = await Rows.of(runtime, tenant)
    sources = [rows.source(), rows.source(), rows.source(enabled=False)]
    added: list[object] = list(sources)
    served: dict[str, str] = {}
    for n in range(3):
        job_type = f"agree{uuid.uuid4().hex[:8]}.{n}"
        served[job_type] = rng.choice(("none", "full", "free", "free"))
        if served[job_type] != "none":
            worker_id = f"w-{tenant}-{n}"
            me = registry.Identity(worker_id, (job_type,), (rows.tenant_id,), 3, 60.0)
            async with runtime.sessions() as session:
                await registry.register(session, me)
                if served[job_type] == "full":
                    await registry.beat(session, me, 3)
        quota = rng.choice(("none", "paused", "active", "rate"))
        if quota == "paused":
            added.append(rows.quota(job_type, paused=True))
        elif quota == "active":
            added.append(rows.quota(job_type, max_active=rng.randint(1, 4)))
        elif quota == "rate":
            hourly = rng.randint(1, 6)
            added.append(rows.quota(job_type, max_per_hour=hourly, burst=rng.randint(1, hourly)))

        def job(job_type: str = job_type, **fields):  # type: ignore[no-untyped-def]
            status = fields.pop("status", rng.choice(STATUSES))
            later = timedelta(minutes=rng.randint(1, 90))
            run_after = now - later if rng.random() < 0.85 else now + later  # mostly due
            waiting = status in ("pending", "scheduled")
            started = None if waiting else now - timedelta(seconds=rng.choice((5, 30, 600, 7200)))
            return rows.job(job_type=job_type, source_id=rng.choice(sources).source_id, status=status,
                            priority=rng.randint(-1, 1), run_after=run_after, started_at=started, **fields)

        added += [job() for _ in range(rng.randint(0, 10))]
        for _ in range(rng.randint(0, 2)):  # pack runs: steps in order, a later step waits for the previous
            pack = rows.pack_run(source_id=sources[0].source_id)
            added.append(pack)
            done = rng.randint(0, 2)
            for index in range(3):
                status = "succeeded" if index < done else "pending"
                added.append(job(pack_run_id=pack.pack_run_id, step_index=index, status=status))
    await rows.add(*added)
    return rows, served


async def test_jobs_without_a_waiting_reason_are_exactly_those_the_dispatcher_claims(runtime, factory):
    seen: Counter[str | None] = Counter()
    past = 0
    for seed in range(STATES):
        reasons, went_past = await agreement(runtime, factory, seed)
        seen.update(reasons)
        past += went_past
    # the states reach every reason (and jobs nothing holds), so each rule was compared
    assert set(seen) == {*waiting.REASONS, None}, seen
    assert past >= STATES, past  # and many of their queues are longer than the short head


def assert_head_counts(per_type, jobs, reasons, order, source_id, now, seed) -> None:  # type: ignore[no-untyped-def]
    by_id = {j.job_id: j for j in jobs}
    seen = [j for j in jobs if j.job_id in reasons and source_id in (None, j.source_id)]
    assert set(per_type) == {j.job_type for j in seen}, (seed, source_id)
    for job_type, (counts, kind) in per_type.items():
        head = [i for i in order if by_id[i].job_type == job_type][:SHORT_HEAD]  # the tenant's, whatever the view
        due = [j for j in seen if j.job_type == job_type and j.run_after <= now]
        examined = [i for i in head if source_id in (None, by_id[i].source_id)]
        expected = Counter(reasons[i] for i in examined)
        scheduled = sum(1 for j in seen if j.job_type == job_type and j.run_after > now)
        expected.update({"scheduled": scheduled} if scheduled else {})
        assert counts.waiting == sum(1 for j in seen if j.job_type == job_type), (seed, job_type)
        assert counts.unattributed == len(due) - len(examined), (seed, job_type, source_id)
        assert waiting.tally(counts, kind, now) == dict(expected), (seed, job_type, source_id)


async def agreement(runtime, factory, seed: int) -> tuple[Counter[str | None], int]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows, served = await random_state(runtime, factory, rng, now)
    async with runtime.sessions() as session:
        jobs = list((await session.execute(select(Job).where(Job.tenant_id == rows.tenant_id))).scalars())
        reasons = await why.reasons(session, rows.tenant_id, jobs, now)
        per_type = await why.waiting_by_type(session, rows.tenant_id, now)
    queued = {j.job_id for j in jobs if j.status in ("pending", "scheduled")}
    assert set(reasons) == queued
    expected = {job_id for job_id, reason in reasons.items() if reason is None}

    # the summaries' counts are the per-job reasons counted, type by type
    for job_type, (counts, kind) in per_type.items():
        from_jobs = Counter(reasons[j.job_id] for j in jobs if j.job_type == job_type and j.job_id in queued)
        assert counts.unattributed == 0
        assert waiting.tally(counts, kind, now) == dict(from_jobs), (seed, job_type)

    # past a short head, the reasons counted are those of each type's first due waiting jobs in
    # dispatch order (and every job not due yet); the due jobs after them are counted unattributed
    async with runtime.sessions() as session:
        order = [job_id for (job_id,) in await session.execute(
            select(Job.job_id).where(Job.tenant_id == rows.tenant_id, *queue.due(now)).order_by(*queue.ORDER))]
        went_past = 0
        for source_id in (None, *sorted({j.source_id for j in jobs})):
            short = await why.waiting_by_type(session, rows.tenant_id, now, source_id=source_id, head=SHORT_HEAD)
            assert_head_counts(short, jobs, reasons, order, source_id, now, seed)
            went_past += sum(1 for counts, _ in short.values() if counts.unattributed)

    # a worker with free slots claims every type it serves; a full worker claims nothing
    claimable_types = [t for t, how in served.items() if how == "free"]
    async with runtime.sessions() as session:
        claimed = await claim(session, worker_id=f"agree-{seed}", job_types=claimable_types, limit=1000,
                              lease_seconds=60, now=now, tenants=(rows.tenant_id,))
    assert {c.job_id for c in claimed} == expected, (seed, {j: reasons[j] for j in queued})
    return Counter(reasons.values()), went_past

"""The end of an attempt: each transition is one guarded statement on the job row
(``WHERE lease_owner = :worker AND status IN (…)``), so a worker that lost its lease changes
nothing, plus the follow-ups in the same transaction (dead-letter entry, source counter, the
replayed entry, the pack run). The worker writes the ends of most jobs in batches
(:func:`end_many`: the same transitions and guards, one statement for many jobs); pack steps and
replay jobs end one at a time.

- success → ``succeeded``; a replay job sets its entry ``replayed``;
- a retryable failure with attempts left → ``scheduled`` after an exponential backoff with jitter;
- otherwise → ``failed`` and a dead-letter entry (a replay job returns its original entry to
  ``pending`` instead), and the source's ``jobs_failed`` + 1;
- cancel → ``canceled`` (also a failure once a cancel was requested: it is neither retried nor
  dead-lettered); release (shutdown) → ``pending`` without consuming the attempt;
- an expired lease → back to ``pending`` (or dead-lettered as ``lease.expired`` when no attempt
  is left; ``canceled`` when a cancel was requested).

A job given back (released, or its lease expired) keeps its ``run_after``: it goes back to its
place in the dispatch order (priority, then ``run_after``), ahead of jobs submitted after it.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import ARRAY, BigInteger, DateTime, String, Text, and_, bindparam, case, column, func, insert, literal
from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.domain.deadletter.templates import error_template, template_hash
from app.domain.packruns import progress
from app.engine.handlers import JobContext, JobFailure
from app.sanitize import sanitize
from app.storage.models import DeadLetterEntry, Job, Source, UTCDateTime

if TYPE_CHECKING:
    from app.engine.context import EngineContext

RUNNING = ("leased", "running")
ACTIVE = (*RUNNING, "cancel_requested")  # a cancel_requested job still holds its lease
MAX_MESSAGE = 2000
EXPIRY_BATCH = 100


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential in the attempt number, capped, with jitter in [50 %, 100 %] of the step."""
    step = min(cap, base * (2 ** max(0, attempt - 1)))
    return step * (0.5 + 0.5 * (rng or random).random())


def _lease_cleared(now: datetime) -> dict[str, Any]:
    return {"lease_owner": None, "lease_expires_at": None, "updated_at": now}


def _guarded(job: JobContext, owner: str | None, statuses: tuple[str, ...] = ACTIVE):  # type: ignore[no-untyped-def]
    stmt = update(Job).where(Job.tenant_id == job.tenant_id, Job.job_id == job.job_id, Job.status.in_(statuses))
    if owner is not None:
        stmt = stmt.where(Job.lease_owner == owner)
    return stmt.execution_options(synchronize_session=False)


async def _lock_pack(session: AsyncSession, job: JobContext) -> None:
    """Lock order: the pack run before its step jobs, as the cancel action does, so a step's
    outcome and a concurrent cancel never wait for each other in a cycle."""
    if job.pack_run_id is not None:
        await progress.lock(session, job.tenant_id, job.pack_run_id)


async def _follow(session: AsyncSession, job: JobContext, now: datetime, *, blocked: str | None = None) -> None:
    if job.pack_run_id is not None:
        await progress.settle(session, job.tenant_id, job.pack_run_id, now=now, blocked=blocked)


async def start(session: AsyncSession, worker_id: str, jobs: list[JobContext], now: datetime) -> list[JobContext]:
    """Leased → running for the claimed jobs that may start; the others end here (canceled, or
    a pack step whose source was disabled meanwhile: its run is ``blocked``). Commits."""
    if not jobs:
        return []
    for tenant_id, pack_run_id in sorted({(c.tenant_id, c.pack_run_id) for c in jobs if c.pack_run_id}):
        await progress.lock(session, tenant_id, pack_run_id)
    started = {
        (t, j)
        for t, j in await session.execute(
            update(Job)
            .where(
                tuple_(Job.tenant_id, Job.job_id).in_([(c.tenant_id, c.job_id) for c in jobs]),
                Job.status == "leased",
                Job.lease_owner == worker_id,
                Job.cancel_requested.is_(False),
            )
            .values(status="running", updated_at=now)
            .returning(Job.tenant_id, Job.job_id)
            .execution_options(synchronize_session=False)
        )
    }
    runnable: list[JobContext] = []
    for job in jobs:
        if (job.tenant_id, job.job_id) not in started:
            await _end(session, job, worker_id, "canceled", now)
            await _follow(session, job, now)
            continue
        if job.pack_run_id is not None:
            enabled = (
                await session.execute(
                    select(Source.enabled).where(Source.tenant_id == job.tenant_id, Source.source_id == job.source_id)
                )
            ).scalar_one_or_none()
            if not enabled:
                await _end(session, job, worker_id, "canceled", now)
                await _follow(session, job, now, blocked=f"Not started: source {job.source_id} is disabled.")
                continue
            await _follow(session, job, now)
        runnable.append(job)
    await session.commit()
    return runnable


async def _end(session: AsyncSession, job: JobContext, owner: str | None, status: str, now: datetime, **values: Any) -> bool:
    result = await session.execute(
        _guarded(job, owner).values(status=status, finished_at=now, **_lease_cleared(now), **values)
    )
    return bool(result.rowcount)


async def succeed(session: AsyncSession, worker_id: str, job: JobContext, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    await _lock_pack(session, job)
    if not await _end(session, job, worker_id, "succeeded", now):
        await session.rollback()
        return False
    if job.replay_of_entry_id is not None:
        await session.execute(
            update(DeadLetterEntry)
            .where(
                DeadLetterEntry.tenant_id == job.tenant_id,
                DeadLetterEntry.entry_id == job.replay_of_entry_id,
                DeadLetterEntry.status == "replaying",
            )
            .values(status="replayed", updated_at=now)
            .execution_options(synchronize_session=False)
        )
    await _follow(session, job, now)
    await session.commit()
    return True


async def cancel(session: AsyncSession, owner: str | None, job: JobContext, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    await _lock_pack(session, job)
    if not await _end(session, job, owner, "canceled", now):
        await session.rollback()
        return False
    await _follow(session, job, now)
    await session.commit()
    return True


async def release(session: AsyncSession, worker_id: str, jobs: list[JobContext], now: datetime | None = None) -> int:
    """Give leases back (shutdown): pending again, the attempt not consumed, no start counted. A job
    whose cancel was requested is not given back: it ends ``canceled`` (given back, no worker would
    claim it and no cancel would end it)."""
    now = now or datetime.now(UTC)
    released = 0
    kept: list[JobContext] = []
    for job in jobs:
        result = await session.execute(
            _guarded(job, worker_id, RUNNING).values(
                status="pending", attempt=Job.attempt - 1, started_at=None, **_lease_cleared(now)
            )
        )
        if result.rowcount:
            released += result.rowcount
        else:
            kept.append(job)
    await session.commit()
    for job in kept:  # cancel_requested (or no longer this worker's: then nothing happens)
        if await cancel(session, worker_id, job, now):
            released += 1
    return released


def _failure_end(
    job: JobContext, failure: JobFailure, now: datetime, backoff_base: float, backoff_max: float
) -> tuple[str, datetime | None, dict[str, Any]]:
    """What a failure makes of a running job: ``scheduled`` with its ``run_after`` (retryable,
    attempts left) or ``failed`` (dead-lettered), and the error fields it writes."""
    error = {
        "last_error_code": failure.error_code[:128],
        "last_error_category": failure.category[:64],
        "last_error_message": sanitize(failure.message)[:MAX_MESSAGE],
    }
    if failure.retryable and job.attempt < job.max_attempts:
        return "scheduled", now + timedelta(seconds=backoff_seconds(job.attempt, backoff_base, backoff_max)), error
    return "failed", None, error


async def fail(
    session: AsyncSession,
    owner: str | None,
    job: JobContext,
    failure: JobFailure,
    *,
    backoff_base: float,
    backoff_max: float,
    now: datetime | None = None,
) -> str | None:
    """Retry later or dead-letter; returns the job's new status (None: the lease was lost)."""
    now = now or datetime.now(UTC)
    await _lock_pack(session, job)
    status, run_after, error = _failure_end(job, failure, now, backoff_base, backoff_max)
    if status == "scheduled":
        result = await session.execute(
            _guarded(job, owner, RUNNING).values(
                status="scheduled", run_after=run_after, **_lease_cleared(now), **error
            )
        )
        if not result.rowcount:
            return await _canceled_instead(session, job, owner, now, error)
        await session.commit()
        return "scheduled"
    row = (
        await session.execute(
            _guarded(job, owner, RUNNING)
            .values(status="failed", finished_at=now, **_lease_cleared(now), **error)
            .returning(Job.project_id, Job.payload, Job.attempt)
        )
    ).first()
    if row is None:
        return await _canceled_instead(session, job, owner, now, error)
    await dead_letter(
        session, job, error["last_error_code"], error["last_error_category"], error["last_error_message"], row, now
    )
    await _follow(session, job, now)
    await session.commit()
    return "failed"


async def _canceled_instead(
    session: AsyncSession, job: JobContext, owner: str | None, now: datetime, error: dict[str, Any]
) -> str | None:
    """A job whose cancel was requested is neither retried nor dead-lettered when it fails: it ends
    ``canceled``. None when the lease was lost."""
    if await _end(session, job, owner, "canceled", now, **error):
        await _follow(session, job, now)
        await session.commit()
        return "canceled"
    await session.rollback()
    return None


async def dead_letter(
    session: AsyncSession, job: JobContext, code: str, category: str, message: str, row: Any, now: datetime
) -> None:
    project_id, payload, attempts = row
    template = error_template(message)
    fields = {
        "category": category,
        "error_code": code,
        "message": message,
        "error_template": template,
        "template_hash": template_hash(code, template),
        "attempts": attempts,
        "dead_lettered_at": now,
        "updated_at": now,
    }
    returned = 0
    if job.replay_of_entry_id is not None:
        # A replay that fails again returns its original entry to pending (its replay_count
        # was counted by the replay); first_dead_lettered_at stays.
        result = await session.execute(
            update(DeadLetterEntry)
            .where(
                DeadLetterEntry.tenant_id == job.tenant_id,
                DeadLetterEntry.entry_id == job.replay_of_entry_id,
                DeadLetterEntry.status == "replaying",
            )
            .values(status="pending", **fields)
            .execution_options(synchronize_session=False)
        )
        returned = result.rowcount or 0
    if not returned:
        session.add(
            DeadLetterEntry(
                tenant_id=job.tenant_id,
                entry_id=str(uuid.uuid4()),
                project_id=project_id,
                job_id=job.job_id,
                job_type=job.job_type,
                source_id=job.source_id,
                payload=payload,
                status="pending",
                replay_count=0,
                first_dead_lettered_at=now,
                **fields,
            )
        )
    await _count_failed(session, job.tenant_id, job.source_id, 1)
    await session.flush()
    _count_dead_lettered(job.job_type, category)


async def _count_failed(session: AsyncSession, tenant_id: int, source_id: str, jobs: int) -> None:
    await session.execute(
        update(Source)
        .where(Source.tenant_id == tenant_id, Source.source_id == source_id)
        .values(jobs_failed=Source.jobs_failed + jobs)
        .execution_options(synchronize_session=False)
    )


def _count_dead_lettered(job_type: str, category: str) -> None:
    metrics.DEAD_LETTERED.labels(
        metrics.open_label("job_type", job_type), metrics.open_label("category", category)
    ).inc()


# -- Ends written in batches (the worker's outcome loop)


@dataclass(frozen=True)
class Ending:
    """An attempt's end as the worker hands it to :func:`end_many`: ``succeeded``, ``cancel``, or
    ``failed`` with its failure."""

    job: JobContext
    outcome: str
    failure: JobFailure | None = None


def batchable(job: JobContext, outcome: str, failure: JobFailure | None) -> bool:
    """Whether :func:`end_many` may write this end. The steps of a pack run (their run is locked
    before and settled after each step's end) and replay jobs (their dead-letter entry moves with
    them) are written one at a time, by :func:`succeed`, :func:`fail` and :func:`cancel`."""
    if job.pack_run_id is not None or job.replay_of_entry_id is not None:
        return False
    return outcome in ("succeeded", "cancel") or (outcome == "failed" and failure is not None)


# The given rows: the job, the status its end asks for (succeeded, canceled, scheduled, failed), the
# retry's run_after and the error fields (NULL for a success or a cancel: the job keeps its own).
_ENDS = {
    "tenant_id": BigInteger, "job_id": String, "status": String, "run_after": DateTime(timezone=True),
    "code": String, "category": String, "message": Text,
}  # fmt: skip
# The dead-letter entries of the jobs that end failed: the rest of an entry is read from its job.
_ENTRIES = {"tenant_id": BigInteger, "job_id": String, "entry_id": String, "template": Text, "template_hash": String}
_NOW = bindparam("now", type_=UTCDateTime())
_JOBS = Job.__table__.c


def _unnested(name: str, columns: dict[str, Any]) -> Any:
    """PostgreSQL: the given rows as one array per column (``unnest``), one statement for all."""
    return (
        func.unnest(*(bindparam(f"{name}_{c}", type_=ARRAY(kind)) for c, kind in columns.items()))
        .table_valued(*(column(c, kind) for c, kind in columns.items()))
        .render_derived(name=name)
        .c
    )


def _one_row(name: str, columns: dict[str, Any]) -> Any:
    """SQLite: one given row as parameters (the statement runs once per row)."""
    types = {c: UTCDateTime() if isinstance(kind, DateTime) else kind for c, kind in columns.items()}
    return SimpleNamespace(**{c: bindparam(f"{name}_{c}", type_=kind) for c, kind in types.items()})


def _end_statement(given: Any) -> Any:
    """Each given job's end, guarded as the single path guards it: this worker's lease and an active
    status. A failure of a job whose cancel was requested ends it ``canceled`` (neither retried nor
    dead-lettered), as :func:`_canceled_instead` does; a retry keeps ``finished_at`` unset."""
    retried = and_(given.status == "scheduled", _JOBS.status.in_(RUNNING))
    canceled_instead = and_(given.status.in_(("scheduled", "failed")), _JOBS.status == "cancel_requested")
    return (
        update(Job.__table__)
        .where(
            _JOBS.tenant_id == given.tenant_id,
            _JOBS.job_id == given.job_id,
            _JOBS.lease_owner == bindparam("worker", type_=String),
            _JOBS.status.in_(ACTIVE),
        )
        .values(
            status=case((canceled_instead, "canceled"), else_=given.status),
            finished_at=case((retried, _JOBS.finished_at), else_=_NOW),
            run_after=case((retried, given.run_after), else_=_JOBS.run_after),
            last_error_code=func.coalesce(given.code, _JOBS.last_error_code),
            last_error_category=func.coalesce(given.category, _JOBS.last_error_category),
            last_error_message=func.coalesce(given.message, _JOBS.last_error_message),
            lease_owner=None,
            lease_expires_at=None,
            updated_at=_NOW,
        )
        .returning(_JOBS.tenant_id, _JOBS.job_id, _JOBS.status, _JOBS.job_type, _JOBS.source_id)
    )


def _entries_statement(given: Any) -> Any:
    """The dead-letter entries of the given jobs (just ended ``failed``), as :func:`dead_letter`
    adds them: the job's project, payload, attempts and error fields."""
    entries = DeadLetterEntry.__table__.c
    values = {
        entries.tenant_id: _JOBS.tenant_id, entries.entry_id: given.entry_id, entries.project_id: _JOBS.project_id,
        entries.job_id: _JOBS.job_id, entries.job_type: _JOBS.job_type, entries.source_id: _JOBS.source_id,
        entries.category: _JOBS.last_error_category, entries.error_code: _JOBS.last_error_code,
        entries.message: _JOBS.last_error_message, entries.error_template: given.template,
        entries.template_hash: given.template_hash, entries.payload: _JOBS.payload, entries.attempts: _JOBS.attempt,
        entries.status: literal("pending"), entries.replay_count: literal(0),
        entries.first_dead_lettered_at: _NOW, entries.dead_lettered_at: _NOW, entries.updated_at: _NOW,
    }  # fmt: skip
    rows = select(*values.values()).where(_JOBS.tenant_id == given.tenant_id, _JOBS.job_id == given.job_id)
    return insert(DeadLetterEntry.__table__).from_select(list(values), rows)


_END_MANY = _end_statement(_unnested("ended", _ENDS))
_END_ONE = _end_statement(_one_row("ended", _ENDS))
_ENTRIES_MANY = _entries_statement(_unnested("entries", _ENTRIES))
_ENTRIES_ONE = _entries_statement(_one_row("entries", _ENTRIES))


async def _given(
    session: AsyncSession, many: Any, one: Any, name: str, rows: list[dict[str, Any]], **params: Any
) -> list[Any]:
    """Run a statement over the given rows: once with arrays on PostgreSQL, once per row on SQLite."""
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        arrays = {f"{name}_{c}": [row[c] for row in rows] for c in rows[0]}
        result = await session.execute(many, {**arrays, **params})
        return list(result) if result.returns_rows else []
    returned: list[Any] = []
    for row in rows:
        result = await session.execute(one, {**{f"{name}_{c}": v for c, v in row.items()}, **params})
        returned += list(result) if result.returns_rows else []
    return returned


async def end_many(
    session: AsyncSession,
    worker_id: str,
    ends: list[Ending],
    *,
    backoff_base: float,
    backoff_max: float,
    now: datetime | None = None,
) -> dict[tuple[int, str], str]:
    """The ends of many jobs (each :func:`batchable`) in one transaction, set-based: one ``UPDATE``
    of the jobs, one ``INSERT`` of the dead-letter entries, and one update per source of its
    ``jobs_failed`` (in key order, so two batches never wait for each other in a cycle). Each job
    ends exactly as :func:`succeed`, :func:`fail` or :func:`cancel` would end it alone; a job this
    worker no longer holds gets nothing written. Returns {job: new status}. Commits."""
    now = now or datetime.now(UTC)
    assert all(batchable(e.job, e.outcome, e.failure) for e in ends)
    given: list[dict[str, Any]] = []
    entries: dict[tuple[int, str], dict[str, Any]] = {}
    categories: dict[tuple[int, str], str] = {}
    # In key order: the order the rows are locked in, as the heartbeat's index scan locks them.
    for end in sorted(ends, key=lambda e: (e.job.tenant_id, e.job.job_id)):
        key = (end.job.tenant_id, end.job.job_id)
        row = {"tenant_id": key[0], "job_id": key[1], "status": end.outcome, "run_after": None,
               "code": None, "category": None, "message": None}  # fmt: skip
        if end.outcome == "cancel":
            row["status"] = "canceled"
        elif end.failure is not None:
            status, run_after, error = _failure_end(end.job, end.failure, now, backoff_base, backoff_max)
            code, category = error["last_error_code"], error["last_error_category"]
            message = error["last_error_message"]
            row.update(status=status, run_after=run_after, code=code, category=category, message=message)
            if status == "failed":
                template = error_template(message)
                entries[key] = {"tenant_id": key[0], "job_id": key[1], "entry_id": str(uuid.uuid4()),
                                "template": template, "template_hash": template_hash(code, template)}  # fmt: skip
                categories[key] = category
        given.append(row)
    if not given:
        return {}
    ended = await _given(session, _END_MANY, _END_ONE, "ended", given, worker=worker_id, now=now)
    failed = [(t, j, job_type, source_id) for t, j, status, job_type, source_id in ended if status == "failed"]
    if failed:
        dead = [entries[(t, j)] for t, j, _, _ in failed]
        await _given(session, _ENTRIES_MANY, _ENTRIES_ONE, "entries", dead, now=now)
        for (tenant_id, source_id), jobs in sorted(Counter((t, s) for t, _, _, s in failed).items()):
            await _count_failed(session, tenant_id, source_id, jobs)
    await session.commit()
    for t, j, job_type, _ in failed:
        _count_dead_lettered(job_type, categories[(t, j)])
    return {(t, j): status for t, j, status, _, _ in ended}


async def heartbeat(
    session: AsyncSession, worker_id: str, jobs: list[JobContext], lease_seconds: float, now: datetime | None = None
) -> dict[tuple[int, str], bool]:
    """Extend the leases of the running jobs; returns {job: cancel_requested} for the jobs this
    worker still holds (a job missing from the answer lost its lease). Commits."""
    if not jobs:
        return {}
    now = now or datetime.now(UTC)
    rows = await session.execute(
        update(Job)
        .where(
            tuple_(Job.tenant_id, Job.job_id).in_([(j.tenant_id, j.job_id) for j in jobs]),
            Job.lease_owner == worker_id,
            Job.status.in_(("running", "cancel_requested")),
        )
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(Job.tenant_id, Job.job_id, Job.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    held = {(t, j): bool(c) for t, j, c in rows}
    await session.commit()
    return held


def _claimed(job: Job) -> JobContext:
    return JobContext(
        job.tenant_id,
        job.job_id,
        job.job_type,
        job.source_id,
        job.payload,
        job.attempt,
        job.max_attempts,
        job.pack_run_id,
        job.step_index,
        job.replay_of_entry_id,
        job.lease_owner or "",
        job.started_at or job.updated_at,
    )


async def expire_leases(context: EngineContext, now: datetime | None = None) -> int:
    """Jobs whose lease ran out (their worker died or stalled) go back to the queue.

    One transaction per job, locking its pack run first (the lock order of every step change)."""
    now = now or datetime.now(UTC)
    async with context.sessions() as session:
        candidates = list(
            await session.execute(
                select(Job.tenant_id, Job.job_id, Job.pack_run_id)
                .where(Job.status.in_(ACTIVE), Job.lease_expires_at < now)
                .order_by(Job.lease_expires_at)
                .limit(EXPIRY_BATCH)
            )
        )
    expired = 0
    for tenant_id, job_id, pack_run_id in candidates:
        async with context.sessions() as session:
            if pack_run_id is not None:
                await progress.lock(session, tenant_id, pack_run_id)
            stmt = select(Job).where(
                Job.tenant_id == tenant_id, Job.job_id == job_id, Job.status.in_(ACTIVE), Job.lease_expires_at < now
            )
            if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                stmt = stmt.with_for_update(skip_locked=True)
            row = (await session.execute(stmt)).scalar_one_or_none()
            if row is None:
                continue
            await _expire(session, row, now)
            await session.commit()
            expired += 1
    return expired


async def _expire(session: AsyncSession, row: Job, now: datetime) -> None:
    job, owner = _claimed(row), row.lease_owner
    if row.cancel_requested:
        await _end(session, job, owner, "canceled", now)
        await _follow(session, job, now)
        return
    error = {"last_error_code": "lease.expired", "last_error_category": "timeout"}
    if row.attempt < row.max_attempts:
        # run_after is kept: the job returns to its place in the dispatch order, not behind
        # everything submitted since it was first due.
        await session.execute(
            _guarded(job, owner).values(
                status="pending",
                last_error_message=f"The lease of worker {owner} expired.",
                **error,
                **_lease_cleared(now),
            )
        )
        return
    message = f"The lease of worker {owner} expired on the last attempt."
    result = (
        await session.execute(
            _guarded(job, owner)
            .values(status="failed", finished_at=now, last_error_message=message, **error, **_lease_cleared(now))
            .returning(Job.project_id, Job.payload, Job.attempt)
        )
    ).first()
    if result is not None:
        await dead_letter(session, job, "lease.expired", "timeout", message, result, now)
        await _follow(session, job, now)

"""Submitting jobs (scope ``orch:submit``): the source must be visible and enabled; its
counters move in the same transaction as the new job rows.

One job (``submit_job``) and a batch (``app/domain/jobs/batch.py``) share :func:`validated` (what
a submission's payload types cannot state, and the defaults it takes), :func:`open_sources`
(which sources take jobs) and :func:`count_jobs` (the sources' counters: one statement, run last
in the transaction, because every submission of a source locks its row). The job rows are
written with Core ``INSERT`` statements of prepared values, without the ORM's unit of work; one
job is inserted by one ``INSERT … SELECT`` that also checks its source."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Annotated, Any

import msgspec
from sqlalchemy import bindparam, case, insert, literal_column, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import FieldError, Problem, not_found
from app.domain.jobs import why
from app.domain.sources.schemas import SourceIdText
from app.domain.workers.registry import SERVED_WINDOW
from app.storage.db import run_last
from app.storage.models import AuditRecord, Job, Source

JobTypeText = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9._-]{0,127}$", max_length=128)]
Priority = Annotated[int, msgspec.Meta(ge=-100, le=100, description="Higher runs first")]
MaxAttempts = Annotated[int, msgspec.Meta(ge=1, le=20)]
Payload = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description="The handler's input: a JSON object nested at most 32 levels, whose texts (keys and "
        "values) do not contain the NUL character (else 400 `validation_failed`)"
    ),
]
DEFAULT_MAX_ATTEMPTS = 3


class JobSubmit(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    job_type: JobTypeText
    source_id: SourceIdText
    payload: Payload = {}
    priority: Priority = 0
    max_attempts: MaxAttempts = DEFAULT_MAX_ATTEMPTS
    run_after: datetime | None = None


MAX_PAYLOAD_DEPTH = 32


def check_payload(payload: Any, field: str = "payload") -> None:
    """What the payload types cannot state: the database's JSON cannot hold the NUL character,
    and nesting is bounded (deeper documents would exhaust the encoder)."""
    problem: str | None = None
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack and problem is None:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                problem = "must not contain the NUL character (\\u0000)"
        elif isinstance(value, (dict, list)):
            if depth > MAX_PAYLOAD_DEPTH:
                problem = f"must not nest deeper than {MAX_PAYLOAD_DEPTH} levels"
            elif isinstance(value, dict):
                stack.extend((k, depth) for k in value)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
    if problem is not None:
        raise Problem(
            400,
            "validation_failed",
            f"The request is invalid: {field}: {problem}.",
            errors=[FieldError(field=field, message=problem)],
        )


def validated(data: JobSubmit, now: datetime, field: str = "payload") -> dict[str, Any]:
    """The column values a submission decides (raises 400 ``validation_failed`` on a payload the
    database cannot store): a ``runAfter`` without a zone is UTC, one in the past is now, one in
    the future makes the job ``scheduled``."""
    check_payload(data.payload, field)
    run_after = data.run_after
    if run_after is not None and run_after.tzinfo is None:
        run_after = run_after.replace(tzinfo=UTC)
    scheduled = run_after is not None and run_after > now
    return {
        "job_type": data.job_type,
        "payload": data.payload,
        "priority": data.priority,
        "max_attempts": data.max_attempts,
        "run_after": run_after if scheduled else now,
        "status": "scheduled" if scheduled else "pending",
    }


async def open_sources(
    session: AsyncSession, caller: Caller, source_ids: Iterable[str]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Which of ``source_ids`` take jobs (one read, no lock): the project of each visible, enabled
    source, and the refusal code of each other one (``not_found``: unknown, another tenant's or
    another project's; ``source_disabled``)."""
    wanted = set(source_ids)
    stmt = select(Source.source_id, Source.project_id, Source.enabled).where(
        Source.tenant_id == caller.tenant_id, Source.source_id.in_(sorted(wanted))
    )
    if caller.project is not None:
        stmt = stmt.where(Source.project_id == caller.project)
    projects: dict[str, str | None] = {}
    refused = dict.fromkeys(wanted, "not_found")
    for source_id, project_id, enabled in await session.execute(stmt):
        if enabled:
            projects[source_id] = project_id
            del refused[source_id]
        else:
            refused[source_id] = "source_disabled"
    return projects, refused


def count_jobs(session: AsyncSession, tenant_id: int, counts: dict[str, int], now: datetime) -> None:
    """Count new jobs on their sources (``counts``: source id → new jobs) with one statement that
    runs last in the transaction (``run_last``): every submission of a source updates its row, so
    the row's lock is held only from this statement to the commit. Over several sources the rows
    are locked in ``source_id`` order, so that concurrent requests over overlapping sources wait
    for each other, never in a cycle."""
    scope = [Source.tenant_id == tenant_id]
    if len(counts) == 1:
        [(source_id, added)] = counts.items()
        scope.append(Source.source_id == source_id)
    else:
        added = case(counts, value=Source.source_id, else_=0)
        locked = (
            select(Source.source_id)
            .where(Source.tenant_id == tenant_id, Source.source_id.in_(sorted(counts)))
            .order_by(Source.source_id)
            .with_for_update()
        )
        scope.append(Source.source_id.in_(locked.scalar_subquery()))
    statement = (
        update(Source)
        .where(*scope)
        .values(jobs_submitted=Source.jobs_submitted + added, last_job_at=now)
        .execution_options(synchronize_session=False)
    )

    async def count(session: AsyncSession) -> None:
        await session.execute(statement)

    run_last(session, count)


def job_row(
    tenant_id: int, source_id: str, project_id: str | None, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """A new job's row: ``fields`` from :func:`validated`, the rest of a job not yet claimed."""
    return {
        "tenant_id": tenant_id,
        "job_id": str(uuid.uuid4()),
        "project_id": project_id,
        "source_id": source_id,
        "attempt": 0,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


_UNSET = dict.fromkeys(column.key for column in Job.__table__.c)


def submitted(row: dict[str, Any]) -> SimpleNamespace:
    """A job just inserted as its answer reads it: the columns of ``row``, the others null. Not an
    ORM entity: nothing is to track, and building one costs a submission more than its answer."""
    return SimpleNamespace(**{**_UNSET, **row})


INSERT_JOBS = insert(Job.__table__)  # Core: the rows are complete, nothing for the ORM to track
_JOBS = Job.__table__.c
_FROM_SOURCE = ("tenant_id", "job_id", "source_id", "job_type", "payload", "priority", "status", "attempt",
                "max_attempts", "run_after", "cancel_requested", "created_at", "updated_at")


def _insert_from_source(project_scoped: bool) -> Any:
    """``INSERT INTO jobs … SELECT … FROM sources WHERE <visible, enabled> RETURNING project_id``:
    the job and its source's check in one statement (its project taken from the source)."""
    # Parameters are named ``new_<column>``: a name equal to a column would also be taken as a
    # value to set by the UPDATE of the statement that embeds this one.
    values = [bindparam(f"new_{name}", type_=_JOBS[name].type) for name in _FROM_SOURCE]
    where = [
        Source.tenant_id == bindparam("new_tenant_id"),
        Source.source_id == bindparam("new_source_id"),
        Source.enabled,
    ]
    if project_scoped:
        where.append(Source.project_id == bindparam("project"))
    chosen = select(*values, Source.project_id).where(*where)
    return insert(Job.__table__).from_select([*_FROM_SOURCE, "project_id"], chosen)


def _new(row: dict[str, Any]) -> dict[str, Any]:
    return {f"new_{name}": value for name, value in row.items()}


INSERT_FROM_SOURCE = {
    scoped: _insert_from_source(scoped).returning(_JOBS.project_id) for scoped in (False, True)
}


def disabled(source_id: str) -> Problem:
    return Problem(409, "source_disabled", f"Source {source_id!r} is disabled; it accepts no jobs.")


async def refusal(session: AsyncSession, caller: Caller, source_id: str) -> Problem:
    """Why a source took no job (its guarded insert inserted nothing): 404 when the caller cannot see
    it, 409 ``source_disabled`` when it is disabled."""
    _, refused = await open_sources(session, caller, [source_id])
    if refused[source_id] == "not_found":
        return not_found("Source")
    return disabled(source_id)


def _submit_at_once(project_scoped: bool) -> Any:
    """PostgreSQL, one statement: the job (``INSERT … SELECT`` from its visible, enabled source),
    its source's counter and the request's audit row (``audit_*`` parameters), the last two only
    when the job was inserted. Run on its own (autocommit), it is the whole transaction: one round
    trip, and the source row is locked only while the statement runs. With the job's project it
    returns the facts of its type the answer reads (``why.submission_facts`` at the job's creation
    time; ``served_since`` parameter)."""
    job = _insert_from_source(project_scoped).returning(_JOBS.project_id, _JOBS.source_id).cte("job")
    counted = (
        update(Source)
        .where(Source.tenant_id == bindparam("new_tenant_id"), Source.source_id.in_(select(job.c.source_id)))
        .values(
            jobs_submitted=Source.jobs_submitted + literal_column("1"), last_job_at=bindparam("new_created_at")
        )
        .returning(Source.source_id)
        .cte("counted")
    )
    audit_columns = [c for c in AuditRecord.__table__.c if c.name != "id"]
    audited = (
        insert(AuditRecord.__table__)
        .from_select(
            [c.name for c in audit_columns],
            select(*(bindparam(f"audit_{c.name}", type_=c.type) for c in audit_columns)).select_from(job),
        )
        .returning(AuditRecord.__table__.c.id)
        .cte("audited")
    )
    facts = why.submission_facts(
        bindparam("new_tenant_id"),
        bindparam("new_job_type"),
        bindparam("new_created_at"),
        bindparam("served_since", type_=_JOBS["created_at"].type),
    ).subquery("facts")
    return select(job.c.project_id, *facts.c).select_from(job.join(facts, true())).add_cte(counted, audited)


SUBMIT_AT_ONCE = {scoped: _submit_at_once(scoped) for scoped in (False, True)}


async def submit_job_at_once(
    session: AsyncSession, caller: Caller, data: JobSubmit, audit: Callable[[str, int], dict[str, Any]]
) -> tuple[SimpleNamespace, Any]:
    """:func:`submit_job` and its audit row in one autocommitted statement (PostgreSQL; a request
    without ``Idempotency-Key``, whose answer need not be stored with it). ``audit(target,
    status)`` gives the audit row's values. Returns the job and the facts of its type for the
    answer (``why.on_submission``'s ``facts``, read at the job's ``created_at``). A refused source
    raises 404 or 409 as :func:`submit_job` does, and nothing was written."""
    now = datetime.now(UTC)
    row = job_row(caller.tenant_id, data.source_id, None, validated(data, now), now)
    audit_row = {f"audit_{name}": value for name, value in audit(row["job_id"], 201).items()}
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    statement = SUBMIT_AT_ONCE[caller.project is not None]
    parameters = {**_new(row), **audit_row, "project": caller.project, "served_since": now - SERVED_WINDOW}
    inserted = (await connection.execute(statement, parameters)).first()
    if inserted is None:
        raise await refusal(session, caller, data.source_id)
    row["project_id"] = inserted.project_id
    return submitted(row), inserted


async def take_source(session: AsyncSession, caller: Caller, source_id: str, jobs: int, now: datetime) -> Source:
    """Count ``jobs`` new jobs on the source (one guarded statement) and return it.

    Unknown, other tenants' and other projects' sources are 404; a disabled source is 409
    ``source_disabled`` (the caller's transaction is then rolled back, counters included)."""
    stmt = (
        update(Source)
        .where(Source.tenant_id == caller.tenant_id, Source.source_id == source_id)
        .values(jobs_submitted=Source.jobs_submitted + jobs, last_job_at=now)
        .returning(Source)
        .execution_options(synchronize_session=False)
    )
    if caller.project is not None:
        stmt = stmt.where(Source.project_id == caller.project)
    source = (await session.execute(stmt)).scalar_one_or_none()
    if source is None:
        raise not_found("Source")
    if not source.enabled:
        raise disabled(source_id)
    return source


def new_job(
    source: Source,
    *,
    job_type: str,
    payload: dict[str, Any],
    now: datetime,
    priority: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    run_after: datetime | None = None,
    status: str = "pending",
    pack_run_id: str | None = None,
    step_index: int | None = None,
) -> Job:
    return Job(
        tenant_id=source.tenant_id,
        job_id=str(uuid.uuid4()),
        project_id=source.project_id,
        source_id=source.source_id,
        job_type=job_type,
        payload=payload,
        priority=priority,
        status=status,
        attempt=0,
        max_attempts=max_attempts,
        run_after=max(run_after, now) if run_after is not None else now,
        pack_run_id=pack_run_id,
        step_index=step_index,
        cancel_requested=status == "canceled",
        created_at=now,
        updated_at=now,
        finished_at=now if status == "canceled" else None,
    )


async def submit_job(session: AsyncSession, caller: Caller, data: JobSubmit) -> SimpleNamespace:
    """Insert the job (one statement that also checks its source) and count it on its source
    last (:func:`count_jobs`); returns the new job (:func:`submitted`). A refused
    source raises 404 or 409 ``source_disabled``."""
    now = datetime.now(UTC)
    row = job_row(caller.tenant_id, data.source_id, None, validated(data, now), now)
    statement = INSERT_FROM_SOURCE[caller.project is not None]
    inserted = (await session.execute(statement, {**_new(row), "project": caller.project})).first()
    if inserted is None:
        raise await refusal(session, caller, data.source_id)
    row["project_id"] = inserted.project_id
    count_jobs(session, caller.tenant_id, {data.source_id: 1}, now)
    return submitted(row)


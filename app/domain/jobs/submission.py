"""Submitting jobs (scope ``orch:submit``): the source must be visible and enabled; its
counters move in the same transaction as the new job rows.

One job (``submit_job``) and a batch (``app/domain/jobs/batch.py``) share :func:`validated` (what
a submission's payload types cannot state, and the defaults it takes) and :func:`count_jobs`
(the sources' counters, one guarded statement for every source of the request); the job rows
are written with a Core ``INSERT`` of prepared values, without the ORM's unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import FieldError, Problem, not_found
from app.domain.sources.schemas import SourceIdText
from app.storage.models import Job, Source

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


async def count_jobs(
    session: AsyncSession, caller: Caller, counts: dict[str, int], now: datetime
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Count new jobs on their sources: ``counts`` maps a source id to its number of new jobs.

    One guarded ``UPDATE`` for every source of the request (visible to the caller and enabled);
    over several sources it locks their rows in ``source_id`` order first, so that concurrent
    requests over overlapping sources wait for each other, never in a cycle. Returns the project
    of each counted source, and the refusal code of each other one (``not_found``: unknown,
    another tenant's or another project's; ``source_disabled``), read only when there is one."""
    visible = [Source.tenant_id == caller.tenant_id]
    if caller.project is not None:
        visible.append(Source.project_id == caller.project)
    if len(counts) == 1:
        [(source_id, added)] = counts.items()
        chosen: Any = Source.source_id == source_id
    else:
        added = case(counts, value=Source.source_id, else_=0)
        chosen = Source.source_id.in_(
            select(Source.source_id)
            .where(*visible, Source.source_id.in_(sorted(counts)), Source.enabled)
            .order_by(Source.source_id)
            .with_for_update()
            .scalar_subquery()
        )
    counted = await session.execute(
        update(Source)
        .where(*visible, chosen, Source.enabled)
        .values(jobs_submitted=Source.jobs_submitted + added, last_job_at=now)
        .returning(Source.source_id, Source.project_id)
        .execution_options(synchronize_session=False)
    )
    projects: dict[str, str | None] = dict(counted.tuples().all())
    refused: dict[str, str] = {}
    if len(projects) < len(counts):
        missing = [source_id for source_id in counts if source_id not in projects]
        seen = await session.execute(select(Source.source_id).where(*visible, Source.source_id.in_(missing)))
        disabled = set(seen.scalars())  # visible but not counted: disabled
        refused = {source_id: "source_disabled" if source_id in disabled else "not_found" for source_id in missing}
    return projects, refused


def job_row(tenant_id: int, source_id: str, project_id: str | None, fields: dict[str, Any], now: datetime) -> dict[str, Any]:
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


INSERT_JOBS = insert(Job.__table__)  # Core: the rows are complete, nothing for the ORM to track


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
        raise Problem(409, "source_disabled", f"Source {source_id!r} is disabled; it accepts no jobs.")
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


async def submit_job(session: AsyncSession, caller: Caller, data: JobSubmit) -> Job:
    """Count the job on its source and insert it (two statements); returns the new job, not
    attached to the session. A refused source raises 404 or 409 ``source_disabled``."""
    now = datetime.now(UTC)
    fields = validated(data, now)
    projects, refused = await count_jobs(session, caller, {data.source_id: 1}, now)
    if refused:
        if refused[data.source_id] == "not_found":
            raise not_found("Source")
        raise Problem(409, "source_disabled", f"Source {data.source_id!r} is disabled; it accepts no jobs.")
    row = job_row(caller.tenant_id, data.source_id, projects[data.source_id], fields, now)
    await session.execute(INSERT_JOBS, row)
    return Job(**row)

"""Submitting jobs (scope ``orch:submit``): the source must be visible and enabled; its
counters move in the same transaction as the new job rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import FieldError, Problem, not_found
from app.domain.sources.schemas import SourceIdText
from app.domain.workers import registry
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
    check_payload(data.payload)
    now = datetime.now(UTC)
    source = await take_source(session, caller, data.source_id, 1, now)
    run_after = data.run_after
    if run_after is not None and run_after.tzinfo is None:
        run_after = run_after.replace(tzinfo=UTC)
    job = new_job(
        source,
        job_type=data.job_type,
        payload=data.payload,
        now=now,
        priority=data.priority,
        max_attempts=data.max_attempts,
        run_after=run_after,
        status="scheduled" if run_after is not None and run_after > now else "pending",
    )
    session.add(job)
    await session.flush()
    return job


async def warnings_for(session: AsyncSession, caller: Caller, job_type: str, now: datetime | None = None) -> list[str]:
    """What a submission of ``job_type`` should know: ``no_worker_for_job_type`` when no worker that may
    run the tenant's jobs has served the type in the last hour (the job is queued all the same)."""
    served = await registry.served_recently(session, caller.tenant_id, job_type, now or datetime.now(UTC))
    return [] if served else ["no_worker_for_job_type"]

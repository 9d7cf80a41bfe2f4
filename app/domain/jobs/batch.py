"""Batch submission (``POST /jobengine/jobs/batch``, scope ``orch:submit``): up to
:data:`MAX_JOBS` jobs in one request, one result per item in request order.

Every item is validated first, on its own, exactly as a single submission is
(:func:`app.domain.jobs.submission.validated` behind the same ``JobSubmit`` payload type): an
invalid item is refused in its result (``validation_failed``), never the whole request. Then the
items' sources are read once (:func:`open_sources`: an unknown, other tenant's or other
project's source refuses its items with ``not_found``, a disabled one with ``source_disabled``),
the accepted jobs are inserted with one multi-row ``INSERT`` and counted on their sources with
one statement (:func:`count_jobs`, run last), all in the request's transaction with its audit
row (one per batch). Only the body itself (not an object,
``jobs`` not a list, 0 or more than 500 items) is a 400.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import msgspec
from sqlalchemy import (
    Boolean, DateTime, Integer, String, bindparam, cast, column, func, insert, literal, select,
)  # fmt: skip
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.domain.jobs.submission import INSERT_JOBS, JobSubmit, count_jobs, job_row, open_sources, validated
from app.storage.models import Job

MAX_JOBS = 500
_JOBS_DESCRIPTION = (
    f"1 to {MAX_JOBS} jobs, each a `JobSubmit`; each is validated on its own, and an invalid one is refused "
    "in its result (`validation_failed`) without refusing the others"
)
SOURCE_DETAILS = {
    "not_found": "Source not found.",
    "source_disabled": "The source is disabled; it accepts no jobs.",
}


class JobBatch(msgspec.Struct, forbid_unknown_fields=True):
    # The items are decoded one by one (see the module doc); the contract states their type.
    schema_extra: ClassVar[dict[str, Any]] = {
        "properties": {
            "jobs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/JobSubmit"},
                "minItems": 1,
                "maxItems": MAX_JOBS,
                "description": _JOBS_DESCRIPTION,
            }
        }
    }

    jobs: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=MAX_JOBS, description=_JOBS_DESCRIPTION)]


class BatchItemError(msgspec.Struct):
    code: str
    detail: str


class BatchItemResult(msgspec.Struct, rename="camel", omit_defaults=True):
    """``{index, jobId}`` for an accepted item, ``{index, error}`` for a refused one."""

    schema_extra: ClassVar[dict[str, Any]] = {
        "description": "An accepted item has `jobId` (the new job), a refused one `error`; never both"
    }

    index: int
    job_id: str | None = None
    error: BatchItemError | None = None


class BatchResults(msgspec.Struct):
    results: list[BatchItemResult]

    @property
    def all_accepted(self) -> bool:
        return all(result.error is None for result in self.results)


# PostgreSQL: the rows as one array per column, one statement whatever the number of jobs
# (``INSERT … SELECT FROM unnest(…)``): no per-row parameter processing, one plan.
_ARRAYS = {
    "job_id": String, "project_id": String, "source_id": String, "job_type": String, "payload": String,
    "priority": Integer, "status": String, "max_attempts": Integer, "run_after": DateTime(timezone=True),
}  # fmt: skip
_ROWS = func.unnest(*(bindparam(name, type_=ARRAY(kind)) for name, kind in _ARRAYS.items())).table_valued(
    *(column(name, kind) for name, kind in _ARRAYS.items())
).render_derived(name="given")
_CONSTANTS = {
    "tenant_id": bindparam("tenant_id", type_=Integer),
    "attempt": literal(0, Integer),
    "cancel_requested": literal(False, Boolean),
    "created_at": bindparam("now", type_=DateTime(timezone=True)),
    "updated_at": bindparam("now", type_=DateTime(timezone=True)),
}
_VALUES = {name: cast(_ROWS.c.payload, JSONB) if name == "payload" else _ROWS.c[name] for name in _ARRAYS}
INSERT_UNNESTED = insert(Job.__table__).from_select(
    [*_CONSTANTS, *_VALUES], select(*_CONSTANTS.values(), *_VALUES.values()).select_from(_ROWS)
)


async def _insert(session: AsyncSession, tenant_id: int, rows: list[dict[str, Any]], now: datetime) -> None:
    if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
        await session.execute(INSERT_JOBS, rows)
        return
    arrays: dict[str, Any] = {name: [row[name] for row in rows] for name in _ARRAYS if name != "payload"}
    arrays["payload"] = [_ENCODE(row["payload"]).decode() for row in rows]
    await session.execute(INSERT_UNNESTED, {**arrays, "tenant_id": tenant_id, "now": now})


_ENCODE = msgspec.json.Encoder().encode


def _check(index: int, item: Any, now: datetime) -> tuple[JobSubmit, dict[str, Any]] | BatchItemError:
    """The item as a single submission would take it, or why it is refused."""
    try:
        data = msgspec.convert(item, JobSubmit)
        return data, validated(data, now, f"jobs[{index}].payload")
    except msgspec.ValidationError as exc:
        return BatchItemError("validation_failed", f"The item is invalid: {exc}.")
    except Problem as problem:
        return BatchItemError(problem.code, problem.detail)


async def submit_batch(session: AsyncSession, caller: Caller, batch: JobBatch) -> BatchResults:
    """Validate every item, count the accepted ones on their sources and insert them; the
    caller's transaction is committed by the route (with the audit row)."""
    now = datetime.now(UTC)
    checked = [_check(index, item, now) for index, item in enumerate(batch.jobs)]
    counts = Counter(c[0].source_id for c in checked if not isinstance(c, BatchItemError))
    projects, refused = await open_sources(session, caller, counts) if counts else ({}, {})
    results: list[BatchItemResult] = []
    rows: list[dict[str, Any]] = []
    for index, outcome in enumerate(checked):
        if isinstance(outcome, BatchItemError):
            results.append(BatchItemResult(index, error=outcome))
            continue
        data, fields = outcome
        if data.source_id in refused:
            code = refused[data.source_id]
            results.append(BatchItemResult(index, error=BatchItemError(code, SOURCE_DETAILS[code])))
            continue
        row = job_row(caller.tenant_id, data.source_id, projects[data.source_id], fields, now)
        rows.append(row)
        results.append(BatchItemResult(index, job_id=row["job_id"]))
    if rows:
        await _insert(session, caller.tenant_id, rows, now)
        count_jobs(session, caller.tenant_id, dict(Counter(row["source_id"] for row in rows)), now)
    return BatchResults(results)

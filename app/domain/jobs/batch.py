"""Batch submission (``POST /jobengine/jobs/batch``, scope ``orch:submit``): up to
:data:`MAX_JOBS` jobs in one request, one result per item in request order.

Every item is validated first, on its own, exactly as a single submission is
(:func:`app.domain.jobs.submission.validated` behind the same ``JobSubmit`` payload type): an
invalid item is refused in its result (``validation_failed``), never the whole request. Then the
items' sources are counted with one guarded statement (:func:`count_jobs`: an unknown, other
tenant's or other project's source refuses its items with ``not_found``, a disabled one with
``source_disabled``) and the accepted jobs are inserted with one multi-row ``INSERT``, all in the
request's transaction with its audit row (one per batch). Only the body itself (not an object,
``jobs`` not a list, 0 or more than 500 items) is a 400.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.problems import Problem
from app.domain.jobs.submission import INSERT_JOBS, JobSubmit, count_jobs, job_row, validated

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
    projects, refused = await count_jobs(session, caller, dict(counts), now) if counts else ({}, {})
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
        await session.execute(INSERT_JOBS, rows)
    return BatchResults(results)

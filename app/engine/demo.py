"""The demo handlers: the job types of the demo data and of the tests.

- ``demo.noop`` succeeds;
- ``demo.sleep`` ``{"seconds": n}`` sleeps (the worker heartbeats meanwhile and stops it when a
  cancel is requested);
- ``demo.fail`` ``{"errorCode", "category", "message", "retryable"}`` always fails with that error;
- ``demo.flaky`` ``{"failUntil": ISO-8601, "errorCode", "category", "message"}`` fails like
  ``demo.fail`` (retryable) until that time, then succeeds.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from app.engine.handlers import JobContext, JobFailure


def _failure(payload: dict[str, Any], *, retryable: bool) -> JobFailure:
    return JobFailure(
        str(payload.get("errorCode") or "demo.failed"),
        str(payload.get("category") or "unknown"),
        str(payload.get("message") or "The demo handler failed as asked."),
        retryable=retryable,
    )


async def noop(job: JobContext) -> None:
    return None


async def sleep(job: JobContext) -> None:
    seconds = job.payload.get("seconds", 1)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise JobFailure("payload.invalid", "validation", "seconds must be a non-negative number", retryable=False)
    await asyncio.sleep(float(seconds))


async def fail(job: JobContext) -> None:
    raise _failure(job.payload, retryable=bool(job.payload.get("retryable", True)))


async def flaky(job: JobContext) -> None:
    raw = job.payload.get("failUntil")
    try:
        until = datetime.fromisoformat(str(raw))
    except ValueError:
        raise JobFailure("payload.invalid", "validation", "failUntil must be an ISO-8601 time", retryable=False) from None
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if datetime.now(UTC) < until:
        raise _failure(job.payload, retryable=True)

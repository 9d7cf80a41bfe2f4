"""Handlers of the engine tests (loaded by workers through JOBGATE_WORKER_HANDLER_MODULES).

``test.record`` appends ``start``/``end`` lines (job id, attempt, wall-clock time) to the file
named in its payload, so a test observes from outside exactly when and how often each job ran.
Payload: ``{"log": path, "seconds": s, "firstAttemptSeconds": s1}`` (``s1`` on attempt 1 only).
"""

from __future__ import annotations

import asyncio
import os
import time

from app.engine.handlers import JobContext


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def record(job: JobContext) -> None:
    path = job.payload["log"]
    _append(path, f"start {job.job_id} {job.attempt} {time.time():.6f} {job.worker_id}")
    seconds = job.payload.get("seconds", 0)
    if job.attempt == 1 and "firstAttemptSeconds" in job.payload:
        seconds = job.payload["firstAttemptSeconds"]
    await asyncio.sleep(float(seconds))
    _append(path, f"end {job.job_id} {job.attempt} {time.time():.6f} {job.worker_id}")


HANDLERS = {"test.record": record}


def read_log(path: str) -> list[tuple[str, str, int, float, str]]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as handle:
        for line in handle:
            kind, job_id, attempt, moment, worker = line.split()
            rows.append((kind, job_id, int(attempt), float(moment), worker))
    return rows


def max_overlap(rows: list[tuple[str, str, int, float, str]]) -> int:
    """The most jobs running at the same moment, from the start/end lines."""
    events = sorted((moment, 1 if kind == "start" else -1) for kind, _, _, moment, _ in rows)
    # at equal times count ends first, so back-to-back runs do not look concurrent
    events.sort(key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak

"""Payloads of the workers route."""

from __future__ import annotations

from datetime import datetime

import msgspec


class WorkerView(msgspec.Struct, rename="camel"):
    worker_id: str
    host: str
    pid: int
    job_types: list[str]
    concurrency: int
    running: int
    started_at: datetime
    last_seen_at: datetime


class WorkerPage(msgspec.Struct, rename="camel"):
    items: list[WorkerView]
    continuation_token: str | None

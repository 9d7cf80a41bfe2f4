"""Job handlers, registered by job type.

A handler is ``async def handle(job: JobContext) -> None``: returning means success, raising
:class:`JobFailure` fails the attempt with a stable error code and category (any other exception
is a retryable ``handler.error``). Handlers come from the ``jobgate.handlers`` entry-point group
(name = job type, value = ``module:function``) and from the ``HANDLERS`` mapping of the modules
named in ``JOBGATE_WORKER_HANDLER_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "jobgate.handlers"


class JobFailure(Exception):
    def __init__(self, error_code: str, category: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.category = category
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class JobContext:
    """A claimed job: what the dispatcher leases, the outcome statements guard and a handler runs."""

    tenant_id: int
    job_id: str
    job_type: str
    source_id: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    pack_run_id: str | None
    step_index: int | None
    replay_of_entry_id: str | None
    worker_id: str
    claimed_at: datetime


Handler = Callable[[JobContext], Awaitable[None]]


def load_handlers(modules: tuple[str, ...] = ()) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        handlers[entry.name] = entry.load()
    for name in modules:
        handlers.update(importlib.import_module(name).HANDLERS)
    return handlers


def known_job_types(modules: tuple[str, ...] | None = None) -> frozenset[str]:
    """Job types with a registered handler: entry points and the modules named in
    ``JOBGATE_WORKER_HANDLER_MODULES`` (or ``modules``)."""
    if modules is None:
        from app.engine.config import load_worker_config

        modules = load_worker_config().handler_modules
    names = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
    for name in modules:
        names.update(importlib.import_module(name).HANDLERS)
    return frozenset(names)

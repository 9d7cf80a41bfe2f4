"""The worker inside the gateway process, for the embedded default (SQLite, no separate worker).

``stop = await start(runtime)`` in the application's lifespan, ``await stop()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.engine.config import load_worker_config
from app.engine.handlers import load_handlers
from app.engine.worker import Worker

if TYPE_CHECKING:
    from app.engine.context import EngineContext

log = logging.getLogger("jobgate.worker")


def wanted(context: EngineContext) -> bool:
    """The embedded default (SQLite) runs its worker in the gateway, as does JOBGATE_EMBEDDED_WORKER."""
    return context.settings.is_sqlite or context.settings.embedded_worker


async def start(context: EngineContext, *, concurrency: int | None = None) -> Callable[[], Awaitable[None]]:
    """Start a worker task on the running loop when :func:`wanted`; returns its stop function.

    It runs ``concurrency`` jobs at once, by default ``JOBGATE_EMBEDDED_WORKER_CONCURRENCY``."""
    if not wanted(context):
        async def nothing() -> None:
            return None

        return nothing
    config = load_worker_config()
    if concurrency is None:
        concurrency = context.settings.embedded_worker_concurrency
    worker = Worker(context, config, load_handlers(config.handler_modules), concurrency=concurrency)
    stop_event = asyncio.Event()
    task = asyncio.create_task(worker.run(stop_event), name="jobgate-embedded-worker")

    async def stop() -> None:
        stop_event.set()
        try:
            await asyncio.wait_for(task, timeout=config.shutdown_grace_seconds + 10)
        except Exception:
            log.exception("embedded worker did not stop cleanly")

    return stop

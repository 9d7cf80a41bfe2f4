"""Worker settings: ``JOBGATE_WORKER_*`` variables, read once when a worker starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from app.settings import SettingsError


@dataclass(frozen=True)
class WorkerConfig:
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 0.5
    batch: int = 64
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    shutdown_grace_seconds: float = 10.0
    handler_modules: tuple[str, ...] = ()
    # Ends (successes, retries, dead-letters, cancels) within this window of the first are written
    # in one batch (the worker's ``_outcome_loop``); not a setting: short enough to add nothing a
    # client notices.
    outcome_window_seconds: float = 0.005


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = environ.get(f"JOBGATE_WORKER_{name}")
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"JOBGATE_WORKER_{name} must be a number (got {raw!r})") from None
    if value < minimum:
        raise SettingsError(f"JOBGATE_WORKER_{name} must be at least {minimum}")
    return value


def load_worker_config(environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """``LEASE_SECONDS`` (30), ``HEARTBEAT_SECONDS`` (5, below the lease), ``POLL_SECONDS`` (0.5),
    ``BATCH`` (64 jobs per claim), ``BACKOFF_BASE_SECONDS`` (2), ``BACKOFF_MAX_SECONDS`` (300),
    ``SHUTDOWN_GRACE_SECONDS`` (10) and ``HANDLER_MODULES`` (comma-separated modules whose
    ``HANDLERS`` mapping adds job handlers beside the entry points)."""
    env = os.environ if environ is None else environ
    lease = _number(env, "LEASE_SECONDS", 30.0, minimum=0.5)
    heartbeat = _number(env, "HEARTBEAT_SECONDS", min(5.0, lease / 3), minimum=0.05)
    if heartbeat >= lease:
        raise SettingsError("JOBGATE_WORKER_HEARTBEAT_SECONDS must be below JOBGATE_WORKER_LEASE_SECONDS")
    modules = tuple(m.strip() for m in env.get("JOBGATE_WORKER_HANDLER_MODULES", "").split(",") if m.strip())
    return WorkerConfig(
        lease_seconds=lease,
        heartbeat_seconds=heartbeat,
        poll_seconds=_number(env, "POLL_SECONDS", 0.5, minimum=0.01),
        batch=int(_number(env, "BATCH", 64, minimum=1)),
        backoff_base_seconds=_number(env, "BACKOFF_BASE_SECONDS", 2.0, minimum=0.0),
        backoff_max_seconds=_number(env, "BACKOFF_MAX_SECONDS", 300.0, minimum=0.0),
        shutdown_grace_seconds=_number(env, "SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0.0),
        handler_modules=modules,
    )

"""Real worker processes (``python -m app.cli worker``) on the test database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

FAST = {
    "JOBGATE_WORKER_LEASE_SECONDS": "3",
    "JOBGATE_WORKER_HEARTBEAT_SECONDS": "0.3",
    "JOBGATE_WORKER_POLL_SECONDS": "0.05",
    "JOBGATE_WORKER_BACKOFF_BASE_SECONDS": "0.05",
    "JOBGATE_WORKER_BACKOFF_MAX_SECONDS": "0.2",
    "JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS": "1",
    "JOBGATE_WORKER_HANDLER_MODULES": "tests.engine.handlers",
}


class WorkerProcess:
    def __init__(self, env: dict[str, str], tenant: str, *, concurrency: int = 4, **overrides: str) -> None:
        self.worker_id = f"w-{uuid.uuid4().hex[:8]}"
        self.log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--tenant", tenant, "--concurrency", str(concurrency),
             "--worker-id", self.worker_id],
            env={**os.environ, **env, **FAST, **overrides},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def terminate(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker logged that it runs (it claims from then on)."""
        deadline = time.monotonic() + timeout
        while f"worker {self.worker_id} started" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start: {self.output()[-2000:]}")
            await asyncio.sleep(0.05)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.unlink(self.log.name)


@pytest.fixture
def workers(gateway_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers(tenant, concurrency=4, **env)`` starts a worker that claims only that tenant's jobs."""
    started: list[WorkerProcess] = []

    def start(tenant: str, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(gateway_env, tenant, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s (last value: {value!r})")


@pytest.fixture
def log_path() -> Iterator[str]:
    path = Path(tempfile.mkdtemp(prefix="jobgate-runs-")) / "runs.log"
    yield str(path)
    if path.exists():
        path.unlink()
    path.parent.rmdir()


@pytest.fixture(autouse=True)
def test_handlers_known_to_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process gateway knows the test job types too (pack runs of unknown types are blocked)."""
    monkeypatch.setenv("JOBGATE_WORKER_HANDLER_MODULES", FAST["JOBGATE_WORKER_HANDLER_MODULES"])

"""Gateway processes started as in production (``jobgate serve``), and the readers of their output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, free_port


class Served:
    """``jobgate serve ARGS`` on a free port with the test settings; stdout and stderr to one file."""

    def __init__(self, env: dict[str, str], *args: str, **overrides: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="served-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), *args],
            env={**os.environ, **env, "JOBGATE_PUBLIC_URL": self.url, **overrides},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited ({self.process.returncode}): {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready within {timeout} s: {self.output()[-2000:]}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.unlink(self.log.name)


def wait_until(check: Any, *, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s (last value: {value!r})")


def samples(exposition: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one metric in an exposition text: labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found

"""The embedded default: `jobgate serve --demo` with no JOBGATE_* settings runs on SQLite in ./.jobgate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from app.seed import SOURCES, demo_id
from tests.conftest import free_port, stop_process_group

CURL_LINE = re.compile(
    r"curl -s (?P<url>http://\S+) -H 'Authorization: Bearer (?P<token>[^']+)' -H 'X-Stella-Tenant: (?P<tenant>[^']+)'"
)


class EmbeddedGateway:
    """`python -m app.cli serve --demo` in a fresh working directory, with no JOBGATE_* variable set."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_until(self, ready, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"gateway exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready within {timeout} s:\n{self.output()[-3000:]}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def curl_line(self) -> re.Match[str] | None:
        return next((m for m in map(CURL_LINE.search, list(self.lines)) if m), None)

    def stop(self) -> None:
        stop_process_group(self.process)
        self._reader.join(5)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedGateway]:
    """One process for the module: the tests only read from it."""
    gateway = EmbeddedGateway(tmp_path_factory.mktemp("embedded"), free_port())
    try:
        gateway.wait_until(gateway.healthy)
        gateway.wait_until(lambda: gateway.curl_line() is not None, timeout=10)
        yield gateway
    finally:
        gateway.stop()


def test_printed_curl_line_lists_the_demo_sources_of_acme(embedded: EmbeddedGateway):
    match = embedded.curl_line()
    assert match is not None
    assert match["url"] == f"{embedded.url}/jobengine/sources"
    assert match["tenant"] == "acme"
    response = httpx.get(
        match["url"],
        headers={"Authorization": f"Bearer {match['token']}", "X-Stella-Tenant": match["tenant"]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert sorted(s["sourceId"] for s in items) == sorted(demo_id("acme", "source", s.slug) for s in SOURCES)
    assert {s["name"] for s in items} == {s.name for s in SOURCES}


def test_embedded_default_keeps_its_sqlite_file_under_dot_jobgate(embedded: EmbeddedGateway):
    database = embedded.workdir / ".jobgate" / "jobgate.db"
    assert database.is_file() and database.stat().st_size > 0


def test_embedded_default_reports_redis_as_not_configured(embedded: EmbeddedGateway):
    response = httpx.get(f"{embedded.url}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok", "redis": "not_configured", "keys": "ok"}

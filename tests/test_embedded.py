"""The embedded default: `jobgate serve --demo` with no JOBGATE_* settings runs on SQLite in ./.jobgate."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from datetime import UTC, datetime, timedelta
from typing import Iterator

import httpx
import pytest

from app.seed import SOURCES, demo_id, seed_demo
from app.settings import SettingsError, load_settings
from tests.conftest import ROOT, free_port, stop_process_group

CURL_LINE = re.compile(
    r"curl -s (?P<url>http://\S+) -H 'Authorization: Bearer (?P<token>[^']+)' -H 'X-Stella-Tenant: (?P<tenant>[^']+)'"
)


class EmbeddedGateway:
    """`python -m app.cli serve --demo` in a fresh working directory, with no JOBGATE_* variable set."""

    def __init__(self, workdir: Path, port: int, *args: str) -> None:
        """``args``: the options of `serve` (default ``--demo``)."""
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", *(args or ("--demo",)), "--port", str(port)],
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


def _auth(match: re.Match[str], **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {match['token']}", "X-Stella-Tenant": match["tenant"], **extra}


def _started(gateway: EmbeddedGateway) -> EmbeddedGateway:
    try:
        gateway.wait_until(gateway.healthy)
        gateway.wait_until(lambda: gateway.curl_line() is not None, timeout=10)
    except BaseException:
        gateway.stop()
        raise
    return gateway


# --- a restart keeps the user's work ---------------------------------------------------------------


def test_a_restart_keeps_what_was_done_and_does_not_reseed(tmp_path: Path):
    gateway = _started(EmbeddedGateway(tmp_path, free_port()))
    try:
        match = gateway.curl_line()
        assert match is not None
        created = httpx.post(
            f"{gateway.url}/jobengine/sources",
            json={"name": "Kept across restarts", "sourceType": "manual", "projectId": "billing"},
            headers=_auth(match, **{"X-Stella-Operator-Reason": "onboarding"}),
            timeout=10,
        )
        assert created.status_code == 201, created.text
    finally:
        gateway.stop()
    again = _started(EmbeddedGateway(tmp_path, free_port()))  # ./scripts/serve passes --demo every time
    try:
        match = again.curl_line()
        assert match is not None
        kept = httpx.get(f"{again.url}/jobengine/sources/{created.json()['sourceId']}", headers=_auth(match), timeout=10)
        assert kept.status_code == 200, kept.text
        assert "already has tenants" in again.output()
    finally:
        again.stop()


# --- the embedded worker is not held up by the demo ------------------------------------------------


def test_a_job_submitted_to_the_seeded_demo_is_claimed_promptly(tmp_path: Path):
    """The demo seeded ten minutes before this start: its leases have lapsed, so the embedded worker
    takes over every job the demo left leased or running. A demo.noop submitted now still starts
    within seconds: the demo's sleeps are short and fewer than the worker's default concurrency."""
    data_dir = tmp_path / ".jobgate"
    settings = load_settings({"JOBGATE_DATA_DIR": str(data_dir)})

    async def seed_earlier() -> None:
        from app.storage.db import create_engine, session_factory
        from app.storage.migrate import upgrade

        engine = create_engine(settings)
        try:
            await upgrade(engine)
            await seed_demo(session_factory(engine), now=datetime.now(UTC) - timedelta(minutes=10))
        finally:
            await engine.dispose()

    asyncio.run(seed_earlier())
    gateway = _started(EmbeddedGateway(tmp_path, free_port(), "--host", "127.0.0.1"))
    try:
        match = gateway.curl_line()
        assert match is not None
        # Once the worker has taken over a job the demo left leased, it holds what the demo gave it.
        lapsed = f"{gateway.url}/jobengine/jobs/{demo_id('acme', 'job', 'leased-sleep')}"
        deadline = time.monotonic() + 30
        while httpx.get(lapsed, headers=_auth(match), timeout=10).json()["leaseOwner"] == "worker-eu-2":
            assert time.monotonic() < deadline, "the embedded worker did not take over the lapsed lease"
        submitted = httpx.post(
            f"{gateway.url}/jobengine/jobs",
            json={"jobType": "demo.noop", "sourceId": demo_id("acme", "source", "registry-webhook")},
            headers=_auth(match),
            timeout=10,
        )
        assert submitted.status_code == 201, submitted.text
        job_url = f"{gateway.url}/jobengine/jobs/{submitted.json()['jobId']}"
        deadline = time.monotonic() + 10
        status = "pending"
        while status in ("pending", "scheduled") and time.monotonic() < deadline:
            status = httpx.get(job_url, headers=_auth(match), timeout=10).json()["status"]
        assert status not in ("pending", "scheduled"), "the embedded worker did not claim the job within 10 s"
    finally:
        gateway.stop()


@pytest.mark.parametrize("value", ["0", "65", "four", "-1"])
def test_embedded_worker_concurrency_is_validated(tmp_path: Path, value: str):
    with pytest.raises(SettingsError, match="JOBGATE_EMBEDDED_WORKER_CONCURRENCY"):
        load_settings({"JOBGATE_DATA_DIR": str(tmp_path), "JOBGATE_EMBEDDED_WORKER_CONCURRENCY": value})


def test_embedded_worker_concurrency_defaults_to_sixteen_and_is_read(tmp_path: Path):
    assert load_settings({"JOBGATE_DATA_DIR": str(tmp_path)}).embedded_worker_concurrency == 16
    chosen = {"JOBGATE_DATA_DIR": str(tmp_path), "JOBGATE_EMBEDDED_WORKER_CONCURRENCY": "3"}
    assert load_settings(chosen).embedded_worker_concurrency == 3


# --- `jobgate token` finds the gateway's key or says where it looked --------------------------------


def _token(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "token", "--tenant", "acme"],
        cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=60,
    )


def test_token_from_another_directory_creates_no_key_and_says_how_to_find_it(tmp_path: Path):
    result = _token(tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert str((tmp_path / ".jobgate").resolve()) in result.stderr
    assert "JOBGATE_DATA_DIR" in result.stderr and "jobgate serve" in result.stderr
    assert not (tmp_path / ".jobgate").exists()  # no key, no cursor secret, no directory


def test_token_with_the_gateways_data_directory_is_accepted(embedded: EmbeddedGateway, tmp_path: Path):
    result = _token(tmp_path, JOBGATE_DATA_DIR=str(embedded.workdir / ".jobgate"))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    response = httpx.get(
        f"{embedded.url}/jobengine/sources",
        headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": "acme"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    same_directory = _token(embedded.workdir)  # where serve ran: its ./.jobgate
    assert same_directory.returncode == 0, same_directory.stderr

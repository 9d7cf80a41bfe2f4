"""A PostgreSQL and a Redis of the drill's own, started from the installed binaries on free
loopback ports, so that stopping, restarting and pausing them never touches the machine's
shared services. Each is torn down (stopped, data directory removed) even when a drill fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, free_port

HOW_TO_PROVIDE_BINARIES = """
The fault drills start their own PostgreSQL and Redis from the installed binaries.
  PostgreSQL: initdb, pg_ctl and postgres (15 or newer) in JOBGATE_TEST_PG_BIN (a directory),
              else /usr/lib/postgresql/<version>/bin, else on PATH
              (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16).
  Redis:      redis-server at JOBGATE_TEST_REDIS_SERVER (a file), else on PATH
              (apt-get install redis-server; brew install redis).
When running as root, PostgreSQL runs as the user JOBGATE_TEST_PG_USER (default postgres),
which must exist.
"""

# Speed over durability against power loss (a drill database lives for one module). Commits stay
# synchronous: with synchronous_commit off, an immediate stop would lose acknowledged commits.
_PG_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 50
log_min_messages = warning
"""


def _missing(what: str) -> None:
    pytest.exit(f"{what}.{HOW_TO_PROVIDE_BINARIES}", 3)


def pg_bin_dir() -> Path:
    configured = os.environ.get("JOBGATE_TEST_PG_BIN")
    candidates = (
        [configured]
        if configured
        else sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
        )
    )
    if not configured and shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))  # type: ignore[arg-type]
    for candidate in candidates:
        folder = Path(candidate)
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    _missing(f"PostgreSQL binaries not found (looked in {candidates or 'nothing'})")
    raise AssertionError("unreachable")


def redis_server() -> str:
    path = os.environ.get("JOBGATE_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not path or not Path(path).is_file():
        _missing(f"redis-server not found ({path or 'not on PATH'})")
    return path  # type: ignore[return-value]


class DrillPostgres:
    """``initdb`` into a temporary directory and ``pg_ctl`` it; as root, both run as an unprivileged
    user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = pg_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jobgate-drill-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = os.environ.get("JOBGATE_TEST_PG_USER", "postgres")
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                _missing(f"running as root, but the user {user!r} to run PostgreSQL as does not exist")
            self.root.chmod(0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user = [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--clear-groups",
            ]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, *args]
        done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=self.root, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}\n"
                f"{self.server_log()}"
            )
        return done

    def _pg_ctl(self, action: str, *options: str, check: bool = True) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            *options,
            check=check,
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(_PG_CONF.format(port=self.port))

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def migrate(self, env: dict[str, str]) -> None:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            cwd=ROOT,
            timeout=120,
        )

    def server_log(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class DrillRedis:
    """A ``redis-server`` without persistence; ``stop`` and ``start`` keep its port."""

    def __init__(self) -> None:
        self.binary = redis_server()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jobgate-drill-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        with open(self.root / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.root),
                    "--protected-mode",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {(self.root / 'redis.log').read_text()[-1000:]}"
                    )
                time.sleep(0.05)
            finally:
                client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

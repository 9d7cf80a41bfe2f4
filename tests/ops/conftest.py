"""`jobgate ops` against a live gateway: one `jobgate serve` process on the test PostgreSQL and
Redis (with its embedded worker, which runs the replay-by-filter runner), each test on a tenant
of its own with rows made for it, the command run as a subprocess as an operator would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.api.rows import Rows, ago
from tests.conftest import ALL_SCOPES, ROOT, GatewayProcess, free_port

WIDTH = "120"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture(scope="module")
def ops_gateway(gateway_env: dict[str, str]) -> Iterator[GatewayProcess]:
    """Per module: its embedded worker (and its background steps) must not outlive these tests
    and act on the rows of the test directories that run after them."""
    gateway = GatewayProcess(gateway_env, free_port(), JOBGATE_EMBEDDED_WORKER="true")
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        import json

        return json.loads(self.out)


@dataclass
class Operator:
    """One tenant, a token for it, and `jobgate ops` run with them in the environment."""

    tenant: str
    token: str
    url: str
    home: Path

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env.update(
            {
                "JOBGATE_URL": self.url,
                "JOBGATE_TENANT": self.tenant,
                "JOBGATE_TOKEN": self.token,
                "COLUMNS": WIDTH,
                "LINES": "40",
                "HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.home / ".config"),
                "PYTHONUNBUFFERED": "1",
                "TERM": "xterm",
            }
        )
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "app.cli", "ops", *args]

    def __call__(self, *args: str, timeout: float = 120, **env: str | None) -> Result:
        done = subprocess.run(
            self.command(*args), env=self.env(**env), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The gateway itself, to compare with what the command printed."""
        headers = {"Authorization": f"Bearer {self.token}", "X-Stella-Tenant": self.tenant, **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_for(self, check: Callable[[], Any], *, timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
            time.sleep(0.1)


@pytest_asyncio.fixture(loop_scope="session")
async def operator(client, factory, keys, ops_gateway, tmp_path) -> Operator:  # type: ignore[no-untyped-def]
    tenant = await factory.tenant(prefix="ops")
    token = keys.token(tenant=tenant, scope=ALL_SCOPES, sub="ops.alice", exp=int(time.time()) + 3600)
    return Operator(tenant, token, ops_gateway.url, tmp_path)


async def dead_letters(runtime: Any, tenant: str, count: int, **fields: Any) -> list[Any]:
    """``count`` pending entries of one new source, each with its failed job (``job_type``,
    ``error_code``, ``category``… as overrides)."""
    rows = await Rows.of(runtime, tenant)
    source = rows.source()
    created: list[Any] = [source]
    entries = []
    for n in range(count):
        job = rows.job(source_id=source.source_id, job_type=fields.get("job_type", "scan"), status="failed",
                       attempt=3, max_attempts=5, payload={"n": n})
        entry = rows.entry(f"connection refused by 10.0.0.{n}", job_id=job.job_id, source_id=source.source_id,
                           payload={"n": n}, dead_lettered_at=ago(minutes=5, seconds=-n), **fields)
        created += [job, entry]
        entries.append(entry)
    await rows.add(*created)
    return entries

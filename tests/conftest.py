"""Test harness: a throwaway PostgreSQL database and Redis key prefix per run, test keys, factories.

PostgreSQL and Redis are required. They are found at ``JOBGATE_TEST_DATABASE_URL`` (a
``postgresql://`` URL of a maintenance database the run may create databases from) and
``JOBGATE_TEST_REDIS_URL``, defaulting to the local standard ports. When one is unreachable the
run stops at once and says how to provide it; no test is skipped for a missing service.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.support.keys import TestKeys

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ALL_SCOPES = "orch:read orch:quota orch:operate orch:backfill orch:submit"

HOW_TO_PROVIDE = """
The test suite needs PostgreSQL and Redis.
  PostgreSQL: set JOBGATE_TEST_DATABASE_URL=postgresql://USER[:PASSWORD]@HOST:PORT/postgres
              (a role allowed to CREATE DATABASE), or run one locally, e.g.
              docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16
  Redis:      set JOBGATE_TEST_REDIS_URL=redis://HOST:PORT/0, or run one locally, e.g.
              docker run -d -p 6379:6379 redis:7
The run creates its own database (dropped afterwards) and its own Redis key prefix (deleted
afterwards); it never touches other databases or keys.
"""


class Services:
    def __init__(self) -> None:
        self.run_id = secrets.token_hex(4)
        self.admin_url = os.environ.get("JOBGATE_TEST_DATABASE_URL", DEFAULT_PG)
        self.redis_url = os.environ.get("JOBGATE_TEST_REDIS_URL", DEFAULT_REDIS)
        self.database = f"jobgate_test_{self.run_id}"
        base, _, _ = self.admin_url.rpartition("/")
        self.pg_url = f"{base}/{self.database}"
        self.database_url = self.pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.redis_prefix = f"jobgate-test-{self.run_id}:"

    async def _check(self) -> None:
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=5)
        except Exception as exc:  # noqa: BLE001
            pytest.exit(f"PostgreSQL unreachable at {self.admin_url} ({type(exc).__name__}: {exc}).{HOW_TO_PROVIDE}", 3)
        else:
            # Byte-order collation: the documented sort orders are then the same on every server.
            await conn.execute(f'CREATE DATABASE "{self.database}" TEMPLATE template0 LC_COLLATE \'C\' LC_CTYPE \'C\'')
            await conn.close()
        client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=3)
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001
            await self._drop_database()
            pytest.exit(f"Redis unreachable at {self.redis_url} ({type(exc).__name__}).{HOW_TO_PROVIDE}", 3)
        finally:
            await client.aclose()

    async def _drop_database(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    async def _clear_redis(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            async for key in client.scan_iter(match=f"{self.redis_prefix}*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()

    def start(self) -> None:
        asyncio.run(self._check())
        env = {"JOBGATE_DATABASE_URL": self.database_url, "JOBGATE_DATA_DIR": tempfile.mkdtemp()}
        subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env={**os.environ, **env}, check=True,
                       capture_output=True, cwd=ROOT)

    def stop(self) -> None:
        async def cleanup() -> None:
            await self._drop_database()
            await self._clear_redis()

        asyncio.run(cleanup())


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    svc = Services()
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> TestKeys:
    return TestKeys.generate(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobgate-data")


@pytest.fixture(scope="session")
def gateway_env(services: Services, keys: TestKeys, data_dir: Path) -> dict[str, str]:
    """The settings of every gateway the tests start, in-process or as a subprocess."""
    return {
        "JOBGATE_DATABASE_URL": services.database_url,
        "JOBGATE_REDIS_URL": services.redis_url,
        "JOBGATE_REDIS_PREFIX": services.redis_prefix,
        "JOBGATE_DATA_DIR": str(data_dir),
        "JOBGATE_AUTH_JWKS_FILE": str(keys.jwks_path),
        "JOBGATE_AUTH_ISSUER": keys.issuer,
        "JOBGATE_AUTH_AUDIENCE": keys.audience,
        "JOBGATE_CURSOR_SECRET": "test:" + "c" * 32,
        "JOBGATE_RATE_LIMIT": "100000/minute",
        # Several gateways and workers share one test server (max_connections 100 by default).
        "JOBGATE_DATABASE_POOL_SIZE": "8",
        "JOBGATE_PUBLIC_URL": "http://gateway.test",
    }


def make_app(gateway_env: dict[str, str], **overrides: str):  # type: ignore[no-untyped-def]
    from app.server import create_app
    from app.settings import load_settings

    env = {k: v for k, v in {**gateway_env, **overrides}.items() if v is not None}
    return create_app(load_settings(env))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app(gateway_env: dict[str, str]):  # type: ignore[no-untyped-def]
    return make_app(gateway_env)


@asynccontextmanager
async def serving(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    """An in-process client on the test's own event loop, with the app's runtime started."""
    runtime = app.state.runtime
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as test_client:
            yield test_client
    finally:
        await runtime.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with serving(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def runtime(app):  # type: ignore[no-untyped-def]
    return app.state.runtime


class Factory:
    """Creates isolated tenants (a fresh key per test) and the requests' headers."""

    def __init__(self, runtime: Any, keys: TestKeys) -> None:
        self.runtime = runtime
        self.keys = keys

    async def tenant(self, workspace: str | None = None, prefix: str = "t") -> str:
        from app.storage.tenants import add_tenant

        key = f"{prefix}-{uuid.uuid4().hex[:12]}"
        async with self.runtime.sessions.begin() as session:
            await add_tenant(session, key, workspace or f"ws-{key}")
        return key

    def headers(
        self,
        tenant: str,
        *,
        scope: str = ALL_SCOPES,
        reason: str | None = "test run",
        ticket: str | None = None,
        project: str | None = None,
        tenants: list[str] | str | None = None,
        subject: str = "tester",
        **claims: Any,
    ) -> dict[str, str]:
        token = self.keys.token(tenant=tenants if tenants is not None else tenant, scope=scope, sub=subject, **claims)
        headers = {"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}
        if reason is not None:
            headers["X-Stella-Operator-Reason"] = reason
        if ticket is not None:
            headers["X-Stella-Operator-Ticket"] = ticket
        if project is not None:
            headers["X-Stella-Project"] = project
        return headers

    async def source(self, client: Any, tenant: str, **fields: Any) -> dict[str, Any]:
        body = {"name": fields.pop("name", "source"), "sourceType": fields.pop("sourceType", "scanner"), **fields}
        response = await client.post("/jobengine/sources", json=body, headers=self.headers(tenant))
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def factory(runtime, keys: TestKeys) -> Factory:  # type: ignore[no-untyped-def]
    return Factory(runtime, keys)


# --- gateway processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen[Any], *, graceful: bool = True, timeout: float = 10) -> None:
    """Stop a process started with ``start_new_session=True`` and every process of its group:
    SIGTERM first (unless not ``graceful``), SIGKILL to the group after ``timeout``."""
    if graceful and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what is left of the group, also after the server exited
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(10)


class GatewayProcess:
    """``jobgate serve --port PORT ARGS`` with the test settings (plus ``overrides``); stdout and
    stderr to one file."""

    def __init__(
        self, env: dict[str, str], port: int, *args: str, public_url: str | None = None, **overrides: str
    ) -> None:
        """``public_url`` (default: the process's own URL) is the base of the DPoP ``htu``."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args],
            env={**os.environ, **env, "JOBGATE_PUBLIC_URL": public_url or self.url, **overrides},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # granian's workers are its children: stopped with it as one group
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

    def kill(self) -> None:
        """SIGKILL to the server and its workers (killing the server alone would orphan them)."""
        stop_process_group(self.process, graceful=False)

    def stop(self) -> None:
        stop_process_group(self.process)
        os.unlink(self.log.name)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


@pytest.fixture(scope="session")
def two_gateways(gateway_env: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes on the same PostgreSQL and Redis."""
    gateways = [GatewayProcess(gateway_env, free_port()) for _ in range(2)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.fixture
def tmp_data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jobgate-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

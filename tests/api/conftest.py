"""The API tests run on both backends: PostgreSQL (with Redis) and the embedded SQLite default.

Every test here that uses the gateway (``client``, ``runtime``, ``factory``, ``app``) runs twice,
``[postgresql]`` and ``[sqlite]``: once against the PostgreSQL test database and Redis of the
run, once against an in-process gateway on a fresh SQLite file with in-process stores (no
Redis), which is what ``jobgate serve`` runs with nothing configured. A test of something that
exists only on PostgreSQL says so with ``@pytest.mark.backends("postgresql")`` (and why).

Both gateways are session-wide; pytest runs every PostgreSQL test first, then every SQLite test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.conftest import make_app, serving

BACKENDS = ("postgresql", "sqlite")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run this API test only on these backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker else BACKENDS
    unknown = set(names) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {unknown}")
    metafunc.parametrize("backend", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def sqlite_env(gateway_env: dict[str, str], directory: Path) -> dict[str, str]:
    """The embedded default's settings: a SQLite file, no Redis; the test keys and secrets."""
    env = {k: v for k, v in gateway_env.items() if k not in ("JOBGATE_REDIS_URL", "JOBGATE_REDIS_PREFIX")}
    env["JOBGATE_DATABASE_URL"] = f"sqlite+aiosqlite:///{(directory / 'jobgate.db').as_posix()}"
    env["JOBGATE_DATA_DIR"] = str(directory)
    del env["JOBGATE_DATABASE_POOL_SIZE"]
    return env


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app(backend: str, gateway_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if backend == "postgresql":
        return make_app(gateway_env)
    return make_app(sqlite_env(gateway_env, tmp_path_factory.mktemp("api-sqlite")))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with serving(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def runtime(app) -> Any:  # type: ignore[no-untyped-def]
    return app.state.runtime

"""Fixtures of the fault drills: one PostgreSQL and one Redis per drill module, gateway and worker
processes on them, and an in-process runtime for setting up rows and reading the outcome."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from app.runtime import Runtime
from app.settings import load_settings
from tests.conftest import Factory, GatewayProcess, free_port
from tests.drills.services import DrillPostgres, DrillRedis
from tests.engine.conftest import FAST, WorkerProcess, log_path  # noqa: F401 - a fixture of the drills too
from tests.support.keys import TestKeys


@dataclass
class DrillServices:
    postgres: DrillPostgres
    redis: DrillRedis
    env: dict[str, str]


@pytest.fixture(scope="module")
def drill_services(keys: TestKeys) -> Iterator[DrillServices]:
    postgres, redis = DrillPostgres(), DrillRedis()
    try:
        postgres.init()
        postgres.start()
        redis.start()
        env = {
            "JOBGATE_DATABASE_URL": postgres.url,
            "JOBGATE_REDIS_URL": redis.url,
            "JOBGATE_REDIS_PREFIX": "jobgate-drill:",
            "JOBGATE_DATA_DIR": tempfile.mkdtemp(prefix="jobgate-drill-data-"),
            "JOBGATE_AUTH_JWKS_FILE": str(keys.jwks_path),
            "JOBGATE_AUTH_ISSUER": keys.issuer,
            "JOBGATE_AUTH_AUDIENCE": keys.audience,
            "JOBGATE_CURSOR_SECRET": "drill:" + "d" * 32,
            "JOBGATE_RATE_LIMIT": "100000/minute",
            # Two gateways, two workers and the test's own runtime within max_connections 50.
            "JOBGATE_DATABASE_POOL_SIZE": "6",
            "JOBGATE_WORKER_HANDLER_MODULES": FAST["JOBGATE_WORKER_HANDLER_MODULES"],
        }
        postgres.migrate(env)
        yield DrillServices(postgres, redis, env)
    finally:
        try:
            redis.destroy()
        finally:
            postgres.destroy()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def drill_runtime(drill_services: DrillServices) -> AsyncIterator[Runtime]:
    runtime = Runtime.create(load_settings(drill_services.env))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
def drill_factory(drill_runtime: Runtime, keys: TestKeys) -> Factory:
    return Factory(drill_runtime, keys)


@pytest.fixture(scope="module")
def drill_gateway(drill_services: DrillServices) -> Iterator[GatewayProcess]:
    """One gateway process for every drill of a module: the drills show it is never restarted."""
    gateway = GatewayProcess(drill_services.env, free_port())
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        print(gateway.output()[-4000:])  # shown when a drill fails
        gateway.stop()


@pytest.fixture
def start_gateways(drill_services: DrillServices) -> Iterator[Callable[..., list[GatewayProcess]]]:
    """``start_gateways(count=1, **env)``: that many ``jobgate serve`` processes on the drill
    services, started side by side, each ready."""
    started: list[GatewayProcess] = []

    def start(count: int = 1, **overrides: str) -> list[GatewayProcess]:
        gateways = [GatewayProcess({**drill_services.env, **overrides}, free_port()) for _ in range(count)]
        started.extend(gateways)
        for gateway in gateways:
            gateway.wait_ready()
        return gateways

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def start_worker(drill_services: DrillServices) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(tenant, **kwargs)``: a ``jobgate worker`` process on the drill services."""
    started: list[WorkerProcess] = []

    def start(tenant: str, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(drill_services.env, tenant, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()

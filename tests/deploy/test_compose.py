"""The compose file: PostgreSQL, Redis, migrate first, two gateways behind nginx, two workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY, compose_problems, load_compose, mutated

COMPOSE = load_compose()
NGINX = (DEPLOY / "nginx.conf").read_text()


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_compose_runs_the_documented_topology() -> None:
    assert compose_problems(COMPOSE, NGINX) == []


BROKEN = {
    "gateway only waits for migrate to start": (
        lambda c: services(c)["gateway"]["depends_on"]["migrate"].update(condition="service_started"),
        "gateway must wait for migrate with condition service_completed_successfully",
    ),
    "one worker": (
        lambda c: services(c)["worker"].update(deploy={"replicas": 1}),
        "compose must run two worker replicas (deploy.replicas: 2)",
    ),
    "worker from another image": (
        lambda c: services(c)["worker"].update(image="stella-jobgate:old"),
        "migrate, gateway and worker must use one image built one way",
    ),
    "postgres without health check": (
        lambda c: services(c)["postgres"].pop("healthcheck"),
        "postgres needs a health check",
    ),
    "unmarked password": (
        lambda c: services(c)["postgres"]["environment"].update(POSTGRES_PASSWORD="hunter2hunter2"),
        "postgres: POSTGRES_PASSWORD holds a secret literal not marked 'dev-only'",
    ),
    "unmarked password inside a URL": (
        lambda c: services(c)["worker"]["environment"].update(
            JOBGATE_DATABASE_URL="postgresql+asyncpg://jobgate:s3cret@postgres:5432/jobgate"
        ),
        "worker: JOBGATE_DATABASE_URL holds a secret literal not marked 'dev-only'",
    ),
    "gateway metrics without a multiprocess directory": (
        lambda c: services(c)["gateway"]["environment"].pop("PROMETHEUS_MULTIPROC_DIR"),
        "the gateway must set PROMETHEUS_MULTIPROC_DIR to a tmpfs of its own",
    ),
    "workers killed before their drain ends": (
        lambda c: services(c)["worker"].update(stop_grace_period="10s"),
        "worker's stop_grace_period 10 s is below the 25 s its shutdown may take",
    ),
    "migrate does not migrate": (
        lambda c: services(c)["migrate"].update(command=["jobgate seed --demo"]),
        "the migrate service must run `jobgate db upgrade`",
    ),
}


@pytest.mark.parametrize("edit,problem", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_compose_file_is_reported(edit: Callable[[dict], None], problem: str) -> None:
    assert any(p.startswith(problem) for p in compose_problems(mutated(COMPOSE, edit), NGINX))


def test_a_proxy_upstream_on_another_port_is_reported() -> None:
    problems = compose_problems(COMPOSE, NGINX.replace("server gateway:8080", "server gateway:8000"))
    assert problems == [
        "nginx's upstream must be the gateway service on port 8080, found [('gateway', '8000')]"
    ]

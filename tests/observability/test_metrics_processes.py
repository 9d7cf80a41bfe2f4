"""/metrics under the production server with two processes: every process's requests are counted
once, labels are route templates, and neither ids nor tenants appear."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.observability.support import Served, samples, wait_until

SOURCE_ROUTE = "/jobengine/sources/{sourceId}"


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multiproc")


@pytest.fixture(scope="module")
def two_processes(gateway_env: dict[str, str], metrics_dir: Path) -> Iterator[Served]:
    served = Served(gateway_env, "--workers", "2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        served.wait_ready()
        yield served
    finally:
        served.close()


def _scrape(served: Served) -> str:
    response = httpx.get(f"{served.url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    return response.text


def _counted(exposition: str, route: str) -> float:
    found = samples(exposition, "jobgate_requests_total")
    return sum(value for labels, value in found.items() if ("route", route) in labels and ("method", "GET") in labels)


def _request_pids(metrics_dir: Path) -> set[str]:
    """The processes that have counted a request (prometheus_client writes one file per process)."""
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}


async def test_request_counter_sums_the_requests_both_processes_served(two_processes, metrics_dir, factory):
    tenant = await factory.tenant()
    source_id = f"missing-{uuid.uuid4().hex}"
    headers = {**factory.headers(tenant, scope="orch:read"), "Connection": "close"}
    before = _counted(_scrape(two_processes), SOURCE_ROUTE)
    sent = 0
    # A new connection per request: the kernel hands each to either process; go on until both
    # have counted requests (bounded: a server that never uses its second process fails here).
    while sent < 20 or len(_request_pids(metrics_dir)) < 2:
        assert sent < 400, f"one process served everything: {_request_pids(metrics_dir)}"
        response = httpx.get(f"{two_processes.url}/jobengine/sources/{source_id}", headers=headers, timeout=10)
        assert response.status_code == 404
        sent += 1
    scrapes = [_scrape(two_processes) for _ in range(6)]  # each scrape is answered by either process
    assert [_counted(text, SOURCE_ROUTE) - before for text in scrapes] == [sent] * 6
    for text in scrapes:
        assert source_id not in text and tenant not in text
        assert "/jobengine/sources/missing" not in text


async def test_unmatched_paths_share_one_label(two_processes):
    paths = [f"/no/such/{uuid.uuid4().hex}" for _ in range(3)]
    before = _counted(_scrape(two_processes), "unmatched")
    for path in paths:
        assert httpx.get(two_processes.url + path, headers={"Connection": "close"}).status_code == 404
    text = _scrape(two_processes)
    assert _counted(text, "unmatched") - before == 3
    assert not any(path in text for path in paths)


async def test_pool_size_adds_up_the_pools_of_both_processes(two_processes, gateway_env):
    per_process = int(gateway_env["JOBGATE_DATABASE_POOL_SIZE"])
    sizes = [samples(_scrape(two_processes), "jobgate_db_pool_size") for _ in range(4)]
    assert [sum(found.values()) for found in sizes] == [2 * per_process] * 4
    in_use = samples(_scrape(two_processes), "jobgate_db_pool_checked_out")
    assert 0 <= sum(in_use.values()) <= 2 * per_process


async def test_every_line_the_server_writes_is_a_json_object(two_processes):
    wait_until(lambda: "jobgate.access" in two_processes.output())
    lines = [line for line in two_processes.output().splitlines() if line.strip()]
    assert lines and [line for line in lines if not line.startswith("{")] == []
    loggers = {record["logger"] for record in two_processes.json_lines()}
    assert {"_granian", "jobgate.access"} <= loggers

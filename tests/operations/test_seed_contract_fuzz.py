"""Schemathesis fuzzes a live gateway with the lifecycle reference contracts themselves
(``contracts/reference/``, not the generated contract), so a drift of the lifecycle routes from
them is found from this side too.

The seeds write OpenAPI 3.0's ``nullable: true`` inside 3.1 documents; the copies fuzzed here
spell it as JSON Schema's ``null`` type (``support._nullable_to_31``), nothing else changes.
Positive data only: the seeds document no 400, and they are the reference for valid requests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.storage.models import OperationRun
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.operations.support import seed_documents, tenant_of

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = int(os.environ.get("JOBGATE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def live_gateway(gateway_env):  # type: ignore[no-untyped-def]
    env = {**os.environ, **gateway_env}
    subprocess.run(
        [sys.executable, "-m", "app.cli", "seed", "--demo", "--reset"],  # the demo tenants, whatever else the database holds
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    gateway = GatewayProcess(gateway_env, free_port())
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


async def _demo_values(runtime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Path values that reach data: acme's id and its most recent active demo run."""
    acme = await tenant_of(runtime, "acme")
    async with runtime.sessions() as session:
        run_id = (
            await session.execute(
                select(OperationRun.id)
                .where(OperationRun.tenant_id == acme.id, OperationRun.status == "running")
                .order_by(OperationRun.id.desc())
                .limit(1)
            )
        ).scalar_one()
    return {"path.tenant": acme.id, "path.run": run_id, "path.operationRun": run_id}


@pytest.mark.parametrize("index", [0, 1], ids=["lifecycle", "active-state"])
async def test_fuzzing_with_the_seed_contract_finds_nothing(
    live_gateway, keys, runtime, tmp_path, index: int
) -> None:  # type: ignore[no-untyped-def]
    contract = tmp_path / f"seed-{index}.json"
    contract.write_text(json.dumps(seed_documents()[index]))
    config = tmp_path / "schemathesis.toml"
    # path ids of demo data, so the calls reach runs (generated ids are almost always 404)
    values = await _demo_values(runtime)
    config.write_text("[parameters]\n" + "".join(f'"{k}" = {v}\n' for k, v in values.items()))
    token = keys.token(
        tenant=["acme", "globex"], scope="orch:read", sub="fuzzer", exp=int(time.time()) + 3600
    )
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        str(contract),
        "--url",
        live_gateway.url,
        "-H",
        f"Authorization: Bearer {token}",
        "-H",
        "X-Stella-Tenant: acme",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "positive",
        "--seed",
        "20261123",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    operations = sum(len(methods) for methods in seed_documents()[index]["paths"].values())
    assert f"Tested: {operations}" in output and "passed" in output, output[-3000:]
    assert "Missing test data" not in output, output[-3000:]

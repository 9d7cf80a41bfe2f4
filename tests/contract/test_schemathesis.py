"""Schemathesis fuzzes a live gateway (PostgreSQL + Redis) through its published contract, with
every check and every phase, a fixed seed and bounded examples: it must find nothing."""

from __future__ import annotations

import os
import time
import subprocess
import sys
from pathlib import Path

from tests.conftest import ALL_SCOPES, ROOT, GatewayProcess, free_port

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = int(os.environ.get("JOBGATE_FUZZ_EXAMPLES", "25"))


def test_fuzzing_the_published_contract_finds_nothing(gateway_env, keys, tmp_path):
    env = {**os.environ, **gateway_env}
    subprocess.run([sys.executable, "-m", "app.cli", "seed", "--demo", "--reset"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    gateway = GatewayProcess(gateway_env, free_port())
    try:
        gateway.wait_ready()
        token = keys.token(tenant="acme", scope=ALL_SCOPES, sub="fuzzer", exp=int(time.time()) + 3600)
        command = [
            str(SCHEMATHESIS),
            "--config-file", str(CONFIG),
            "run", f"{gateway.url}/schema/openapi.json",
            "--url", gateway.url,
            "-H", f"Authorization: Bearer {token}",
            "-H", "X-Stella-Tenant: acme",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", "20261123",
            "--max-examples", str(MAX_EXAMPLES),
            "--generation-database", "none",
            "--request-timeout", "10",
        ]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        gateway.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "No issues found" in output or "passed" in output.lower(), output[-3000:]

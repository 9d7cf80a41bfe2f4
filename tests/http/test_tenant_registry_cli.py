"""``jobgate tenants add`` registers a tenant in an existing workspace; it creates the workspace
only when asked (``--create-workspace``), so a mistyped workspace key is refused, not created."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.conftest import ROOT


def _jobgate(gateway_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **gateway_env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tenants_add_does_not_create_a_workspace_unasked(gateway_env):
    suffix = uuid.uuid4().hex[:10]
    workspace, key = f"ws-new-{suffix}", f"t-new-{suffix}"
    refused = _jobgate(gateway_env, "tenants", "add", key, "--workspace", workspace)
    assert refused.returncode == 2 and "--create-workspace" in refused.stderr, refused
    assert key not in _jobgate(gateway_env, "tenants", "list").stdout
    created = _jobgate(gateway_env, "tenants", "add", key, "--workspace", workspace, "--create-workspace")
    assert created.returncode == 0, created.stderr
    other = f"t-other-{suffix}"
    joined = _jobgate(gateway_env, "tenants", "add", other, "--workspace", workspace)
    assert joined.returncode == 0, joined.stderr
    listed = _jobgate(gateway_env, "tenants", "list").stdout
    assert f"{key}\t{workspace}" in listed and f"{other}\t{workspace}" in listed

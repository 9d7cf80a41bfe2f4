"""Every setting the code reads has a deploy entry, and the deploy values pass the settings checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.config import load_worker_config
from app.settings import load_settings
from tests.deploy.manifests import (
    compose_env,
    find,
    load_compose,
    load_k8s,
    mutated,
    settings_coverage_problems,
    settings_env,
    settings_in_code,
)

FILES = load_k8s()
COMPOSE = load_compose()
CODE = settings_in_code()


def test_every_setting_the_code_reads_is_in_the_configmap_or_the_secret() -> None:
    assert settings_coverage_problems(FILES, COMPOSE, CODE) == []


def test_settings_are_found_where_written_out_and_where_a_helper_builds_the_name(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text(
        'get = lambda name, default=None: env.get(f"JOBGATE_{name}") or default\n'
        'mode = get("ENV", "dev")\n'
        'raise SettingsError("JOBGATE_PUBLIC_URL must be absolute")\n'
    )
    (tmp_path / "config.py").write_text(
        "def _number(environ, name, default):\n"
        '    return environ.get(f"JOBGATE_WORKER_{name}")\n'
        'lease = _number(env, "LEASE_SECONDS", 30.0)\n'
    )
    assert settings_in_code(tmp_path) == {"JOBGATE_ENV", "JOBGATE_PUBLIC_URL", "JOBGATE_WORKER_LEASE_SECONDS"}


def test_the_real_settings_include_the_worker_names_built_by_a_helper() -> None:
    # Written out nowhere: only `_number(env, "POLL_SECONDS", ...)` in app/engine/config.py names it.
    assert {"JOBGATE_WORKER_POLL_SECONDS", "JOBGATE_WORKER_BATCH", "JOBGATE_DATABASE_POOL_SIZE"} <= CODE


def test_a_new_setting_without_a_deploy_entry_is_reported() -> None:
    problems = settings_coverage_problems(FILES, COMPOSE, CODE | {"JOBGATE_NEW_KNOB"})
    assert problems == ["JOBGATE_NEW_KNOB is read by app/ but set by neither the ConfigMap nor the Secret"]


def test_a_deploy_entry_the_code_does_not_read_is_reported() -> None:
    files = mutated(
        FILES, lambda f: find(f, "ConfigMap", "jobgate-config")["data"].update(JOBGATE_RATE_LIMT="1/second")
    )
    assert settings_coverage_problems(files, COMPOSE, CODE) == [
        "JOBGATE_RATE_LIMT is in the ConfigMap or Secret but app/ never reads it"
    ]


def test_a_credential_in_the_configmap_is_reported() -> None:
    def leak(files: dict) -> None:
        secret = find(files, "Secret", "jobgate-secrets")["stringData"]
        find(files, "ConfigMap", "jobgate-config")["data"]["JOBGATE_CURSOR_SECRET"] = secret.pop(
            "JOBGATE_CURSOR_SECRET"
        )

    assert settings_coverage_problems(mutated(FILES, leak), COMPOSE, CODE) == [
        "JOBGATE_CURSOR_SECRET holds a credential and belongs in the Secret"
    ]


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": []}))
    return path


@pytest.mark.parametrize("container", ["gateway", "worker", "migrate"])
def test_kubernetes_settings_pass_the_prod_checks(container: str, jwks_file: Path) -> None:
    env = settings_env(FILES, container)
    env["JOBGATE_AUTH_JWKS_FILE"] = str(jwks_file)  # the mounted file (pod_problems checks the mount)
    settings = load_settings(env)
    assert settings.env == "prod"
    assert not settings.uses_dev_keys and not settings.uses_dev_cursor_secret
    assert settings.database_url.startswith("postgresql+asyncpg://") and settings.redis_url
    load_worker_config(env)


@pytest.mark.parametrize("service", ["migrate", "gateway", "worker"])
def test_compose_settings_pass_the_settings_checks(service: str) -> None:
    env = compose_env(COMPOSE, service)
    settings = load_settings(env)
    assert settings.database_url.startswith("postgresql+asyncpg://") and settings.redis_url
    assert not settings.uses_dev_cursor_secret  # one cursor key for both gateways, not one per container
    load_worker_config(env)

"""The Host a request names: trusted only when the operator listed it (``JOBGATE_ALLOWED_HOSTS``) or
not used at all (``JOBGATE_PUBLIC_URL``); production refuses to start with neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings
from tests.conftest import make_app, serving

SOURCES = "/jobengine/sources"


@pytest.fixture
def host_app(gateway_env):  # type: ignore[no-untyped-def]
    return make_app(gateway_env, JOBGATE_PUBLIC_URL=None, JOBGATE_ALLOWED_HOSTS="gateway.test, *.jobs.example")


async def test_a_request_for_a_host_not_allowed_is_a_400_problem(host_app, factory):
    tenant = await factory.tenant()
    async with serving(host_app) as client:
        for host in ("evil.example", "gateway.test.evil.example", "jobs.example"):
            response = await client.get(SOURCES, headers={**factory.headers(tenant), "Host": host})
            assert response.status_code == 400, host
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "host_not_allowed"
        anonymous = await client.get(SOURCES, headers={"Host": "evil.example"})
        assert anonymous.json()["code"] == "host_not_allowed"  # before authentication


async def test_allowed_hosts_are_served_with_any_port_and_links_on_them(host_app, factory):
    tenant = await factory.tenant()
    async with serving(host_app) as client:
        for host in ("gateway.test", "gateway.test:8443", "a.jobs.example"):
            assert (await client.get(SOURCES, headers={**factory.headers(tenant), "Host": host})).status_code == 200
        created = await client.post(
            SOURCES, json={"name": "n", "sourceType": "scanner"}, headers={**factory.headers(tenant), "Host": "a.jobs.example"}
        )
        assert created.status_code == 201
        assert created.headers["location"].startswith("http://a.jobs.example/jobengine/sources/")


async def test_probes_are_served_for_any_host(host_app):
    async with serving(host_app) as client:
        assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status_code == 200


def test_production_needs_a_public_url_or_allowed_hosts(tmp_path: Path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    prod = {
        "JOBGATE_ENV": "prod",
        "JOBGATE_DATA_DIR": str(tmp_path),
        "JOBGATE_DATABASE_URL": "postgresql+asyncpg://db.internal/jobgate",
        "JOBGATE_AUTH_JWKS_FILE": str(jwks),
        "JOBGATE_AUTH_ISSUER": "https://idp.example",
        "JOBGATE_AUTH_AUDIENCE": "jobengine",
        "JOBGATE_CURSOR_SECRET": "k1:" + "n" * 32,
    }
    with pytest.raises(SettingsError, match="JOBGATE_PUBLIC_URL or JOBGATE_ALLOWED_HOSTS"):
        load_settings(prod)
    assert load_settings({**prod, "JOBGATE_ALLOWED_HOSTS": "jobs.example"}).allowed_hosts == ("jobs.example",)
    assert load_settings({**prod, "JOBGATE_PUBLIC_URL": "https://jobs.example"}).allowed_hosts == ()
    with pytest.raises(SettingsError, match="JOBGATE_ALLOWED_HOSTS"):
        load_settings({**prod, "JOBGATE_ALLOWED_HOSTS": "jobs.example:8443"})

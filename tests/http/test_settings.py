"""Settings: every invalid JOBGATE_* variable is refused with a message naming it; prod refuses dev values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import DEV_AUDIENCE, DEV_ISSUER, RateLimit, SettingsError, load_settings
from tests.conftest import ROOT

PG = "postgresql+asyncpg://gateway@db.internal:5432/jobgate"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    return path


@pytest.fixture
def prod(data_dir: Path, jwks: Path) -> dict[str, str]:
    """A complete, valid production configuration."""
    return {
        "JOBGATE_ENV": "prod",
        "JOBGATE_DATA_DIR": str(data_dir),
        "JOBGATE_DATABASE_URL": PG,
        "JOBGATE_REDIS_URL": "redis://cache.internal:6379/0",
        "JOBGATE_AUTH_JWKS_FILE": str(jwks),
        "JOBGATE_AUTH_ISSUER": "https://idp.example",
        "JOBGATE_AUTH_AUDIENCE": "jobengine",
        "JOBGATE_CURSOR_SECRET": "k2:" + "n" * 32 + ",k1:" + "o" * 32,
        "JOBGATE_PUBLIC_URL": "https://jobs.example/gateway/",
        "JOBGATE_CORS_ORIGINS": "https://console.example, https://ops.example:8443",
    }


def refused(environ: dict[str, str], variable: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert variable in message, message
    assert "\n" not in message
    return message


def test_defaults_are_the_embedded_development_setup(data_dir):
    settings = load_settings({"JOBGATE_DATA_DIR": str(data_dir)})
    assert settings.env == "dev"
    assert settings.is_sqlite and settings.database_url.endswith("jobgate.db")
    assert settings.redis_url is None
    assert settings.uses_dev_keys and settings.uses_dev_cursor_secret
    assert (settings.issuer, settings.audience) == (DEV_ISSUER, DEV_AUDIENCE)
    assert settings.algorithms == ("ES256", "RS256", "EdDSA")
    assert settings.dpop == "optional"
    assert settings.rate_limit == RateLimit(600, 60)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.cors_origins == ()
    assert [kid for kid, _ in settings.cursor_secrets] == ["dev"]
    assert settings.embedded_worker is False


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("TRUE", True), ("false", False)])
def test_embedded_worker_setting_is_read(data_dir, value, expected):
    settings = load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_EMBEDDED_WORKER": value})
    assert settings.embedded_worker is expected


def test_dev_cursor_secret_is_created_once_and_kept(data_dir):
    first = load_settings({"JOBGATE_DATA_DIR": str(data_dir)}).cursor_secrets
    second = load_settings({"JOBGATE_DATA_DIR": str(data_dir)}).cursor_secrets
    assert first == second and len(first[0][1]) >= 32
    assert (data_dir / "dev-cursor-secret").stat().st_mode & 0o077 == 0


def test_valid_production_settings_load(prod):
    settings = load_settings(prod)
    assert settings.env == "prod"
    assert not settings.uses_dev_keys and not settings.uses_dev_cursor_secret
    assert settings.cursor_secrets == (("k2", b"n" * 32), ("k1", b"o" * 32))
    assert settings.public_url == "https://jobs.example/gateway"
    assert settings.cors_origins == ("https://console.example", "https://ops.example:8443")
    assert not Path(prod["JOBGATE_DATA_DIR"]).exists()  # prod writes no development files


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JOBGATE_ENV", "staging"),
        ("JOBGATE_DATABASE_URL", "mysql://db/jobgate"),
        ("JOBGATE_DATABASE_URL", "postgresql://postgres@db/jobgate"),
        ("JOBGATE_DATABASE_URL", "sqlite:///x.db"),
        ("JOBGATE_REDIS_URL", "http://cache:6379"),
        ("JOBGATE_REDIS_URL", "localhost:6379"),
        ("JOBGATE_AUTH_JWKS_URL", "ftp://idp.example/jwks"),
        ("JOBGATE_AUTH_JWKS_URL", "https://"),
        ("JOBGATE_AUTH_JWKS_FILE", "/nonexistent/jwks.json"),
        ("JOBGATE_AUTH_ALGORITHMS", "XS256"),
        ("JOBGATE_AUTH_ALGORITHMS", "none"),
        ("JOBGATE_AUTH_ALGORITHMS", "ES256,HS256"),
        ("JOBGATE_AUTH_ALGORITHMS", "HS256, RS256"),
        ("JOBGATE_AUTH_ALGORITHMS", " , "),
        ("JOBGATE_AUTH_DPOP", "maybe"),
        ("JOBGATE_AUTH_DPOP", "Required"),
        ("JOBGATE_RATE_LIMIT", "lots"),
        ("JOBGATE_RATE_LIMIT", "0/minute"),
        ("JOBGATE_RATE_LIMIT", "-5/minute"),
        ("JOBGATE_RATE_LIMIT", "10/day"),
        ("JOBGATE_RATE_LIMIT", "600"),
        ("JOBGATE_CURSOR_SECRET", "short"),
        ("JOBGATE_CURSOR_SECRET", "k1:short"),
        ("JOBGATE_CURSOR_SECRET", "bad kid!:" + "s" * 32),
        ("JOBGATE_CURSOR_SECRET", ","),
        ("JOBGATE_CURSOR_SECRET", "a:" + "s" * 32 + ",a:" + "t" * 32),
        ("JOBGATE_CORS_ORIGINS", "console.example"),
        ("JOBGATE_CORS_ORIGINS", "https://console.example/"),
        ("JOBGATE_CORS_ORIGINS", "https://console.example/path"),
        ("JOBGATE_PUBLIC_URL", "gateway.example"),
        ("JOBGATE_PUBLIC_URL", "ftp://gateway.example"),
        ("JOBGATE_PUBLIC_URL", "https://gateway.example/?x=1"),
        ("JOBGATE_PUBLIC_URL", "https://gateway.example/#top"),
        ("JOBGATE_PUBLIC_URL", "https://user:pw@gateway.example"),
        ("JOBGATE_PUBLIC_URL", "https://gate way.example"),
        ("JOBGATE_PUBLIC_URL", "https://"),
        ("JOBGATE_MAX_BODY_BYTES", "lots"),
        ("JOBGATE_MAX_BODY_BYTES", "100"),
        ("JOBGATE_REDIS_PREFIX", "has space"),
        ("JOBGATE_EMBEDDED_WORKER", "yes please"),
        ("JOBGATE_AUTH_JWKS_REFRESH_SECONDS", "29"),
        ("JOBGATE_AUTH_JWKS_REFRESH_SECONDS", "86401"),
        ("JOBGATE_AUTH_JWKS_REFRESH_SECONDS", "5m"),
        ("JOBGATE_AUTH_JWKS_MAX_STALE_SECONDS", "59"),
        ("JOBGATE_AUTH_JWKS_MAX_STALE_SECONDS", "2592001"),
        ("JOBGATE_AUTH_JWKS_MAX_STALE_SECONDS", "1.5"),
    ],
)
def test_invalid_variable_is_refused_naming_it(data_dir, variable, value):
    refused({"JOBGATE_DATA_DIR": str(data_dir), variable: value}, variable)


def test_key_refresh_settings_are_read_within_their_bounds(data_dir):
    default = load_settings({"JOBGATE_DATA_DIR": str(data_dir)})
    assert (default.jwks_refresh_seconds, default.jwks_max_stale_seconds) == (300, 86400)
    low = load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_AUTH_JWKS_REFRESH_SECONDS": "30",
                         "JOBGATE_AUTH_JWKS_MAX_STALE_SECONDS": "60"})
    assert (low.jwks_refresh_seconds, low.jwks_max_stale_seconds) == (30, 60)


def test_jwks_file_and_url_together_are_refused(data_dir, jwks):
    environ = {
        "JOBGATE_DATA_DIR": str(data_dir),
        "JOBGATE_AUTH_JWKS_FILE": str(jwks),
        "JOBGATE_AUTH_JWKS_URL": "https://idp.example/jwks",
    }
    message = refused(environ, "JOBGATE_AUTH_JWKS_FILE")
    assert "JOBGATE_AUTH_JWKS_URL" in message


@pytest.mark.parametrize("algorithms", ["HS256", "HS256,HS512", "ES256,RS256,EdDSA", "PS256"])
def test_one_family_of_algorithms_is_accepted(data_dir, algorithms):
    settings = load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_AUTH_ALGORITHMS": algorithms})
    assert settings.algorithms == tuple(algorithms.split(","))


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("600/minute", RateLimit(600, 60)),
        ("5 / second", RateLimit(5, 1)),
        ("100000/hour", RateLimit(100000, 3600)),
    ],
)
def test_rate_limit_is_parsed(data_dir, value, limit):
    assert load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_RATE_LIMIT": value}).rate_limit == limit


def test_bare_cursor_secret_and_rotation_list_are_accepted(data_dir):
    bare = load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_CURSOR_SECRET": "s" * 16})
    assert bare.cursor_secrets == (("k0", b"s" * 16),) and not bare.uses_dev_cursor_secret
    rotated = load_settings(
        {"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_CURSOR_SECRET": f"new:{'n' * 20}, old:{'o' * 20}"}
    )
    assert rotated.cursor_secrets == (("new", b"n" * 20), ("old", b"o" * 20))
    assert not data_dir.exists()


def test_cors_star_is_allowed_in_dev_only(prod, data_dir):
    assert load_settings({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_CORS_ORIGINS": "*"}).cors_origins == (
        "*",
    )
    refused({**prod, "JOBGATE_CORS_ORIGINS": "*"}, "JOBGATE_CORS_ORIGINS")
    refused({**prod, "JOBGATE_CORS_ORIGINS": "https://console.example,*"}, "JOBGATE_CORS_ORIGINS")


@pytest.mark.parametrize(
    ("unset", "variable"),
    [
        (("JOBGATE_AUTH_JWKS_FILE",), "JOBGATE_AUTH_JWKS_FILE"),
        (("JOBGATE_CURSOR_SECRET",), "JOBGATE_CURSOR_SECRET"),
        (("JOBGATE_AUTH_ISSUER",), "JOBGATE_AUTH_ISSUER"),
        (("JOBGATE_AUTH_AUDIENCE",), "JOBGATE_AUTH_AUDIENCE"),
        (("JOBGATE_DATABASE_URL",), "JOBGATE_DATABASE_URL"),
        (("JOBGATE_AUTH_JWKS_FILE", "JOBGATE_CURSOR_SECRET"), "JOBGATE_AUTH_JWKS_FILE"),
    ],
    ids=["dev-keys", "dev-cursor-secret", "dev-issuer", "dev-audience", "sqlite", "dev-keys-and-secret"],
)
def test_prod_refuses_dev_values_and_writes_nothing(prod, unset, variable):
    environ = {k: v for k, v in prod.items() if k not in unset}
    refused(environ, variable)
    assert not Path(prod["JOBGATE_DATA_DIR"]).exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JOBGATE_AUTH_ISSUER", DEV_ISSUER),
        ("JOBGATE_AUTH_AUDIENCE", DEV_AUDIENCE),
        ("JOBGATE_DATABASE_URL", "sqlite+aiosqlite:///prod.db"),
    ],
)
def test_prod_refuses_dev_values_given_explicitly(prod, variable, value):
    refused({**prod, variable: value}, variable)


def test_invalid_settings_write_nothing_even_in_dev(data_dir):
    refused({"JOBGATE_DATA_DIR": str(data_dir), "JOBGATE_RATE_LIMIT": "lots"}, "JOBGATE_RATE_LIMIT")
    assert not data_dir.exists()


def _cli(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        check=False,
        env={**base, **environ},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (["db", "upgrade"], "JOBGATE_RATE_LIMIT", "lots"),
        (["serve", "--port", "1"], "JOBGATE_AUTH_DPOP", "maybe"),
        (["tenants", "list"], "JOBGATE_DATABASE_URL", "mysql://db/x"),
    ],
    ids=["db-upgrade", "serve", "tenants-list"],
)
def test_command_prints_one_line_naming_the_variable_and_exits_non_zero(data_dir, args, variable, value):
    result = _cli(args, {"JOBGATE_DATA_DIR": str(data_dir), variable: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not data_dir.exists()


def test_invalid_lifecycle_thresholds_stop_start_up_naming_the_variable(tmp_path):
    from app.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="JOBGATE_LIFECYCLE_THRESHOLDS"):
        load_settings({"JOBGATE_DATA_DIR": str(tmp_path), "JOBGATE_LIFECYCLE_THRESHOLDS": "[1, 2]"})

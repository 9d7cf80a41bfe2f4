"""Structured logs: one JSON object per record, one access line per request with who, what and
how long, and never a token or secret; the format and level are settings validated at start-up."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.logs import make_handler
from app.security.sanitize import SanitizingFilter
from app.settings import SettingsError, load_settings

SECRET_HEADER = "password=hunter2-very-secret"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What the app's JSON handler writes while the test runs."""
    stream = io.StringIO()
    handler = make_handler("json")
    handler.setStream(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_request_writes_one_access_line_with_who_what_and_how_long(client, factory, written):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant)
    headers = {**factory.headers(tenant, subject="ops-alice"), "X-Api-Key": SECRET_HEADER, "X-Stella-Trace-Id": "trace-logs-1"}
    written.seek(0)
    written.truncate()
    response = await client.get(f"/jobengine/sources/{source['sourceId']}", headers=headers)
    assert response.status_code == 200
    (line,) = [r for r in _lines(written) if r["logger"] == "jobgate.access"]
    assert line["level"] == "INFO" and line["time"].endswith("Z")
    assert {k: line[k] for k in ("traceId", "tenant", "subject", "method", "route", "status")} == {
        "traceId": "trace-logs-1",
        "tenant": tenant,
        "subject": "ops-alice",
        "method": "GET",
        "route": "/jobengine/sources/{sourceId}",
        "status": 200,
    }
    assert isinstance(line["durationMs"], float) and line["durationMs"] >= 0
    text = written.getvalue()
    token = headers["Authorization"].split()[1]
    assert token not in text and token.rsplit(".", 1)[1] not in text and "hunter2" not in text
    assert source["sourceId"] not in text  # the route template is logged, never the raw path


async def test_refused_request_is_logged_without_its_token(client, factory, keys, written):
    tenant = await factory.tenant()
    token = keys.token(key=keys.outsider, tenant=tenant, scope="orch:read")
    response = await client.get(
        "/jobengine/sources", headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}
    )
    assert response.status_code == 401
    (line,) = [r for r in _lines(written) if r["logger"] == "jobgate.access"]
    assert (line["status"], line["tenant"], line["subject"]) == (401, None, None)
    assert line["traceId"] == response.headers["X-Stella-Trace-Id"]
    assert token not in written.getvalue() and token.rsplit(".", 1)[1] not in written.getvalue()


def test_every_record_is_one_json_object_with_secrets_masked_in_message_and_fields(written):
    log = logging.getLogger("jobgate.test")
    log.warning("connecting to %s", "postgresql://gateway:s3cr3t-pw@db/jobgate", extra={"dsn": "redis://u:s3cr3t-pw@r/0"})
    try:
        raise RuntimeError("token=abcdef0123456789 refused")
    except RuntimeError:
        log.exception("failed\nover two lines")
    lines = written.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "connecting to postgresql://gateway:***@db/jobgate"
    assert first["dsn"] == "redis://u:***@r/0" and first["level"] == "WARNING"
    assert second["message"].startswith("failed\nover two lines [RuntimeError: token=***")
    assert "s3cr3t" not in written.getvalue() and "abcdef0123456789" not in written.getvalue()


def test_every_handler_made_for_the_app_sanitises():
    for log_format in ("json", "text"):
        assert any(isinstance(f, SanitizingFilter) for f in make_handler(log_format).filters)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JOBGATE_LOG_FORMAT", "xml"),
        ("JOBGATE_LOG_LEVEL", "verbose"),
        ("JOBGATE_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("JOBGATE_SHUTDOWN_GRACE_SECONDS", "0"),
    ],
)
def test_invalid_log_and_shutdown_settings_are_refused_naming_the_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError) as caught:
        load_settings({"JOBGATE_DATA_DIR": str(tmp_path), variable: value})
    assert variable in str(caught.value) and "\n" not in str(caught.value)


def test_log_and_shutdown_settings_have_production_defaults(tmp_path):
    settings = load_settings({"JOBGATE_DATA_DIR": str(tmp_path)})
    assert (settings.log_format, settings.log_level, settings.shutdown_grace_seconds) == ("json", "INFO", 30.0)
    chosen = load_settings({"JOBGATE_DATA_DIR": str(tmp_path), "JOBGATE_LOG_FORMAT": "text",
                            "JOBGATE_LOG_LEVEL": "debug", "JOBGATE_SHUTDOWN_GRACE_SECONDS": "5"})
    assert (chosen.log_format, chosen.log_level, chosen.shutdown_grace_seconds) == ("text", "DEBUG", 5.0)

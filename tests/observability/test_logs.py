"""Structured logs: one JSON object per record, one access line per request with who, what and
how long, and never a token or secret; the format and level are settings validated at start-up."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.logs import make_handler, timestamp, write_line
from app.sanitize import SanitizingFilter
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


@pytest.fixture
def lone_logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("jobgate.test.lines")
    log.propagate = False
    log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the level cache a test filled
    try:
        yield log
    finally:
        log.handlers.clear()
        log.propagate, log.level = True, logging.NOTSET


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_line_written_directly_is_the_line_of_the_same_record(lone_logger, log_format):
    """``write_line`` (the access log's way) writes what ``logger.info(..., extra=...)`` writes,
    masked the same, in either format; only the instant may differ."""
    fields = {"traceId": "trace-1", "subject": "token=abcdef0123456789", "status": 200, "durationMs": 1.5}
    written = []
    for direct in (True, False):
        stream = io.StringIO()
        handler = make_handler(log_format)
        handler.setStream(stream)
        lone_logger.handlers[:] = [handler]
        if direct:
            write_line(lone_logger, "GET /x 200 password=hunter2", fields)
        else:
            lone_logger.info("GET /x 200 password=hunter2", extra=fields)
        (line,) = stream.getvalue().splitlines()
        written.append(line)
    if log_format == "json":
        direct_line, logged_line = (json.loads(line) for line in written)
        assert direct_line.pop("time").endswith("Z") and logged_line.pop("time").endswith("Z")
        assert direct_line == logged_line
        assert direct_line["subject"] == "token=***" and direct_line["message"] == "GET /x 200 password=***"
    else:
        direct_text, logged_text = (line.split(" ", 2) for line in written)
        assert direct_text[2] == logged_text[2] and "hunter2" not in direct_text[2] and "abcdef0123" not in direct_text[2]
        assert len(direct_text[1]) == len(logged_text[1]) == len("12:00:00,000")


def test_a_handler_of_another_kind_still_receives_the_record(lone_logger):
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    ours = io.StringIO()
    handler = make_handler("json")
    handler.setStream(ours)
    lone_logger.handlers[:] = [handler, Capture()]
    write_line(lone_logger, "GET /x 200", {"status": 200})
    assert [(r.getMessage(), r.status) for r in seen] == [("GET /x 200", 200)]  # type: ignore[attr-defined]
    assert json.loads(ours.getvalue())["status"] == 200  # written once, by the record
    lone_logger.setLevel(logging.WARNING)
    write_line(lone_logger, "GET /x 200", {"status": 200})
    assert len(seen) == 1 and len(ours.getvalue().splitlines()) == 1


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4 * 10**9).map(lambda s: s + 0.9995))
def test_property_a_line_s_time_is_the_instant_as_datetime_writes_it(created: float) -> None:
    """Each second's text is formatted once; the milliseconds are those of ``datetime``'s rounding."""
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert timestamp(created) == expected
    assert timestamp(created) == expected  # from the second's text kept


async def test_lines_written_in_one_loop_iteration_are_written_together_in_order(lone_logger):
    """Inside an event loop the access lines of one iteration become one write at the next; a record
    through the logging module writes them first, so no line changes place."""
    writes: list[str] = []

    class Counted(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    stream = Counted()
    handler = make_handler("json")
    handler.setStream(stream)
    lone_logger.handlers[:] = [handler]
    write_line(lone_logger, "GET /a 200", {"n": 1})
    write_line(lone_logger, "GET /b 200 token=abcdef0123456789", {"n": 2})
    assert stream.getvalue() == ""  # not yet: at the loop's next iteration
    await asyncio.sleep(0)
    assert len(writes) == 1
    write_line(lone_logger, "GET /c 200", {"n": 3})
    lone_logger.info("a record", extra={"n": 4})
    write_line(lone_logger, "GET /d 200", {"n": 5})
    handler.flush()  # as at exit
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[1]["message"] == "GET /b 200 token=***"

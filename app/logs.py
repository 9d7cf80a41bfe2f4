"""Logging: one line per record, JSON by default, secrets masked before anything is written.

``JOBGATE_LOG_FORMAT=json`` (the default) writes each record as one JSON object: ``time``,
``level``, ``logger``, ``message`` and the record's fields given with ``extra=`` (the access log's
``traceId``, ``tenant``, ``subject``, ``route``, ``method``, ``status``, ``durationMs``). ``text``
writes the same as one plain line. Either way the handler carries the :class:`SanitizingFilter`,
and the formatter masks the extra fields too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.sanitize import SanitizingFilter, needs_masking, sanitize

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, string values masked."""
    fields: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        fields[key] = sanitize(value) if isinstance(value, str) else value
    return fields


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: sanitize(value) if isinstance(value, str) else value for key, value in fields.items()}


_second: list[Any] = [None, ""]  # the last second formatted, and its text up to the seconds


def timestamp(created: float) -> str:
    """``created`` as UTC with milliseconds (``2026-12-03T06:28:48.172Z``); the text of its
    second is formatted once per second (a busy process writes hundreds of lines in one)."""
    fraction, whole = math.modf(created)  # rounded as datetime.fromtimestamp rounds
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    if second != _second[0]:
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = second
    return f"{_second[1]}.{micros // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return self.line(record.created, record.levelname, record.name, record.getMessage(), record_fields(record))

    @staticmethod
    def line(created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """The line of a record from its parts (``fields`` masked already)."""
        line: dict[str, Any] = {
            "time": timestamp(created),
            "level": level,
            "logger": name,
            "message": message,
        }
        line.update(fields)
        return msgspec.json.encode(line, enc_hook=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        return text + "".join(f" {key}={value}" for key, value in fields.items()) if fields else text

    def line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
        record = logging.makeLogRecord({"created": created, "msecs": created % 1 * 1000, "levelname": level, "name": name})
        text = f"{self.formatTime(record)} {level} {name} {message}"
        return text + "".join(f" {key}={value}" for key, value in fields.items()) if fields else text


class GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`make_handler` makes: masks secrets, and writes lines made without a
    :class:`~logging.LogRecord` too (:func:`write_line`).

    Such lines written while an event loop runs in this thread are gathered and written together
    at the loop's next iteration: one write for every request that finished in the same iteration
    (the access log's line per request was one system call each). A record through the logging
    module, a line written outside a loop and :meth:`flush` (also at exit) write what was gathered
    first, so the order of lines is kept."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._gathered: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def write_line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> None:
        formatter = self.formatter
        assert isinstance(formatter, (JsonFormatter, TextFormatter))
        if needs_masking(message, *(value for value in fields.values() if isinstance(value, str))):
            message, fields = sanitize(message), _clean_fields(fields)
        line = formatter.line(created, level, name, message, fields)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]
            self._gathered.append(line + self.terminator)
            if loop is None:
                self._write_gathered()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_soon(self._flush_gathered)

    def _flush_gathered(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            self._write_gathered()

    def _write_gathered(self) -> None:
        """Write the gathered lines (the lock held)."""
        if not self._gathered:
            return
        text = "".join(self._gathered)
        self._gathered.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - as a record's emit: reported, never raised to the request
            self.handleError(logging.makeLogRecord({"name": "jobgate.access", "msg": text[:200]}))

    def emit(self, record: logging.LogRecord) -> None:
        self._write_gathered()  # handle() holds the lock
        super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_gathered()
        super().flush()


def make_handler(log_format: str = "json") -> logging.Handler:
    handler = GatewayHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(SanitizingFilter())
    return handler


def _only_sanitising(handler: logging.Handler) -> bool:
    return len(handler.filters) == 1 and type(handler.filters[0]) is SanitizingFilter


def write_line(logger: logging.Logger, message: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
    """``logger.log(level, message, extra=fields)``, the same line, at a fraction of the cost.

    The access log writes one line per request, and the logging module's record (its creation,
    filters, attribute walk) costs about as much again as encoding and writing the line.
    Where every handler the record would reach is a :class:`GatewayHandler` (the app's own
    logging), the line is encoded and written by those handlers directly, masked as any record
    is; otherwise (a handler of another kind, such as a test's capture) the record goes through
    the logging module as usual.
    """
    if not logger.isEnabledFor(level):
        return
    handlers: list[GatewayHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if type(handler) is not GatewayHandler or not _only_sanitising(handler):
                logger.log(level, message, extra=fields)
                return
            if level >= handler.level:
                handlers.append(handler)
        current = current.parent if current.propagate else None
    if not handlers:
        logger.log(level, message, extra=fields)  # the logging module's last resort decides
        return
    created, name = time.time(), logging.getLevelName(level)
    for handler in handlers:
        handler.write_line(created, name, logger.name, message, fields)


def configure_logging(log_format: str = "json", level: str | int = logging.INFO) -> None:
    """Once per process: the root logger gets one sanitising handler in the chosen format."""
    root = logging.getLogger()
    if any(isinstance(f, SanitizingFilter) for h in root.handlers for f in h.filters):
        return
    # No record needs its source line, thread or process (neither format writes them): the
    # logging module's documented switches skip looking them up for every record.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    for name in ("sqlalchemy", "asyncio", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def granian_log_config(log_format: str) -> dict[str, Any]:
    """Granian's own logger (the server's process messages) through the same handler."""
    formatter = "app.logs.JsonFormatter" if log_format == "json" else "app.logs.TextFormatter"
    return {
        "formatters": {"jobgate": {"()": formatter}},
        "filters": {"sanitize": {"()": "app.sanitize.SanitizingFilter"}},
        "handlers": {
            "jobgate": {
                "class": "logging.StreamHandler",
                "formatter": "jobgate",
                "filters": ["sanitize"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "_granian": {"handlers": ["jobgate"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["jobgate"], "level": "INFO", "propagate": False},
        },
    }

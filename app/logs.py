"""Logging: one line per record, JSON by default, secrets masked before anything is written.

``JOBGATE_LOG_FORMAT=json`` (the default) writes each record as one JSON object: ``time``,
``level``, ``logger``, ``message`` and the record's fields given with ``extra=`` (the access log's
``traceId``, ``tenant``, ``subject``, ``route``, ``method``, ``status``, ``durationMs``). ``text``
writes the same as one plain line. Either way the handler carries the :class:`SanitizingFilter`,
and the formatter masks the extra fields too.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.security.sanitize import SanitizingFilter, sanitize

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(record_fields(record))
        return msgspec.json.encode(line, enc_hook=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        return text + "".join(f" {key}={value}" for key, value in fields.items()) if fields else text


def make_handler(log_format: str = "json") -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(SanitizingFilter())
    return handler


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
        "filters": {"sanitize": {"()": "app.security.sanitize.SanitizingFilter"}},
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

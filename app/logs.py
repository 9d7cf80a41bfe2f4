"""Logging: one line per record, secrets masked before anything is written."""

from __future__ import annotations

import logging
import sys

from app.security.sanitize import SanitizingFilter


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(isinstance(f, SanitizingFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(SanitizingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("sqlalchemy", "asyncio", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)

"""Error templates: a failure message with its variable parts masked, the unit of clustering.

Pure and idempotent: ``error_template(error_template(m)) == error_template(m)``, and two messages
that differ only in masked parts share one template. Secrets are masked first (``sanitize``), so
a template never carries a token, password or address.
"""

from __future__ import annotations

import hashlib
import re

from app.sanitize import sanitize

MAX_TEMPLATE = 1000

# Order matters: whole tokens first (timestamps, URLs, e-mails, paths), then the pieces that
# also occur inside them (UUIDs, IPs, quoted values, hex ids, numbers).
_TEMPLATE_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<timestamp>",
    ),
    (re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:!?)\]]"), "<url>"),
    (
        re.compile(r"(?:[A-Za-z0-9._%+-]+|\*\*\*)@(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}|\*\*\*)"),
        "<email>",
    ),
    (re.compile(r"(?<![\w.:/<>-])(?:~|\.{1,2})?/[\w.@%+-]+(?:/[\w.@%+-]+)*/?"), "<path>"),
    (re.compile(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"), "<ip>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`"), "<value>"),
    (re.compile(r"(?i)\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![A-Za-z0-9_])\d+(?:\.\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def error_template(message: str) -> str:
    """The message with its variable parts masked: the unit of error clustering.

    Timestamps, URLs, e-mail addresses, paths, UUIDs, IP addresses, quoted values, hex ids and
    numbers become ``<timestamp>``, ``<url>``, ``<email>``, ``<path>``, ``<uuid>``, ``<ip>``,
    ``<value>``, ``<hex>`` and ``<n>``; runs of white space become one space.
    """
    message = sanitize(message)
    for pattern, placeholder in _TEMPLATE_MASKS:
        message = pattern.sub(placeholder, message)
    return message.strip()[:MAX_TEMPLATE]


def template_hash(error_code: str, template: str) -> str:
    """A short stable key of one error cluster (``error_code`` and template)."""
    return hashlib.sha256(f"{error_code}\x1f{template}".encode()).hexdigest()[:16]

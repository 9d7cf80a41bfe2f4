"""Error templates: a failure message with its variable parts masked, the unit of clustering.

Pure and idempotent: ``template(template(m)) == template(m)``, and two messages that differ only
in masked parts share one template. Secrets are masked first (``sanitize``), so a template never
carries a token, password or address.
"""

from __future__ import annotations

import hashlib
import re

from app.security.sanitize import sanitize

_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"), "<ts>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+"), "<url>"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "<email>"),
    (re.compile(r"\*\*\*@\*\*\*"), "<email>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\""), "<str>"),
    (re.compile(r"(?<![\w<])(?:[A-Za-z]:)?(?:[/\\][\w.-]+){2,}[/\\]?"), "<path>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:[A-Za-z%]{1,3})?(?![\w>])"), "<num>"),
)
MAX_TEMPLATE = 1000


def error_template(message: str) -> str:
    text = sanitize(message)
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return " ".join(text.split())[:MAX_TEMPLATE]


def template_hash(error_code: str, template: str) -> str:
    """Stable key of a cluster: the error code and its template."""
    return hashlib.sha256(f"{error_code}\x00{template}".encode()).hexdigest()[:32]

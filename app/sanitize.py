"""Masking of secrets in text that leaves the process (logs, stored messages, problem details)."""

from __future__ import annotations

import logging
import re

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # SQL and its bound parameters as database errors quote them ("[SQL: …]", "[parameters: …]")
    (re.compile(r"\[SQL: .*", re.DOTALL), "(SQL omitted)"),
    (re.compile(r"\[parameters: .*", re.DOTALL), "(parameters omitted)"),
    # PEM private keys
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
        ),
        "***private key***",
    ),
    # scheme://user:password@host -> scheme://user:***@host (a password may itself hold '@' or '/')
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@\"'<>]*):[^\s\"'<>,;]*@"), r"\1:***@"),
    # Authorization headers and bearer/DPoP credentials
    (re.compile(r"(?i)\b(bearer|dpop|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    # compact JWS/JWT (three base64url segments)
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***jwt***"),
    # password=..., secret: ..., api_key=..., token=..., and their quoted JSON forms ("password": "...")
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|access[_-]?token|refresh[_-]?token|token)"
            r"([\"']?\s*[=:]\s*[\"']?)[^\s,;&\"']+"
        ),
        r"\1\2***",
    ),
    # e-mail addresses
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "***@***"),
)


# For each pattern above, words one of which any match contains (case-folded, as the patterns
# that ignore case match): a pattern runs only on text holding one of them. Most text that leaves
# the process (an access line's route, tenant and subject) holds none, and the case-insensitive
# patterns cost tens of microseconds per call even on a short string that cannot match.
_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("[sql: ",),
    ("[parameters: ",),
    ("-----begin ",),
    ("://",),
    ("bearer", "dpop", "basic"),
    ("eyj",),
    ("password", "passwd", "pwd", "secret", "api_key", "api-key", "apikey", "token"),
    ("@",),
)


# Any of the words at all: one search decides for most text that nothing needs masking.
_ANY_NEEDLE = re.compile("|".join(re.escape(needle) for needles in _NEEDLES for needle in needles))


def sanitize(text: str) -> str:
    """Mask SQL, private keys, URL passwords, bearer tokens, JWTs, key=value secrets and e-mail addresses."""
    folded = text.casefold()
    if _ANY_NEEDLE.search(folded) is None:
        return text
    for (pattern, replacement), needles in zip(_PATTERNS, _NEEDLES):
        if any(needle in folded for needle in needles):
            text = pattern.sub(replacement, text)
            folded = text.casefold()
    return text


def needs_masking(*texts: str) -> bool:
    """Whether :func:`sanitize` could change any of ``texts``: one search over all of them (no word
    it looks for holds a line break, so none is found across two texts)."""
    return _ANY_NEEDLE.search("\n".join(texts).casefold()) is not None


class SanitizingFilter(logging.Filter):
    """Applied to every handler: the formatted message is sanitised before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = sanitize(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks may quote SQL parameters or DSNs; log the type and a sanitised message only.
            exc = record.exc_info[1]
            clean = f"{clean} [{type(exc).__name__}: {sanitize(str(exc))[:500]}]"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.msg, record.args = clean, None
        return True

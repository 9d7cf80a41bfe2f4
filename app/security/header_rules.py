"""The envelope's headers: their shapes (one definition for the checks and the contract) and the
checks of the operator reason, ticket and Idempotency-Key."""

from __future__ import annotations

import re
import unicodedata

from app.core.problems import Problem

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TRACE_ID_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
# Printable: no C0/C1 control or soft-hyphen characters, and at least one character that is not a
# space. (Beyond Latin-1 the checks below also refuse format characters such as zero-width spaces.)
REASON_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\xad]*[^\x00-\x20\x7f-\xa0\xad][^\x00-\x1f\x7f-\x9f\xad]*$"
REASON_MAX = 512
TICKET_PATTERN = REASON_PATTERN
TICKET_MAX = 128

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_REASON_INVALID = f"X-Stella-Operator-Reason must be 1-{REASON_MAX} printable UTF-8 characters without control characters."
_TICKET_INVALID = f"X-Stella-Operator-Ticket must be 1-{TICKET_MAX} printable UTF-8 characters."


def _printable(text: str) -> bool:
    return all(unicodedata.category(ch) not in _UNPRINTABLE for ch in text)


def _utf8(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def operator_reason(values: list[bytes]) -> str:
    """The one ``X-Stella-Operator-Reason`` (UTF-8), else 400."""
    reason = _utf8(values[0]) if values else ""
    if reason is not None and not reason.strip():
        raise Problem(400, "operator_reason_required", "X-Stella-Operator-Reason is required on this request.")
    if len(values) > 1 or reason is None or len(reason) > REASON_MAX or not _printable(reason):
        raise Problem(400, "operator_reason_invalid", _REASON_INVALID)
    return reason


def operator_ticket(values: list[bytes]) -> str | None:
    """The one ``X-Stella-Operator-Ticket`` (UTF-8) if sent, else None; invalid is 400."""
    if not values:
        return None
    ticket = _utf8(values[0])
    if len(values) > 1 or ticket is None or not 0 < len(ticket) <= TICKET_MAX or not _printable(ticket):
        raise Problem(400, "operator_ticket_invalid", _TICKET_INVALID)
    return ticket


def idempotency_key(values: list[bytes]) -> str | None:
    """The one ``Idempotency-Key`` (visible ASCII) if sent, else None; invalid is 400."""
    if not values:
        return None
    key = values[0].decode("latin-1")
    if len(values) > 1 or not _IDEMPOTENCY_KEY.match(key):
        raise Problem(400, "idempotency_key_invalid", "Idempotency-Key must be 1-128 visible characters.")
    return key

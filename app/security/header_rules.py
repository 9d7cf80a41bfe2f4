"""The shapes of the envelope's headers: one definition for the checks and the contract."""

from __future__ import annotations

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TRACE_ID_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
# Printable: no C0/C1 controls; at least one non-space character. Non-ASCII is also accepted by the
# envelope (sent as UTF-8); the contract states the ASCII subset every HTTP client can send.
REASON_PATTERN = r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$"
REASON_MAX = 512
TICKET_PATTERN = r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$"
TICKET_MAX = 128

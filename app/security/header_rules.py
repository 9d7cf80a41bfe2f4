"""The shapes of the envelope's headers: one definition for the checks and the contract."""

from __future__ import annotations

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TRACE_ID_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
# Printable: no C0/C1 control or soft-hyphen characters, and at least one character that is not a
# space. (Beyond Latin-1 the envelope also refuses format characters such as zero-width spaces.)
REASON_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\xad]*[^\x00-\x20\x7f-\xa0\xad][^\x00-\x1f\x7f-\x9f\xad]*$"
REASON_MAX = 512
TICKET_PATTERN = REASON_PATTERN
TICKET_MAX = 128

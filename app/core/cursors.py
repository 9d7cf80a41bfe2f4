"""Continuation tokens: opaque, HMAC-signed positions in a keyset-ordered list.

A token carries the sort key of the last row served. Its MAC also covers the tenant, the
project, the endpoint, the filters and the sort, none of which it reveals, so a token used
anywhere else fails verification. Tokens older than :data:`TOKEN_MAX_AGE` are stale.
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from app.core.problems import Problem

MAX_LIMIT = 200
TOKEN_MAX_AGE = 24 * 3600
ISSUE_TIME_STEP = 3600
CLOCK_SKEW = 300  # another process may sign with a clock slightly ahead of ours
_VERSION = 1
_B64 = re.compile(r"^[A-Za-z0-9_-]*$")


def invalid_token() -> Problem:
    return Problem(
        400, "invalid_continuation_token", "The continuation token is invalid, foreign or expired."
    )


@dataclass(frozen=True)
class PageScope:
    """Everything a token is bound to."""

    tenant: str
    project: str | None
    endpoint: str
    filters: tuple[tuple[str, Any], ...]
    sort: str

    def binding(self) -> bytes:
        return msgspec.json.encode([self.tenant, self.project, self.endpoint, list(self.filters), self.sort])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: only the canonical unpadded form of some bytes decodes (no ignored characters or bits)."""
    if not _B64.match(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


class CursorCodec:
    """Signs with the first secret, verifies with any (rotation)."""

    def __init__(self, secrets: Sequence[tuple[str, bytes]], clock: Any = time.time) -> None:
        if not secrets:
            raise ValueError("at least one cursor secret is required")
        if len({kid for kid, _ in secrets}) != len(secrets):
            raise ValueError("cursor secret ids must be unique")
        self._secrets = dict(secrets)
        self._signing_kid = secrets[0][0]
        self._clock = clock

    def _mac(self, kid: str, body: bytes, scope: PageScope) -> bytes:
        return hmac.digest(self._secrets[kid], body + b"\x00" + scope.binding(), "sha256")[:16]

    def encode(self, last_key: Sequence[Any], scope: PageScope) -> str:
        # The issue time is rounded down to the hour: a token (and so the page that carries it and
        # that page's ETag) stays byte-identical for the same position within the hour.
        issued = int(self._clock()) // ISSUE_TIME_STEP * ISSUE_TIME_STEP
        body = msgspec.json.encode([_VERSION, issued, list(last_key)])
        kid = self._signing_kid
        return f"{kid}.{_b64(body)}.{_b64(self._mac(kid, body, scope))}"

    def decode(self, token: str, scope: PageScope) -> list[Any]:
        if len(token) > 1024:
            raise invalid_token()
        try:
            kid, body_b64, mac_b64 = token.split(".")
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except (ValueError, TypeError):
            raise invalid_token() from None
        if kid not in self._secrets or not hmac.compare_digest(mac, self._mac(kid, body, scope)):
            raise invalid_token()
        try:
            version, issued, last_key = msgspec.json.decode(body)
        except (msgspec.DecodeError, ValueError, TypeError):
            raise invalid_token() from None
        if version != _VERSION or not isinstance(last_key, list) or type(issued) is not int:
            raise invalid_token()
        age = self._clock() - issued
        if not -CLOCK_SKEW <= age <= TOKEN_MAX_AGE:
            raise invalid_token()
        return last_key

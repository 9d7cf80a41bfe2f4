"""Errors the client sees, with a stable machine ``code``.

Services and handlers raise :class:`Problem`; ``app/http/problems.py`` turns it (and every
other exception) into ``application/problem+json``.
"""

from __future__ import annotations

import msgspec


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(Exception):
    """An error the client should see, with a stable machine ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def not_found(what: str) -> Problem:
    """The one 404 for a missing object and for another tenant's object: no hint of which."""
    return Problem(404, "not_found", f"{what} not found.")

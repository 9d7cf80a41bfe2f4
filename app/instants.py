"""One spelling of an instant in stored JSON and tokens: RFC 3339, UTC, microseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime, timespec: str = "microseconds") -> str:
    """With the default fixed precision equal instants give equal, orderable strings. A naive value
    is taken as UTC; years below 1000 keep four digits (``strftime('%Y')`` drops them)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    """For display and evidence: seconds unless the instant has a fraction."""
    return iso(moment, "auto") if moment is not None else None


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)

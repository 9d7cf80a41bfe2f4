"""Idempotency records: the stored answer of a request under its ``Idempotency-Key``, scoped to
(tenant, subject, key) and kept for :data:`RETENTION` (the header's handling: ``app/http/idempotency.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller
from app.storage.models import IdempotencyRecord

RETENTION = timedelta(hours=24)
PURGE_BATCH = 5000


def record_key(caller: Caller) -> tuple[Any, ...]:
    """The conditions that select the caller's record."""
    return (
        IdempotencyRecord.tenant_id == caller.tenant.id,
        IdempotencyRecord.subject == caller.subject,
        IdempotencyRecord.key == caller.idempotency_key,
    )


async def complete_in(
    session: AsyncSession, caller: Caller, status: int, headers: dict[str, str], body: bytes
) -> None:
    """Store the response of the first request in the caller's own transaction."""
    if caller.idempotency_key is None:
        return
    await session.execute(
        update(IdempotencyRecord)
        .where(*record_key(caller), IdempotencyRecord.state == "in_flight")
        .values(
            state="done",
            response_status=status,
            response_headers={k.lower(): v for k, v in headers.items()},
            response_body=body,
        )
    )


async def release_in(session: AsyncSession, caller: Caller) -> None:
    """Release the key of a request that failed: the next request with it runs anew."""
    await session.execute(delete(IdempotencyRecord).where(*record_key(caller), IdempotencyRecord.state == "in_flight"))


async def purge_expired(sessions: async_sessionmaker[AsyncSession], now: datetime | None = None) -> int:
    """A background step of the workers: delete up to :data:`PURGE_BATCH` records past their
    retention (a reused key replaces its expired record anyway; this keeps the table from growing
    with keys never used again). Returns how many were deleted."""
    now = now or datetime.now(UTC)
    async with sessions.begin() as session:
        expired = (
            select(IdempotencyRecord.tenant_id, IdempotencyRecord.subject, IdempotencyRecord.key)
            .where(IdempotencyRecord.expires_at < now)
            .limit(PURGE_BATCH)
        )
        result = await session.execute(
            delete(IdempotencyRecord)
            .where(
                tuple_(IdempotencyRecord.tenant_id, IdempotencyRecord.subject, IdempotencyRecord.key).in_(expired)
            )
            .execution_options(synchronize_session=False)
        )
        return result.rowcount or 0

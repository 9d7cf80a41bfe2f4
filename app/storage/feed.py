"""The change feed's rows: per-tenant versions and events (migration 0011 writes them, by triggers).

What a process reads of them: a tenant's versions, the events after a sequence (``Last-Event-ID``
resumption and the feed's catch-up), the oldest retained one, and the purge of the expired.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.storage.models import FeedEvent, FeedVersion

# What a change can be of. ``worker``: the workers table belongs to no tenant; a worker's change is
# one event in the sequence of every tenant that sees it (migration 0013).
KINDS = ("source", "quota", "job", "deadletter", "packrun", "operation", "worker", "audit")
SEQUENCE = ""  # the kind under which feed_versions keeps a tenant's sequence
CHANNEL = "jobgate_feed"  # PostgreSQL NOTIFY channel of the triggers: "<tenant_id>:<sequence>"


class Change(NamedTuple):
    tenant_id: int
    seq: int
    kind: str
    object_id: str
    project_id: str | None
    at: int  # epoch milliseconds


_CHANGE_COLUMNS = (
    FeedEvent.tenant_id,
    FeedEvent.seq,
    FeedEvent.kind,
    FeedEvent.object_id,
    FeedEvent.project_id,
    FeedEvent.at,
)

Executor = AsyncSession | AsyncConnection
log = logging.getLogger("jobgate.feed")


async def versions_of(db: Executor, tenant_id: int) -> dict[str, int]:
    """The tenant's sequence (under ``''``) and its kinds' versions; absent kinds never changed."""
    rows = await db.execute(select(FeedVersion.kind, FeedVersion.version).where(FeedVersion.tenant_id == tenant_id))
    return {kind: int(version) for kind, version in rows}


async def all_versions(db: Executor) -> dict[int, dict[str, int]]:
    versions: dict[int, dict[str, int]] = {}
    for tenant_id, kind, version in await db.execute(
        select(FeedVersion.tenant_id, FeedVersion.kind, FeedVersion.version)
    ):
        versions.setdefault(int(tenant_id), {})[kind] = int(version)
    return versions


async def changes_after(db: Executor, tenant_id: int, after: int, limit: int = 1000) -> list[Change]:
    rows = await db.execute(
        select(*_CHANGE_COLUMNS)
        .where(FeedEvent.tenant_id == tenant_id, FeedEvent.seq > after)
        .order_by(FeedEvent.seq)
        .limit(limit)
    )
    return [Change(*row) for row in rows]


async def oldest_retained(db: Executor, tenant_id: int) -> int | None:
    """The lowest sequence still kept for the tenant (None when it has no events kept)."""
    return (await db.execute(select(func.min(FeedEvent.seq)).where(FeedEvent.tenant_id == tenant_id))).scalar()


async def purge(db: Executor, before_ms: int) -> int:
    result = await db.execute(delete(FeedEvent).where(FeedEvent.at < before_ms))
    return int(result.rowcount or 0)


def epoch_key(tenant_id: int) -> str:
    """The tenant's write epoch in the shared store: advanced by a gateway after each committed
    write, before it answers, so that every process sees the write at once (read-your-writes)."""
    return f"feed:epoch:{tenant_id}"


async def announce(store: Any, tenant_id: int) -> None:
    """Advance the tenant's write epoch; a shared store that cannot be reached is logged (the feed
    still carries the change, within its delivery time)."""
    try:
        await store.bump(epoch_key(tenant_id))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not advance the write epoch (%s)", type(exc).__name__)

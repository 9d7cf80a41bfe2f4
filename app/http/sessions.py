"""The database session of a request: ``read_session`` and the routes' ``session`` dependency."""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any, Protocol

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller


class RequestSessions(Protocol):
    """The session factories of the process (the runtime has them)."""

    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]


@asynccontextmanager
async def read_session(runtime: RequestSessions, method: str) -> AsyncIterator[AsyncSession]:
    """A session per request. Reads (GET) run in autocommit (no BEGIN/ROLLBACK round trips) and
    their list statements on the list reads' pool; writes run in one transaction that
    :meth:`Mutation.commit` commits.

    A session that never began a transaction and holds no object (a list read on the list reads'
    pool) holds nothing to release: it is dropped without ``close()``, which would cost the read
    as much as its ETag."""
    session = runtime.read_sessions() if method == "GET" else runtime.sessions()
    try:
        yield session
    finally:
        if session.in_transaction() or session.identity_map or session.new or session.deleted:
            await session.close()


async def provide_session(request: Request[Any, Any, Any], caller: Caller) -> AsyncIterator[AsyncSession]:
    """:func:`read_session` as the routes' dependency. Depending on ``caller`` orders the
    dependencies, so the framework resolves them one after the other without a task group."""
    async with read_session(request.app.state.runtime, request.method) as session:
        yield session

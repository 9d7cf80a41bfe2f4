"""The database engine and session factory, one per process."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.settings import Settings


_JSON = msgspec.json.Decoder()


def decode_json(text: str | bytes) -> Any:
    """A JSON column's value as the standard library reads it, decoded by msgspec (faster, see
    docs/benchmarks.md): every page of jobs or dead-letter entries decodes a payload per row,
    every page of operation runs three documents per run. What msgspec refuses and the standard library reads (a number beyond a
    float's range, which a ``jsonb`` column can hold) is read by the standard library."""
    try:
        return _JSON.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def read_pool_size(settings: Settings) -> int:
    """The list reads' share of the process's connections (half, at least one)."""
    return max(1, settings.database_pool_size // 2)


def session_pool_size(settings: Settings) -> int:
    """The sessions' share: the rest of the budget, at least one."""
    return max(1, settings.database_pool_size - read_pool_size(settings))


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """``pool_size``: the sessions' pool (default the whole ``JOBGATE_DATABASE_POOL_SIZE``; a
    gateway gives half of it to the list reads, :func:`session_pool_size`)."""
    if settings.is_sqlite:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            settings.database_url, connect_args={"timeout": 30}, json_deserializer=decode_json
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        settings.database_url,
        # A fixed pool: overflow connections would be opened and closed again under every burst.
        # The list reads have a pool of their own (app/storage/reads.py); the two share the
        # process's budget of JOBGATE_DATABASE_POOL_SIZE connections.
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=0,
        pool_timeout=5,
        # No ping per checkout (a round trip on every request): a connection broken by a database
        # restart fails its request with a disconnect error, which makes SQLAlchemy discard every
        # connection of the pool opened before it; the restart drills (tests/drills) show the
        # gateway serving again as soon as the database accepts connections.
        pool_pre_ping=False,
        pool_recycle=1800,
        json_deserializer=decode_json,
        connect_args={
            # asyncpg waits 60 s for a connection by default: a database host that does not answer
            # would hold requests far past any client's patience instead of answering 503.
            "timeout": 5,
            "command_timeout": 10,
            "server_settings": {"application_name": "jobgate"},
        },
    )


def session_factory(engine: AsyncEngine, info: dict[str, Any] | None = None) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)


# -- statements a transaction runs last -----------------------------------------------------------

_LAST = "jobgate_run_last"


def run_last(session: AsyncSession, step: Callable[[AsyncSession], Awaitable[None]]) -> None:
    """Run ``step`` just before ``session`` commits (:func:`run_last_steps`, called by whoever
    commits). For a statement that locks a row many requests update (a source's job counter): the
    row stays locked from that statement to the commit, so it should be the transaction's last."""
    session.info.setdefault(_LAST, []).append(step)


async def run_last_steps(session: AsyncSession) -> None:
    for step in session.info.pop(_LAST, ()):
        await step(session)

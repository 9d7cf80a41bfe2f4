"""The per-process runtime: settings, database, shared store, key set and the verifiers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.cursors import CursorCodec
from app.security.dpop import ProofVerifier
from app.security.keys import KeySet, dev_signing_key
from app.security.tokens import TokenVerifier
from app.settings import Settings
from app.storage import migrate
from app.storage.db import create_engine, read_pool_size, session_factory, session_pool_size
from app.storage.hub import FeedHub
from app.storage.reads import SESSION_INFO_KEY, ListReads, open_list_reads
from app.storage.shared import SharedStore, create_store
from app.storage.tenants import TenantRegistry

log = logging.getLogger("jobgate")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]
    store: SharedStore
    keys: KeySet
    tokens: TokenVerifier
    proofs: ProofVerifier
    cursors: CursorCodec
    tenants: TenantRegistry
    list_reads: ListReads | None  # PostgreSQL only (app/storage/reads.py)
    feed: FeedHub | None = None  # gateway processes only (app/storage/hub.py)

    @classmethod
    def create(cls, settings: Settings, *, list_reads: bool = True) -> Runtime:
        """The runtime of a gateway process; ``list_reads=False`` for a process that serves no
        lists (a worker, a command): its sessions then have the whole connection budget."""
        gateway = list_reads
        reads = list_reads and not settings.is_sqlite
        engine = create_engine(settings, pool_size=session_pool_size(settings) if reads else None)
        sessions = session_factory(engine)
        store = create_store(settings.redis_url, settings.redis_prefix)
        if settings.uses_dev_keys:
            dev_signing_key(settings.data_dir)
        keys = KeySet(
            settings.algorithms,
            file=settings.dev_jwks_path if settings.uses_dev_keys else settings.jwks_file,
            url=settings.jwks_url,
            refresh_seconds=settings.jwks_refresh_seconds,
            max_stale_seconds=settings.jwks_max_stale_seconds,
        )
        list_reads = open_list_reads(settings, engine, size=read_pool_size(settings)) if reads else None
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            read_sessions=session_factory(
                engine.execution_options(isolation_level="AUTOCOMMIT"),
                info={SESSION_INFO_KEY: list_reads} if list_reads is not None else None,
            ),
            store=store,
            keys=keys,
            tokens=TokenVerifier(keys, issuer=settings.issuer, audience=settings.audience),
            proofs=ProofVerifier(store),
            cursors=CursorCodec(settings.cursor_secrets),
            tenants=TenantRegistry(sessions),
            list_reads=list_reads,
            feed=FeedHub(
                engine,
                settings.database_url,
                retention_seconds=settings.feed_retention_seconds,
                sqlite=settings.is_sqlite,
            )
            if gateway
            else None,
        )

    async def start(self) -> None:
        if self.settings.is_sqlite:
            await migrate.upgrade(self.engine)  # the embedded default migrates itself
        if self.list_reads is not None:
            await self.list_reads.open()
        await self.keys.start()  # an unreachable key provider leaves the process unready, not stopped
        if self.feed is not None:
            await self.feed.start()

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        await self.keys.stop()
        await self.store.close()
        if self.list_reads is not None:
            await self.list_reads.close()
        await self.engine.dispose()

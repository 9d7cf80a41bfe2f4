"""The per-process runtime: settings, database, shared store, key set and the verifiers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.cursors import CursorCodec
from app.security.dpop import ProofVerifier
from app.security.keys import KeySet, dev_signing_key
from app.security.tokens import TokenVerifier
from app.settings import Settings
from app.storage import migrate
from app.storage.db import create_engine, session_factory
from app.storage.reads import SESSION_INFO_KEY, DriverReads
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
    # GET sessions left by finished requests, taken by the next (app/http/mutation.py:read_session)
    idle_read_sessions: list[AsyncSession] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings)
        sessions = session_factory(engine)
        store = create_store(settings.redis_url, settings.redis_prefix)
        if settings.uses_dev_keys:
            dev_signing_key(settings.data_dir)
        keys = KeySet(
            settings.algorithms,
            file=settings.dev_jwks_path if settings.uses_dev_keys else settings.jwks_file,
            url=settings.jwks_url,
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            read_sessions=session_factory(
                engine.execution_options(isolation_level="AUTOCOMMIT"),
                info={SESSION_INFO_KEY: DriverReads(engine)} if DriverReads.supports(engine) else None,
            ),
            store=store,
            keys=keys,
            tokens=TokenVerifier(keys, issuer=settings.issuer, audience=settings.audience),
            proofs=ProofVerifier(store),
            cursors=CursorCodec(settings.cursor_secrets),
            tenants=TenantRegistry(sessions),
        )

    async def start(self) -> None:
        if self.settings.is_sqlite:
            await migrate.upgrade(self.engine)  # the embedded default migrates itself
        await self.keys.refresh()

    async def stop(self) -> None:
        await self.store.close()
        await self.engine.dispose()

"""What the engine needs of the process it runs in: its settings, its database and sessions.

The composition root passes its runtime (``app/runtime.py`` satisfies this structurally); the
engine never imports the runtime, so ``jobgate worker`` loads no web framework.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.settings import Settings


class EngineContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> AsyncEngine: ...

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...

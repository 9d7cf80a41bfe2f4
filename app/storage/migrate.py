"""Alembic migrations to head, callable from the CLI, the embedded server and the tests."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database behind ``engine`` to head."""

    def _upgrade(connection) -> None:  # type: ignore[no-untyped-def]
        config = alembic_config(str(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """The migration revisions this code ships, oldest first; the last is head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return tuple(reversed([revision.revision for revision in script.walk_revisions()]))


def schema_behind(version: str | None) -> bool:
    """Whether a database at ``version`` lacks migrations this code needs. A revision this code
    does not know is a newer release's (migrations keep the previous release working, see
    docs/deploy.md), so only a known revision before head, or none at all, is behind."""
    revisions = known_revisions()
    return version is None or (version in revisions and version != revisions[-1])


"""Sources: queries and changes, always within the caller's tenant and project."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import Problem, not_found
from app.domain.sources.schemas import JobCounts, SourceCreate, SourcePage, SourceReplace, SourceView
from app.storage.models import Source
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((Source.name, Source.source_id))


def view(source: Source) -> SourceView:
    """The view of an entity or a list page's row (both name their values as the entity does)."""
    s = source
    return SourceView(
        source_id=s.source_id,
        name=s.name,
        source_type=s.source_type,
        enabled=s.enabled,
        project_id=s.project_id,
        description=s.description,
        created_at=s.created_at,
        updated_at=s.updated_at,
        last_job_at=s.last_job_at,
        job_counts=JobCounts(submitted=s.jobs_submitted, active=s.jobs_active, failed=s.jobs_failed),
    )


def _visible(caller: Caller):  # type: ignore[no-untyped-def]
    stmt = select(Source).where(Source.tenant_id == caller.tenant_id)
    if caller.project is not None:
        stmt = stmt.where(Source.project_id == caller.project)
    return stmt


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    stmt = select(Source).where(Source.tenant_id == bindparam("tenant"))
    return where_present(
        stmt, present, (("project", Source.project_id), ("sourceType", Source.source_type), ("enabled", Source.enabled))
    )


LIST = PageQuery(_list, ORDER)


async def list_sources(
    session: AsyncSession,
    caller: Caller,
    codec: CursorCodec,
    *,
    source_type: str | None,
    enabled: bool | None,
    limit: int,
    token: str | None,
) -> SourcePage:
    values = {"tenant": caller.tenant_id, "project": caller.project, "sourceType": source_type, "enabled": enabled}
    scope = PageScope(
        caller.tenant.key, caller.project, "sources", (("sourceType", source_type), ("enabled", enabled)), ORDER.name
    )
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return SourcePage(items=[view(r) for r in rows], continuation_token=next_token)


async def load(session: AsyncSession, caller: Caller, source_id: str, *, for_update: bool = False) -> Source:
    stmt = _visible(caller).where(Source.source_id == source_id)
    if for_update:
        stmt = stmt.with_for_update()
    source = (await session.execute(stmt)).scalar_one_or_none()
    if source is None:
        raise not_found("Source")
    return source


def _project(caller: Caller, requested: str | None) -> str | None:
    if caller.project is not None and requested not in (None, caller.project):
        raise Problem(422, "project_mismatch", "projectId must match the X-Stella-Project header.")
    return requested if requested is not None else caller.project


async def create_source(session: AsyncSession, caller: Caller, data: SourceCreate) -> Source:
    now = datetime.now(UTC)
    source = Source(
        tenant_id=caller.tenant_id,
        source_id=data.source_id or str(uuid.uuid4()),
        project_id=_project(caller, data.project_id),
        name=data.name,
        source_type=data.source_type,
        enabled=data.enabled,
        description=data.description,
        created_at=now,
        updated_at=now,
        jobs_submitted=0,
        jobs_active=0,
        jobs_failed=0,
    )
    session.add(source)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Problem(409, "source_exists", f"A source with sourceId {source.source_id!r} exists.") from None
    return source


async def replace_source(session: AsyncSession, source: Source, caller: Caller, data: SourceReplace) -> Source:
    source.project_id = _project(caller, data.project_id)
    source.name = data.name
    source.source_type = data.source_type
    source.enabled = data.enabled
    source.description = data.description
    source.updated_at = datetime.now(UTC)
    await session.flush()
    return source

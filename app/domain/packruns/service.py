"""Pack runs: queries within the caller's tenant and project."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import not_found
from app.domain.packruns.schemas import PackRunPage, PackRunView, StepCounts
from app.storage.models import PackRun
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((PackRun.created_at, PackRun.pack_run_id), descending=True)


def view(run: PackRun) -> PackRunView:
    r = run
    return PackRunView(
        pack_run_id=r.pack_run_id,
        pack_name=r.pack_name,
        pack_version=r.pack_version,
        status=r.status,  # type: ignore[arg-type]
        project_id=r.project_id,
        source_id=r.source_id,
        retry_of=r.retry_of,
        operation_run_id=r.operation_run_id,
        steps=StepCounts(total=r.steps_total, succeeded=r.steps_succeeded, failed=r.steps_failed),
        initiated_by=r.initiated_by,
        cancel_requested_at=r.cancel_requested_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def visible(caller: Caller):  # type: ignore[no-untyped-def]
    stmt = select(PackRun).where(PackRun.tenant_id == caller.tenant_id)
    if caller.project is not None:
        stmt = stmt.where(PackRun.project_id == caller.project)
    return stmt


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    stmt = select(PackRun).where(PackRun.tenant_id == bindparam("tenant"))
    return where_present(
        stmt, present, (("project", PackRun.project_id), ("status", PackRun.status), ("packName", PackRun.pack_name))
    )


LIST = PageQuery(_list, ORDER)


async def list_pack_runs(
    session: AsyncSession,
    caller: Caller,
    codec: CursorCodec,
    *,
    status: str | None,
    pack_name: str | None,
    limit: int,
    token: str | None,
) -> PackRunPage:
    values = {"tenant": caller.tenant_id, "project": caller.project, "status": status, "packName": pack_name}
    scope = PageScope(
        caller.tenant.key, caller.project, "pack-runs", (("status", status), ("packName", pack_name)), ORDER.name
    )
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return PackRunPage(items=[view(r) for r in rows], continuation_token=next_token)


async def load(session: AsyncSession, caller: Caller, pack_run_id: str, *, for_update: bool = False) -> PackRun:
    stmt = visible(caller).where(PackRun.pack_run_id == pack_run_id)
    if for_update:
        stmt = stmt.with_for_update()
    run = (await session.execute(stmt)).scalar_one_or_none()
    if run is None:
        raise not_found("Pack run")
    return run

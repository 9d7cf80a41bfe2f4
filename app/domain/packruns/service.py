"""Pack runs: queries within the caller's tenant and project, and the one view of a single run."""

from __future__ import annotations

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import not_found
from app.domain.packruns.schemas import PackRunDetail, PackRunPage, PackRunStep, PackRunView, StepCounts
from app.sanitize import sanitize
from app.storage.models import Job, OperationRun, PackRun
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
        step_counts=StepCounts(total=r.steps_total, succeeded=r.steps_succeeded, failed=r.steps_failed),
        initiated_by=r.initiated_by,
        cancel_requested_at=r.cancel_requested_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


FAILURE_STATUSES = frozenset({"failed", "partially_succeeded", "blocked"})
MAX_MESSAGE = 2000  # as stored by the engine (app/engine/outcomes.py)


def _message(text: str | None) -> str | None:
    """Error text leaves the process sanitised (it was when stored; masking again costs little)."""
    return None if text is None else sanitize(text)[:MAX_MESSAGE]


async def steps_of(session: AsyncSession, run: PackRun) -> list[PackRunStep]:
    rows = await session.execute(
        select(Job.step_index, Job.job_type, Job.job_id, Job.status, Job.attempt, Job.last_error_code,
               Job.last_error_message)
        .where(Job.tenant_id == run.tenant_id, Job.pack_run_id == run.pack_run_id, Job.step_index.is_not(None))
        .order_by(Job.step_index, Job.created_at, Job.job_id)
    )
    return [
        PackRunStep(
            index=index,
            job_type=job_type,
            job_id=job_id,
            status=status,
            attempts=attempt,
            last_error_code=code,
            last_error_message=_message(message),
        )
        for index, job_type, job_id, status, attempt, code, message in rows
    ]


async def failure_reason(session: AsyncSession, run: PackRun, steps: list[PackRunStep]) -> str | None:
    """Why a failed, partially succeeded or blocked run ended so, as its operation run recorded it
    when the run ended (the failed step and its error code, the job types without a handler, the
    disabled source, or the reconciler's reason); else from its first failed step. None otherwise."""
    if run.status not in FAILURE_STATUSES:
        return None
    if run.operation_run_id is not None:
        operation = await session.get(OperationRun, run.operation_run_id)
        if operation is not None and operation.tenant_id == run.tenant_id:
            recorded = [f.get("message") for f in operation.failure_summary or [] if f.get("message")]
            if recorded:
                return _message(recorded[0])
            if operation.status == "completed" and operation.operator_message:
                return _message(operation.operator_message)
    failed = next((s for s in steps if s.status in ("failed", "timed_out")), None)
    if failed is not None:
        code = failed.last_error_code or "error"
        return f"Step {failed.index + 1} of {run.steps_total} ({failed.job_type}) failed ({code})."
    return f"The pack run is {run.status.replace('_', ' ')}."


async def detail(session: AsyncSession, run: PackRun) -> PackRunDetail:
    """The view of one pack run: its fields, its steps in order, and its failure reason."""
    steps = await steps_of(session, run)
    fields = msgspec.structs.asdict(view(run))
    return PackRunDetail(**fields, steps=steps, failure_reason=await failure_reason(session, run, steps))


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

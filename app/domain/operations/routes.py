"""The six lifecycle routes (spec §7, seeds 000 and 001): reads under ``orch:read``, revalidated
with ETags (``Cache-Control: private, no-cache``) because consoles poll them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from app.core.caller import Caller
from app.core.cursors import PageScope
from app.core.problems import not_found
from app.domain.operations import queries, service
from app.domain.operations.lifecycle import RunFacts, listed_state
from app.domain.operations.schemas import (
    ListedFreshness,
    OperationRunCollectionContract,
    OperationRunDetail,
    OperationRunDetailContract,
    OperationRunPage,
    ProblemClass,
    RunOutcome,
    RunStatus,
    TenantActivityOperationsSummary,
    TenantOperationProgressOverlay,
)
from app.domain.events import stream
from app.domain.events.routes import deadline_of, open_stream, runtime_feed
from app.http.caching import encode
from app.http.paging import ContinuationToken, Limit
from app.http.params import enum_query
from app.http.routes import location, protected
from app.http.sessions import read_session
from app.storage.models import OperationRun
from app.storage.pages import Keyset, PageQuery, fetch_built_page, fetch_page, where_present
from app.thresholds import Thresholds

ORDER = Keyset((OperationRun.created_at, OperationRun.id), descending=True)
EQUAL = (
    ("status", OperationRun.status),
    ("outcome", OperationRun.outcome),
    ("type", OperationRun.type),
    ("tenant_id", OperationRun.tenant_id),
)


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    project = bindparam("project") if "project" in present else None
    visible = service.visible_condition(bindparam("workspace"), bindparam("tenants", expanding=True), project)
    stmt = where_present(select(OperationRun).where(visible), present, EQUAL)
    if "reconciled" in present:
        stmt = stmt.where(queries.reconciled(True))
    if "unreconciled" in present:
        stmt = stmt.where(queries.reconciled(False))
    return stmt


# What a listed run shows and what its projection reads (not its counts, failures or context).
LISTED = (
    *(getattr(OperationRun, field.name) for field in dataclasses.fields(RunFacts)),
    *(getattr(OperationRun, name) for name in ("id", "tenant_id", "initiator_name", "operator_message")),
)
LIST = PageQuery(_list, ORDER, columns=LISTED)
MAX_ID = 2**63 - 1
DASHBOARD_ACTIVE = 50
DASHBOARD_RECENT = 20
# The overlay polls every 10 s: it loads none of the JSON columns its items do not show.
SURFACE_ONLY = (defer(OperationRun.summary_counts), defer(OperationRun.failure_summary), defer(OperationRun.context))
OVERLAY_ITEMS = 50
CANONICAL_ITEMS = 100
POLL_INTERVAL = "10s"
ACTIVE_TABS = {"active": ("queued", "running"), "completed": ("completed",)}
TAGS = ["operations"]
RunStatusFilter = enum_query(RunStatus, "RunStatus", description="Only runs in this status")
RunOutcomeFilter = enum_query(RunOutcome, "RunOutcome", description="Only runs with this outcome")
FreshnessFilter = enum_query(
    ListedFreshness, "ListedFreshness", query="freshness_state", description="Only runs in this freshness state"
)
ProblemClassFilter = enum_query(
    ProblemClass, "ProblemClass", query="problemClass", description="Only runs of this derived problem class"
)


STREAM_FORM = (
    "With `Accept: text/event-stream` the same answer is streamed (server-sent events): `event: snapshot` "
    "with the JSON answer first, then `event: changed` with the new answer whenever a change of the "
    "visible runs or pack runs commits (or the answer's freshness moves, checked at each 15 s heartbeat); "
    "a comment line every 15 s; the stream ends at the token's `exp`. Open streams count against "
    "JOBGATE_STREAMS_PER_TENANT and JOBGATE_STREAMS_PER_PROCESS (429 `too_many_streams`)."
)


def wants_stream(request: Request[Any, Any, Any]) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def stream_of(
    request: Request[Any, Any, Any], caller: Caller, tenant_ids: list[int], read: Any
) -> Any:
    """The route's answer as an event stream: each ``read(session)`` in a session of its own."""
    runtime = runtime_feed(request)

    async def body() -> bytes:
        async with read_session(runtime, "GET") as session:
            return encode(await read(session))

    def messages(keep: Any) -> Any:
        return stream.snapshots(runtime.feed, tenant_ids, body, deadline_of(request), keep=keep)

    return await open_stream(request, caller, messages, caller.tenant_id)


def _thresholds(request: Request[Any, Any, Any]) -> Thresholds:
    """The thresholds of this process (``JOBGATE_LIFECYCLE_THRESHOLDS``, read at start-up)."""
    return request.app.state.runtime.settings.lifecycle_thresholds


def _runtime(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.runtime


def _detail_url(request: Request[Any, Any, Any], run_id: int) -> str:
    return location(request, f"/admin/operations/{run_id}")


async def _load(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, run_id: int
) -> tuple[Any, Any]:
    if not 1 <= run_id <= MAX_ID:
        raise not_found("Operation run")
    seen = await service.visibility(caller, _runtime(request))
    return await service.load(session, seen, run_id), seen


@get(
    "/api/admin/operations",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="List operation runs with their lifecycle freshness",
    description="Runs visible to the caller (spec §7), ordered by `created_at desc, id desc`. "
    "`freshness_state` is derived at request time from the per-type thresholds; a `tenant_id` "
    "outside the visible tenants matches nothing.",
    tags=TAGS,
)
async def list_operations(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    limit: Limit = 50,
    continuation_token: ContinuationToken = None,
    status: RunStatusFilter = None,
    outcome: RunOutcomeFilter = None,
    run_type: Annotated[str | None, Parameter(query="type")] = None,
    tenant_id: Annotated[
        int | None, Parameter(query="tenant_id", description="Only runs of this tenant (integer id)")
    ] = None,
    freshness_state: FreshnessFilter = None,
    reconciled: bool | None = None,
) -> OperationRunPage:
    runtime = _runtime(request)
    seen = await service.visibility(caller, runtime)
    if tenant_id is not None and tenant_id not in seen.tenants:
        return OperationRunPage(data=[], continuation_token=None)
    now, thresholds = service.now_utc(), _thresholds(request)
    filters = (
        ("status", status),
        ("outcome", outcome),
        ("type", run_type),
        ("tenant_id", tenant_id),
        ("freshness_state", freshness_state),
        ("reconciled", reconciled),
        ("tenants", sorted(seen.tenants)),
    )
    scope = PageScope(caller.tenant.key, caller.project, "operations", filters, ORDER.name)
    equal = {"status": status, "outcome": outcome, "type": run_type, "tenant_id": tenant_id}
    if freshness_state is None:  # the usual list: one statement per shape, only bound
        values = {
            **equal,
            "workspace": seen.workspace_id,
            "tenants": list(seen.tenants),
            "project": seen.project,
            "reconciled": True if reconciled else None,
            "unreconciled": True if reconciled is False else None,
        }
        rows, token = await fetch_page(
            session, LIST, values, limit=limit, token=continuation_token, scope=scope, codec=runtime.cursors
        )
    else:  # the freshness filter compares with instants derived from now: built for this request
        given = frozenset(name for name, value in equal.items() if value is not None)
        stmt = where_present(seen.select(), given, EQUAL, value=equal.__getitem__)
        stmt = stmt.where(queries.listed_freshness(freshness_state, now, thresholds))
        if reconciled is not None:
            stmt = stmt.where(queries.reconciled(reconciled))
        rows, token = await fetch_built_page(
            session, stmt, ORDER, limit=limit, token=continuation_token, scope=scope, codec=runtime.cursors
        )
    items = [service.list_item(run, *listed_state(run, now, thresholds)) for run in rows]
    return OperationRunPage(data=items, continuation_token=token)


@get(
    "/api/admin/operations/{operationRun:int}",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="One operation run with its reconciliation and diagnostics",
    description="A visible run (spec §7) with `freshness_state` derived at request time, its reconciliation "
    "record and diagnostics; an id that is not a visible run (also 0, negative or out of range) is 404.",
    tags=TAGS,
)
async def get_operation(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, operationRun: int
) -> OperationRunDetail:
    run, _ = await _load(request, session, caller, operationRun)
    return service.detail(run, service.projection(run, service.now_utc(), _thresholds(request), "detail"))


TenantPath = Annotated[
    int,
    Parameter(description="The tenant's integer id (a visible tenant, else 404)", schema_extra={"minimum": 1}),
]
RunPath = Annotated[
    int, Parameter(description="The operation run's id (a visible run, else 404)", schema_extra={"minimum": 1})
]


@get(
    "/admin/t/{tenant:int}/dashboard",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="Tenant activity summary: active runs, then the most recent completed ones",
    description=f"Up to {DASHBOARD_ACTIVE} active runs, then the {DASHBOARD_RECENT} most recent completed runs "
    "of the tenant, each ordered by `created_at desc, id desc`.",
    tags=TAGS,
)
async def tenant_dashboard(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, tenant: TenantPath
) -> TenantActivityOperationsSummary:
    seen = await service.visibility(caller, _runtime(request))
    seen.tenant(tenant)
    base = seen.select().where(OperationRun.tenant_id == tenant)
    order = (OperationRun.created_at.desc(), OperationRun.id.desc())
    active = (
        base.where(OperationRun.status.in_(("queued", "running"))).order_by(*order).limit(DASHBOARD_ACTIVE)
    )
    recent = base.where(OperationRun.status == "completed").order_by(*order).limit(DASHBOARD_RECENT)
    runs = [*(await session.execute(active)).scalars(), *(await session.execute(recent)).scalars()]
    now, thresholds = service.now_utc(), _thresholds(request)
    items = [
        service.surface_item(r, service.projection(r, now, thresholds), seen, _detail_url(request, r.id))
        for r in runs
    ]
    return TenantActivityOperationsSummary(tenant_id=tenant, items=items)


@get(
    "/admin/t/{tenant:int}/operations/progress",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="Tenant progress overlay: the visible active runs, fresh and stale",
    description=f"`poll_interval` is `{POLL_INTERVAL}` while any visible run is active, else null. "
    + STREAM_FORM,
    tags=TAGS,
)
async def tenant_progress(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, tenant: TenantPath
) -> TenantOperationProgressOverlay:
    seen = await service.visibility(caller, _runtime(request))
    seen.tenant(tenant)
    if wants_stream(request):
        return await stream_of(request, caller, [tenant], lambda db: _progress(request, db, seen, tenant))
    return await _progress(request, session, seen, tenant)


tenant_progress.opt["vary"] = ("Accept",)  # the JSON answer or its event stream


async def _progress(
    request: Request[Any, Any, Any], session: AsyncSession, seen: Any, tenant: int
) -> TenantOperationProgressOverlay:
    stmt = (
        seen.select()
        .where(OperationRun.tenant_id == tenant, OperationRun.status.in_(("queued", "running")))
        .order_by(OperationRun.created_at.desc(), OperationRun.id.desc())
        .limit(OVERLAY_ITEMS)
        .options(*SURFACE_ONLY)
    )
    now, thresholds = service.now_utc(), _thresholds(request)
    projected = [(r, service.projection(r, now, thresholds)) for r in (await session.execute(stmt)).scalars()]
    items = [
        service.surface_item(r, p, seen, _detail_url(request, r.id))
        for r, p in projected
        if p.show_in_active_progress
    ]
    polling = any(p.keep_active_polling for _, p in projected)
    return TenantOperationProgressOverlay(
        tenant_id=tenant,
        has_visible_active_runs=bool(items),
        poll_interval=POLL_INTERVAL if polling else None,
        items=items,
    )


@get(
    "/admin/operations",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="Canonical operations list of the workspace",
    description=f"The {CANONICAL_ITEMS} most recent visible runs (`created_at desc, id desc`). `activeTab` "
    "`active` or `completed` narrows by status (any other tab shows all); `problemClass` filters on "
    "the derived problem class; a `tenant` outside the visible tenants is 404. " + STREAM_FORM,
    tags=TAGS,
)
async def canonical_list(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    caller: Caller,
    tenant: Annotated[
        int | None,
        Parameter(
            query="tenant",
            description="Tenant prefilter (integer id; a tenant that is not visible, or below 1, is 404)",
            schema_extra={"minimum": 1},
        ),
    ] = None,
    active_tab: Annotated[str | None, Parameter(query="activeTab")] = None,
    problem_class: ProblemClassFilter = None,
) -> OperationRunCollectionContract:
    seen = await service.visibility(caller, _runtime(request))
    if tenant is not None:
        seen.tenant(tenant)

    async def read(db: AsyncSession) -> OperationRunCollectionContract:
        return await _canonical(request, db, seen, tenant, active_tab, problem_class)

    if wants_stream(request):
        return await stream_of(request, caller, [tenant] if tenant is not None else list(seen.tenants), read)
    return await read(session)


canonical_list.opt["vary"] = ("Accept",)


async def _canonical(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    seen: Any,
    tenant: int | None,
    active_tab: str | None,
    problem_class: Any,
) -> OperationRunCollectionContract:
    stmt = seen.select()
    if tenant is not None:
        stmt = stmt.where(OperationRun.tenant_id == tenant)
    if active_tab in ACTIVE_TABS:
        stmt = stmt.where(OperationRun.status.in_(ACTIVE_TABS[active_tab]))
    now, thresholds = service.now_utc(), _thresholds(request)
    if problem_class is not None:
        stmt = stmt.where(queries.problem_class(problem_class, now, thresholds))
    stmt = stmt.order_by(OperationRun.created_at.desc(), OperationRun.id.desc()).limit(CANONICAL_ITEMS)
    items = [
        service.surface_item(r, service.projection(r, now, thresholds), seen, _detail_url(request, r.id))
        for r in (await session.execute(stmt)).scalars()
    ]
    return OperationRunCollectionContract(
        tenant_filter=tenant, active_tab=active_tab, problem_class=problem_class, items=items
    )


@get(
    "/admin/operations/{run:int}",
    **protected("orch:read", cache="poll", problems=(304, 404)),
    summary="Canonical run detail: the summary first, diagnostics after it",
    description="The canonical detail of a visible run: its active-state summary, then its diagnostics; an "
    "id that is not a visible run is 404.",
    tags=TAGS,
)
async def canonical_detail(
    request: Request[Any, Any, Any], session: AsyncSession, caller: Caller, run: RunPath
) -> OperationRunDetailContract:
    row, _ = await _load(request, session, caller, run)
    return service.detail_contract(row, service.projection(row, service.now_utc(), _thresholds(request), "detail"))


ROUTES = [list_operations, get_operation, tenant_dashboard, tenant_progress, canonical_list, canonical_detail]

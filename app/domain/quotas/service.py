"""Quotas: queries within the caller's tenant (quotas belong to the tenant, not to a project)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import FieldError, Problem, not_found
from app.core.views import by_name
from app.domain.jobs.schemas import NOT_WAITING, Waiting
from app.domain.quotas import rules
from app.domain.quotas.schemas import (
    QuotaCreate,
    QuotaPage,
    QuotaReplace,
    QuotaSummary,
    QuotaTotals,
    QuotaUsage,
    QuotaView,
)
from app.sanitize import sanitize
from app.storage import job_counts
from app.storage.models import Quota
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((Quota.job_type, Quota.quota_id))
ACTIVE_JOB_STATUSES = ("leased", "running", "cancel_requested")  # a slot is held until the job stops
QUEUED_JOB_STATUSES = ("pending", "scheduled")


view = by_name(QuotaView)  # every field is the quota's attribute of its name


def _list(present: frozenset[str]):  # type: ignore[no-untyped-def]
    stmt = select(Quota).where(Quota.tenant_id == bindparam("tenant"))
    return where_present(stmt, present, (("jobType", Quota.job_type), ("paused", Quota.paused)))


LIST = PageQuery(_list, ORDER)


async def list_quotas(
    session: AsyncSession,
    caller: Caller,
    codec: CursorCodec,
    *,
    job_type: str | None,
    paused: bool | None,
    limit: int,
    token: str | None,
) -> QuotaPage:
    values = {"tenant": caller.tenant_id, "jobType": job_type, "paused": paused}
    scope = PageScope(
        caller.tenant.key, None, "quotas", (("jobType", job_type), ("paused", paused)), ORDER.name
    )
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return QuotaPage(items=[view(r) for r in rows], continuation_token=next_token)


async def load(session: AsyncSession, caller: Caller, quota_id: str, *, for_update: bool = False) -> Quota:
    stmt = select(Quota).where(Quota.tenant_id == caller.tenant_id, Quota.quota_id == quota_id)
    if for_update:
        stmt = stmt.with_for_update()
    quota = (await session.execute(stmt)).scalar_one_or_none()
    if quota is None:
        raise not_found("Quota")
    return quota


async def observed_by_job_type(
    session: AsyncSession, tenant_id: int, job_types: list[str], now: datetime, *, later: dict[str, int] | None = None
) -> dict[str, rules.Observed]:
    """Active, queued and recently started jobs per job type, in one grouped query. ``later``: the
    queued jobs not due yet per job type (every type with queued jobs), when the caller has them."""
    if not job_types:
        return {}
    hour_ago, minute_ago = now - timedelta(hours=1), now - timedelta(minutes=1)
    # Active and queued from the maintained counters; the queued jobs not due yet and the starts of
    # the last hour from their indexes. A job type with no live job and no recent start is left out.
    live: dict[str, dict[str, int]] = {}
    for job_type, status, count in await job_counts.by_type_and_status(
        session, tenant_id, job_types=job_types, statuses=ACTIVE_JOB_STATUSES + QUEUED_JOB_STATUSES
    ):
        live.setdefault(job_type, {})[status] = count
    if later is None:
        later = await job_counts.not_due(session, tenant_id, list(live), QUEUED_JOB_STATUSES, now) if live else {}
    started = await job_counts.started_since(session, tenant_id, job_types, hour_ago, minute_ago)
    observed: dict[str, rules.Observed] = {}
    for job_type in sorted(live.keys() | started.keys()):
        counts = live.get(job_type, {})
        hour, minute = started.get(job_type, (0, 0))
        observed[job_type] = rules.Observed(
            sum(counts.get(s, 0) for s in ACTIVE_JOB_STATUSES),
            sum(counts.get(s, 0) for s in QUEUED_JOB_STATUSES) - later.get(job_type, 0),  # due, waiting
            hour,
            minute,
        )
    return observed


async def summary(
    session: AsyncSession, caller: Caller, now: datetime | None = None, *, waiting: dict[str, Waiting] | None = None
) -> QuotaSummary:
    """``waiting``: the tenant's waiting jobs per type (``app/domain/jobs/service.waiting_per_type``)."""
    now = now or datetime.now(UTC)
    quotas = list(
        (
            await session.execute(
                select(Quota)
                .where(Quota.tenant_id == caller.tenant_id)
                .order_by(Quota.job_type, Quota.quota_id)
            )
        ).scalars()
    )
    observed = await observed_by_job_type(session, caller.tenant_id, [q.job_type for q in quotas], now)
    items: list[QuotaUsage] = []
    for quota in quotas:
        limits = rules.Limits(quota.max_active, quota.max_per_hour, quota.burst, quota.paused)
        seen = observed.get(quota.job_type, rules.Observed(0, 0, 0, 0))
        items.append(
            QuotaUsage(
                quota_id=quota.quota_id,
                job_type=quota.job_type,
                max_active=quota.max_active,
                max_per_hour=quota.max_per_hour,
                burst=quota.burst,
                paused=quota.paused,
                active=seen.active,
                queued=seen.queued,
                throttled=rules.throttled(limits, seen),
                dispatched_last_hour=seen.dispatched_last_hour,
                utilisation=rules.utilisation(limits, seen),
                backpressure=rules.backpressure(limits, seen),  # type: ignore[arg-type]
                waiting=(waiting or {}).get(quota.job_type, NOT_WAITING),
            )
        )
    totals = QuotaTotals(
        quotas=len(items),
        paused=sum(i.paused for i in items),
        active=sum(i.active for i in items),
        queued=sum(i.queued for i in items),
        throttled=sum(i.throttled for i in items),
        dispatched_last_hour=sum(i.dispatched_last_hour for i in items),
    )
    return QuotaSummary(items=items, totals=totals)


# -- changes ------------------------------------------------------------------------------------


def _check_burst(max_per_hour: int, burst: int) -> None:
    """The one cross-field rule the payload types cannot state: ``burst <= maxPerHour``."""
    if burst > max_per_hour:
        raise Problem(
            400,
            "validation_failed",
            f"The request is invalid: burst: must be at most maxPerHour ({max_per_hour}).",
            errors=[FieldError(field="burst", message=f"must be at most maxPerHour ({max_per_hour})")],
        )


def _quota_exists(job_type: str) -> Problem:
    return Problem(409, "quota_exists", f"The tenant already has a quota for jobType {job_type!r}.")


async def create_quota(session: AsyncSession, caller: Caller, data: QuotaCreate) -> Quota:
    _check_burst(data.max_per_hour, data.burst)
    now = datetime.now(UTC)
    quota = Quota(
        tenant_id=caller.tenant_id,
        quota_id=str(uuid.uuid4()),
        job_type=data.job_type,
        max_active=data.max_active,
        max_per_hour=data.max_per_hour,
        burst=data.burst,
        paused=False,
        created_at=now,
        updated_at=now,
    )
    # A concurrent create of the same jobType waits on the unique constraint
    # (uq_quotas_tenant_job_type) and fails here once the first commits: a 409, never a second row.
    try:
        async with session.begin_nested():
            session.add(quota)
            await session.flush()
    except IntegrityError:
        raise _quota_exists(data.job_type) from None
    return quota


async def replace_quota(session: AsyncSession, quota: Quota, data: QuotaReplace) -> Quota:
    if data.job_type is not None and data.job_type != quota.job_type:
        raise Problem(
            409,
            "job_type_immutable",
            "A quota's jobType cannot change; delete the quota and create one for the other jobType.",
        )
    _check_burst(data.max_per_hour, data.burst)
    quota.max_active = data.max_active
    quota.max_per_hour = data.max_per_hour
    quota.burst = data.burst
    quota.updated_at = datetime.now(UTC)
    await session.flush()
    return quota


async def delete_quota(session: AsyncSession, quota: Quota) -> None:
    await session.execute(
        delete(Quota).where(Quota.tenant_id == quota.tenant_id, Quota.quota_id == quota.quota_id)
    )


def pause(quota: Quota, caller: Caller) -> bool:
    """Pause; pausing a paused quota changes nothing (it keeps who paused it, why and when)."""
    if quota.paused:
        return False
    now = datetime.now(UTC)
    quota.paused = True
    quota.paused_by = caller.subject[:256]
    quota.paused_reason = sanitize(caller.reason)[:512] if caller.reason else None
    quota.paused_at = now
    quota.updated_at = now
    return True


def resume(quota: Quota) -> bool:
    """Resume and clear who/why/when; resuming a running quota changes nothing."""
    if not quota.paused:
        return False
    quota.paused = False
    quota.paused_by = None
    quota.paused_reason = None
    quota.paused_at = None
    quota.updated_at = datetime.now(UTC)
    return True

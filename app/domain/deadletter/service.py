"""Dead-letter entries: queries within the caller's tenant and project."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from sqlalchemy import BigInteger, bindparam, cast, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.core.caller import Caller
from app.core.cursors import CursorCodec, PageScope
from app.core.problems import not_found
from app.domain.deadletter.schemas import (
    CategoryCount,
    DeadLetterStats,
    EntryPage,
    EntryView,
    ErrorCluster,
    StatusTotals,
)
from app.instants import iso_or_none
from app.storage.models import DeadLetterCluster as Clusters
from app.storage.models import DeadLetterCount as Counts
from app.storage.models import DeadLetterEntry as Entry
from app.storage.models import Job
from app.storage.pages import Keyset, PageQuery, fetch_page, where_present

ORDER = Keyset((Entry.dead_lettered_at, Entry.entry_id), descending=True)
TOP_CLUSTERS = 10
SAMPLES = 3


# Every field but replayJobIds is the entry's attribute of its name.
_ENTRY_FIELDS = attrgetter(*(f for f in EntryView.__struct_fields__ if f != "replay_job_ids"))


def view(entry: Any, replay_job_ids: list[str]) -> EntryView:
    """The view of an entry (or a list page's row of its columns) and its replay jobs, oldest first."""
    return EntryView(*_ENTRY_FIELDS(entry), replay_job_ids=replay_job_ids)


async def replay_job_ids(session: AsyncSession, tenant_id: int, entry_ids: Sequence[str]) -> dict[str, list[str]]:
    """The jobs created by replaying each entry (``jobs.replay_of_entry_id``), oldest first: one
    range scan of ``ix_jobs_replay_of_entry`` per entry."""
    found: dict[str, list[str]] = {entry_id: [] for entry_id in entry_ids}
    if not found:
        return found
    rows = await session.execute(
        select(Job.replay_of_entry_id, Job.job_id)
        .where(Job.tenant_id == tenant_id, Job.replay_of_entry_id.in_(list(found)))
        .order_by(Job.replay_of_entry_id, Job.created_at, Job.job_id)
    )
    for entry_id, job_id in rows:
        found[entry_id].append(job_id)
    return found


async def views(session: AsyncSession, tenant_id: int, entries: Sequence[Any]) -> list[EntryView]:
    """Every place that renders entries renders them through here (or :func:`view_one`)."""
    jobs = await replay_job_ids(session, tenant_id, [e.entry_id for e in entries])
    return [view(e, jobs[e.entry_id]) for e in entries]


async def view_one(session: AsyncSession, entry: Entry) -> EntryView:
    return (await views(session, entry.tenant_id, [entry]))[0]


def visible(caller: Caller, *columns: Any):  # type: ignore[no-untyped-def]
    stmt = (select(*columns) if columns else select(Entry)).where(Entry.tenant_id == caller.tenant_id)
    if caller.project is not None:
        stmt = stmt.where(Entry.project_id == caller.project)
    return stmt


class EntryFilter:
    """The filters shared by the entry list and the replay-by-filter action."""

    COLUMNS = {
        "jobType": Entry.job_type,
        "category": Entry.category,
        "errorCode": Entry.error_code,
        "sourceId": Entry.source_id,
        "status": Entry.status,
    }

    def __init__(self, *, dead_lettered_from: datetime | None = None, dead_lettered_to: datetime | None = None,
                 **equals: str | None) -> None:
        unknown = set(equals) - set(self.COLUMNS) - {"jobId"}
        if unknown:
            raise ValueError(f"unknown filters: {unknown}")
        self.equals = {k: v for k, v in equals.items() if v is not None}
        self.dead_lettered_from = dead_lettered_from
        self.dead_lettered_to = dead_lettered_to

    @classmethod
    def narrowed(cls, stmt, present: frozenset[str], value: Callable[[str], Any] = bindparam):  # type: ignore[no-untyped-def]
        """``stmt`` with the condition of each filter named in ``present``, comparing with
        ``value(name)``: a bound parameter of that name unless given."""
        stmt = where_present(stmt, present, cls.COLUMNS.items(), within=Entry.dead_lettered_at, value=value)
        if "jobId" in present:  # the entry list only: it compares the tenant too, ``value("tenant")``
            stmt = stmt.where(Entry.entry_id.in_(_entries_of_job(value("tenant"), value("jobId"))))
        return stmt

    def values(self) -> dict[str, Any]:
        return {**self.equals, "from": self.dead_lettered_from, "to": self.dead_lettered_to}

    def apply(self, stmt):  # type: ignore[no-untyped-def]
        values = self.values()
        return self.narrowed(stmt, frozenset(k for k, v in values.items() if v is not None), values.__getitem__)

    def binding(self) -> tuple[tuple[str, Any], ...]:
        times = (("from", iso_or_none(self.dead_lettered_from)), ("to", iso_or_none(self.dead_lettered_to)))
        return (*sorted(self.equals.items()), *times)



def _entries_of_job(tenant: Any, job_id: Any):  # type: ignore[no-untyped-def]
    """The entry of a job: the job that dead-lettered, or a replay job of the entry. An uncorrelated
    union of two unique-index lookups, so the list joins at most two entries by primary key (an
    ``OR`` of the two conditions made PostgreSQL filter every entry of the tenant)."""
    other = aliased(Entry)
    return union_all(
        select(other.entry_id).where(other.tenant_id == tenant, other.job_id == job_id),
        select(Job.replay_of_entry_id).where(Job.tenant_id == tenant, Job.job_id == job_id),
    )


def _visible_bound(present: frozenset[str], *columns: Any):  # type: ignore[no-untyped-def]
    """:func:`visible` with the tenant and project as bound parameters (for a :class:`PageQuery`)."""
    stmt = (select(*columns) if columns else select(Entry)).where(Entry.tenant_id == bindparam("tenant"))
    if "project" in present:
        stmt = stmt.where(Entry.project_id == bindparam("project"))
    return stmt


LIST = PageQuery(lambda present: EntryFilter.narrowed(_visible_bound(present), present), ORDER)


async def list_entries(
    session: AsyncSession, caller: Caller, codec: CursorCodec, *, filters: EntryFilter, limit: int, token: str | None
) -> EntryPage:
    values = {**filters.values(), "tenant": caller.tenant_id, "project": caller.project}
    scope = PageScope(caller.tenant.key, caller.project, "deadletter", filters.binding(), ORDER.name)
    rows, next_token = await fetch_page(session, LIST, values, limit=limit, token=token, scope=scope, codec=codec)
    return EntryPage(items=await views(session, caller.tenant_id, rows), continuation_token=next_token)


async def load(session: AsyncSession, caller: Caller, entry_id: str) -> Entry:
    entry = (await session.execute(visible(caller).where(Entry.entry_id == entry_id))).scalar_one_or_none()
    if entry is None:
        raise not_found("Dead-letter entry")
    return entry


def _aggregate(table, caller: Caller, *columns: Any):  # type: ignore[no-untyped-def]
    """Rows of a maintained aggregate (migration 0004) within the caller's tenant and project."""
    stmt = select(*columns).where(table.tenant_id == caller.tenant_id)
    if caller.project is not None:
        stmt = stmt.where(table.project_key == caller.project)
    return stmt


def _total(column):  # type: ignore[no-untyped-def]
    return cast(func.sum(column), BigInteger)


def now_utc() -> datetime:
    return datetime.now(UTC)


async def stats(session: AsyncSession, caller: Caller, now: datetime | None = None) -> DeadLetterStats:
    now = now or now_utc()
    # Totals by status and by category: the maintained counts (rows per project, category, status
    # and writer stripe), kept exact by triggers on the entries.
    by_status = StatusTotals()
    per_status: dict[str, int] = {}
    per_category: dict[str, list[int]] = {}
    for category, status, count in await session.execute(
        _aggregate(Counts, caller, Counts.category, Counts.status, _total(Counts.entries))
        .group_by(Counts.category, Counts.status)
        .having(func.sum(Counts.entries) != 0)
        .order_by(Counts.category, Counts.status)
    ):
        count = int(count)
        per_status[status] = per_status.get(status, 0) + count
        totals = per_category.setdefault(category, [0, 0])
        totals[0] += count
        if status == "pending":
            totals[1] += count
    for status, count in per_status.items():
        setattr(by_status, status, count)
    categories = [
        CategoryCount(category=category, count=count, pending=pending)
        for category, (count, pending) in per_category.items()
    ]
    # An index seek on (tenant, status, deadLetteredAt).
    oldest = (
        await session.execute(visible(caller, func.min(Entry.dead_lettered_at)).where(Entry.status == "pending"))
    ).scalar_one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    # A range scan of (tenant, deadLetteredAt, entryId): the one read that grows with the inflow.
    inflow = (
        await session.execute(
            visible(caller, func.count()).where(Entry.dead_lettered_at >= now - timedelta(hours=24))
        )
    ).scalar_one()
    return DeadLetterStats(
        total=sum((by_status.pending, by_status.replaying, by_status.replayed, by_status.discarded)),
        by_status=by_status,
        by_category=categories,
        oldest_pending_at=oldest,
        oldest_pending_age_seconds=int((now - oldest).total_seconds()) if oldest is not None else None,
        inflow_last_24h=inflow,
        top_clusters=await _top_clusters(session, caller),
    )


async def _top_clusters(session: AsyncSession, caller: Caller) -> list[ErrorCluster]:
    """The ten largest (errorCode, template) groups, ties by template, with three sample ids.

    One statement, the same on PostgreSQL and on the embedded SQLite default (which has no
    ``LATERAL``): the groups (count, pending) are the maintained cluster rows (migration 0004)
    summed over projects and stripes; every other column is a correlated scalar subquery on the
    entries' index (tenant, errorCode, templateHash, deadLetteredAt, entryId), evaluated only for
    the groups that need it. The template is read from one entry of each group that can still make
    the top ten (the hash is derived from errorCode and template, so every entry of a group carries
    the same template); first and last seen of each of the ten groups are a forward and a backward
    seek of that index, and its three newest entries are three backward seeks (the k-th newest:
    ``LIMIT 1 OFFSET k``, at most three index rows each) rather than a ``LATERAL`` join.
    """
    groups = (
        _aggregate(
            Clusters,
            caller,
            Clusters.error_code,
            Clusters.template_hash,
            _total(Clusters.entries).label("n"),
            _total(Clusters.pending).label("pending"),
        )
        .group_by(Clusters.error_code, Clusters.template_hash)
        .having(func.sum(Clusters.entries) > 0)
        .cte("groups")
    )
    # The tenth largest count: no group below it can be in the top ten.
    cutoff = (
        select(groups.c.n).order_by(groups.c.n.desc()).offset(TOP_CLUSTERS - 1).limit(1)
        .correlate(None).scalar_subquery()
    )

    def in_group(group, *columns: Any):  # type: ignore[no-untyped-def]
        return visible(caller, *columns).where(
            Entry.error_code == group.c.error_code, Entry.template_hash == group.c.template_hash
        )

    template = in_group(groups, Entry.error_template).limit(1).scalar_subquery().label("template")
    top = (
        select(groups.c.error_code, groups.c.template_hash, groups.c.n, groups.c.pending, template)
        .where(groups.c.n >= func.coalesce(cutoff, 0))
        .order_by(groups.c.n.desc(), template.asc(), groups.c.error_code.asc())
        .limit(TOP_CLUSTERS)
        .subquery("top")
    )

    def newest(k: int):  # type: ignore[no-untyped-def]
        return (
            in_group(top, Entry.entry_id)
            .order_by(Entry.dead_lettered_at.desc(), Entry.entry_id.desc())
            .offset(k)
            .limit(1)
            .scalar_subquery()
            .label(f"sample{k}")
        )

    rows = await session.execute(
        select(
            top.c.error_code,
            top.c.template,
            top.c.n,
            top.c.pending,
            in_group(top, func.min(Entry.dead_lettered_at)).scalar_subquery().label("first"),
            in_group(top, func.max(Entry.dead_lettered_at)).scalar_subquery().label("last"),
            *(newest(k) for k in range(SAMPLES)),
        ).order_by(top.c.n.desc(), top.c.template.asc(), top.c.error_code.asc())
    )
    return [
        ErrorCluster(
            error_code=code,
            template=tmpl,
            count=int(n),
            pending=int(pending),
            sample_entry_ids=[entry_id for entry_id in samples if entry_id is not None],
            first_seen=_aware(first),
            last_seen=_aware(last),
        )
        for code, tmpl, n, pending, first, last, *samples in rows
    ]


def _aware(moment: datetime | None) -> datetime | None:
    """An aggregate over an instant column is not typed as one: SQLite answers naive UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment

"""The whole data model of the job engine's control plane (spec §5 and §7).

One declarative base; PostgreSQL is the production target, SQLite the embedded default.
Every tenant-owned table carries ``tenant_id`` first in its keys and indexes, because every
query the gateway runs is scoped to one tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE_RUN_STATUSES = ("queued", "running")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # A naive value (e.g. a query filter sent without an offset) is taken as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        # asyncpg decodes every timestamptz as an aware datetime in UTC (whatever the session's
        # TimeZone): nothing is left to convert, and a page's rows skip a call per instant.
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    external_id: Mapped[str] = mapped_column(String(36), unique=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = (
        Index("ix_sources_tenant_name", "tenant_id", "name", "source_id"),
        Index("ix_sources_tenant_project_name", "tenant_id", "project_id", "name", "source_id"),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    source_type: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_job_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    jobs_submitted: Mapped[int] = mapped_column(BigInteger, default=0)
    jobs_active: Mapped[int] = mapped_column(BigInteger, default=0)
    jobs_failed: Mapped[int] = mapped_column(BigInteger, default=0)


class Quota(Base):
    __tablename__ = "quotas"
    __table_args__ = (
        UniqueConstraint("tenant_id", "job_type", name="uq_quotas_tenant_job_type"),
        Index("ix_quotas_tenant_job_type", "tenant_id", "job_type", "quota_id"),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    quota_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(128))
    max_active: Mapped[int] = mapped_column(Integer)
    max_per_hour: Mapped[int] = mapped_column(Integer)
    burst: Mapped[int] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_by: Mapped[str | None] = mapped_column(String(256))
    paused_reason: Mapped[str | None] = mapped_column(String(512))
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "job_id"),
        Index("ix_jobs_tenant_status_type", "tenant_id", "status", "job_type"),
        Index("ix_jobs_pack_run", "tenant_id", "pack_run_id"),
        Index(
            "ix_jobs_due",
            "run_after",
            postgresql_where=text("status IN ('pending', 'scheduled')"),
            sqlite_where=text("status IN ('pending', 'scheduled')"),
        ),
        Index(
            "ix_jobs_dispatch_order",
            text("priority DESC"),
            "run_after",
            "job_id",
            postgresql_where=text("status IN ('pending', 'scheduled')"),
            sqlite_where=text("status IN ('pending', 'scheduled')"),
        ),
        Index(
            "ix_jobs_replay_of_entry",
            "tenant_id",
            "replay_of_entry_id",
            "created_at",
            "job_id",
            postgresql_where=text("replay_of_entry_id IS NOT NULL"),
            sqlite_where=text("replay_of_entry_id IS NOT NULL"),
        ),
        Index(
            "ix_jobs_leases",
            "lease_expires_at",
            postgresql_where=text("status IN ('leased', 'running', 'cancel_requested')"),
            sqlite_where=text("status IN ('leased', 'running', 'cancel_requested')"),
        ),
        Index(  # migration 0008: the quota summary's starts of the last hour
            "ix_jobs_tenant_started",
            "tenant_id",
            "started_at",
            postgresql_include=["job_type"],
            postgresql_where=text("started_at IS NOT NULL"),
            sqlite_where=text("started_at IS NOT NULL"),
        ),
        Index(  # migration 0008: the quota summary's queued jobs not due yet
            "ix_jobs_tenant_queued",
            "tenant_id",
            "run_after",
            postgresql_include=["job_type", "status"],
            postgresql_where=text("status IN ('pending', 'scheduled')"),
            sqlite_where=text("status IN ('pending', 'scheduled')"),
        ),
        Index(  # migration 0010: the head of each type's queue, per tenant (the summaries' waiting reasons)
            "ix_jobs_tenant_type_dispatch",
            "tenant_id",
            "job_type",
            text("priority DESC"),
            "run_after",
            "job_id",
            postgresql_include=["cancel_requested", "pack_run_id", "step_index", "source_id", "project_id"],
            postgresql_where=text("status IN ('pending', 'scheduled')"),
            sqlite_where=text("status IN ('pending', 'scheduled')"),
        ),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(64))
    job_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pack_run_id: Mapped[str | None] = mapped_column(String(64))
    step_index: Mapped[int | None] = mapped_column(Integer)
    replay_of_entry_id: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error_code: Mapped[str | None] = mapped_column(String(128))
    last_error_category: Mapped[str | None] = mapped_column(String(64))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeadLetterEntry(Base):
    __tablename__ = "dead_letter_entries"
    __table_args__ = (
        Index("ix_dle_tenant_dead_lettered", "tenant_id", "dead_lettered_at", "entry_id"),
        Index(  # migration 0008: the summary's first/last instants per group
            "ix_dle_tenant_category_code",
            "tenant_id",
            "category",
            "error_code",
            "dead_lettered_at",
            postgresql_include=["project_id"],
        ),
        Index("ix_dle_tenant_status", "tenant_id", "status", "dead_lettered_at"),
        Index("ix_dle_tenant_template", "tenant_id", "error_code", "template_hash"),
        Index("ix_dle_tenant_category_status", "tenant_id", "category", "status"),
        Index(
            "ix_dle_tenant_cluster",
            "tenant_id",
            "error_code",
            "template_hash",
            "dead_lettered_at",
            "entry_id",
            postgresql_include=["status"],
        ),
        UniqueConstraint("tenant_id", "job_id", name="uq_dle_tenant_job"),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64))
    job_type: Mapped[str] = mapped_column(String(128))
    source_id: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    error_code: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    error_template: Mapped[str] = mapped_column(Text)
    template_hash: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    attempts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    last_replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_replay_job_id: Mapped[str | None] = mapped_column(String(64))
    first_dead_lettered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dead_lettered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PackRun(Base):
    __tablename__ = "pack_runs"
    __table_args__ = (
        Index("ix_pack_runs_tenant_created", "tenant_id", "created_at", "pack_run_id"),
        Index("ix_pack_runs_retry_of", "tenant_id", "retry_of"),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    pack_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    source_id: Mapped[str | None] = mapped_column(String(64))
    pack_name: Mapped[str] = mapped_column(String(200))
    pack_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    retry_of: Mapped[str | None] = mapped_column(String(64))
    operation_run_id: Mapped[int | None] = mapped_column(BigInteger)
    steps_total: Mapped[int] = mapped_column(Integer, default=0)
    steps_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    steps_failed: Mapped[int] = mapped_column(Integer, default=0)
    initiated_by: Mapped[str | None] = mapped_column(String(256))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OperationRun(Base):
    """The canonical ledger of asynchronous operations (seed 003)."""

    __tablename__ = "operation_runs"
    __table_args__ = (
        Index(
            "uq_operation_runs_tenant_active_identity",
            "tenant_id",
            "run_identity_hash",
            unique=True,
            postgresql_where=text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"),
            sqlite_where=text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"),
        ),
        Index(
            "uq_operation_runs_workspace_active_identity",
            "workspace_id",
            "run_identity_hash",
            unique=True,
            postgresql_where=text("tenant_id IS NULL AND status IN ('queued', 'running')"),
            sqlite_where=text("tenant_id IS NULL AND status IN ('queued', 'running')"),
        ),
        Index("ix_operation_runs_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_operation_runs_tenant_created", "tenant_id", "created_at", "id"),
        Index(
            "ix_operation_runs_active",
            "tenant_id",
            "status",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    project_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(256))
    initiator_name: Mapped[str | None] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(24))
    run_identity_hash: Mapped[str] = mapped_column(String(64))
    summary_counts: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    failure_summary: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    context: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    operator_message: Mapped[str | None] = mapped_column(String(512))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconciliation: Mapped[dict[str, Any] | None] = mapped_column(Json)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditRecord(Base):
    """Append-only; PostgreSQL refuses UPDATE, DELETE and TRUNCATE (see the migration)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_tenant_time", "tenant_id", "occurred_at", "id"),
        Index("ix_audit_tenant_action", "tenant_id", "action", "occurred_at", "id"),
        Index("ix_audit_tenant_target", "tenant_id", "target", "occurred_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    project_id: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    client_id: Mapped[str | None] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(256))
    target: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(String(512))
    ticket: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    result_status: Mapped[int] = mapped_column(Integer)
    result_code: Mapped[str | None] = mapped_column(String(64))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(256), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_flight | done
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(Json)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class DeadLetterCount(Base):
    """Entries per (tenant, project, category, status), in stripes summed by readers; maintained by
    triggers (migration 0004, which explains the stripes). ``project_key`` is the project id, or ''."""

    __tablename__ = "dead_letter_counts"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    project_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    entries: Mapped[int] = mapped_column(BigInteger)


class DeadLetterCluster(Base):
    """Entries and pending entries per (tenant, project, errorCode, templateHash), in stripes summed
    by readers; maintained by triggers (migration 0004)."""

    __tablename__ = "dead_letter_clusters"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    project_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    error_code: Mapped[str] = mapped_column(String(128), primary_key=True)
    template_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    entries: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[int] = mapped_column(BigInteger)


class Worker(Base):
    """A worker process (tenant-independent): registered at start, seen at every heartbeat, marked
    gone at a graceful stop. It counts as live while ``expires_at`` (last seen + three of its
    heartbeat periods) is in the future. ``tenant_ids`` null: it claims every tenant's jobs.
    ``lapsed_at``: when the reconciler found its heartbeat overdue (cleared by a heartbeat); the
    change feed announces it (migration 0013)."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_expires", "expires_at"),)

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    job_types: Mapped[list[str]] = mapped_column(Json)
    tenant_ids: Mapped[list[int] | None] = mapped_column(Json)
    concurrency: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer)
    heartbeat_seconds: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lapsed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FeedVersion(Base):
    """A tenant's sequence (kind ``''``) and the version of each kind of its collections: the
    sequence of the kind's latest change. Written only by the triggers of migration 0011."""

    __tablename__ = "feed_versions"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class FeedEvent(Base):
    """One changed object of one statement, numbered by the tenant's sequence (migration 0011);
    ``at`` is epoch milliseconds. Kept for the feed's retention window."""

    __tablename__ = "feed_events"
    __table_args__ = (Index("ix_feed_events_at", "at"),)

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(BigInteger)

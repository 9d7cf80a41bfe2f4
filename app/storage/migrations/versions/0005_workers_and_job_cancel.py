"""Workers registry, two-phase job cancel.

- ``workers``: one row per worker process (tenant-independent): what it serves, its load, when it
  was last seen; ``expires_at`` (last seen + three heartbeat periods of that worker) says when it
  counts as gone.
- ``jobs.cancel_requested_at``: when a leased or running job was asked to stop (status
  ``cancel_requested``); the reconciler forces such a job ``canceled`` after the grace period.
- ``ix_jobs_leases`` covers ``cancel_requested`` too (such a job still holds its lease).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_HELD_BEFORE = "status IN ('leased', 'running')"
_HELD = "status IN ('leased', 'running', 'cancel_requested')"


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "job_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "tenant_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("heartbeat_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_workers_expires", "workers", ["expires_at"])
    op.add_column("jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("ix_jobs_leases", table_name="jobs")
    op.create_index(
        "ix_jobs_leases",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text(_HELD),
        sqlite_where=sa.text(_HELD),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_leases", table_name="jobs")
    op.create_index(
        "ix_jobs_leases",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text(_HELD_BEFORE),
        sqlite_where=sa.text(_HELD_BEFORE),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cancel_requested_at")
    op.drop_index("ix_workers_expires", table_name="workers")
    op.drop_table("workers")

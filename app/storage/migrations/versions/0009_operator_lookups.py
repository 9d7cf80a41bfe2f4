"""What operators find and follow: dry runs marked in the audit log, and the indexes of the new lookups.

- ``audit_log.dry_run`` (boolean, false for every existing row): the row records a dry run (a batch
  or by-filter action with ``dryRun: true``), which changed nothing. Adding a column with a
  constant default rewrites no row (PostgreSQL 11+ and SQLite), so the append-only guard of the
  audit log is not touched.
- ``ix_audit_tenant_action`` (tenant_id, action, occurred_at, id) and ``ix_audit_tenant_target``
  (tenant_id, target, occurred_at, id): the audit list filtered by action or by target, in its
  order, without reading the tenant's whole log.
- ``ix_jobs_replay_of_entry`` (tenant_id, replay_of_entry_id, created_at, job_id), only over replay
  jobs: an entry's ``replayJobIds``, oldest first, for the entries of a page in one range scan each.

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_REPLAY_JOBS = "replay_of_entry_id IS NOT NULL"


def upgrade() -> None:
    op.add_column(
        "audit_log", sa.Column("dry_run", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index("ix_audit_tenant_action", "audit_log", ["tenant_id", "action", "occurred_at", "id"])
    op.create_index("ix_audit_tenant_target", "audit_log", ["tenant_id", "target", "occurred_at", "id"])
    op.create_index(
        "ix_jobs_replay_of_entry",
        "jobs",
        ["tenant_id", "replay_of_entry_id", "created_at", "job_id"],
        postgresql_where=sa.text(_REPLAY_JOBS),
        sqlite_where=sa.text(_REPLAY_JOBS),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_replay_of_entry", table_name="jobs")
    op.drop_index("ix_audit_tenant_target", table_name="audit_log")
    op.drop_index("ix_audit_tenant_action", table_name="audit_log")
    # Plain ALTER TABLE on both (SQLite 3.35+): a batch copy would recreate the table and lose
    # its append-only triggers.
    op.execute("ALTER TABLE audit_log DROP COLUMN dry_run")

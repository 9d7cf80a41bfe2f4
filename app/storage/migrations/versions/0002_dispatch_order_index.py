"""Index of waiting jobs in dispatch order (priority desc, run_after, job_id).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_WAITING = "status IN ('pending', 'scheduled')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_dispatch_order",
        "jobs",
        [sa.text("priority DESC"), "run_after", "job_id"],
        postgresql_where=sa.text(_WAITING),
        sqlite_where=sa.text(_WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_dispatch_order", table_name="jobs")

"""The head of each job type's queue, per tenant, in dispatch order.

- ``ix_jobs_tenant_type_dispatch`` (tenant_id, job_type, priority DESC, run_after, job_id), only
  over waiting jobs (``pending``, ``scheduled``): the job and quota summaries read why the first
  waiting jobs of each type wait (``app/domain/jobs/why.py``, ``waiting_by_type``) from a bounded
  range of it, whatever the number of waiting jobs. On PostgreSQL it carries the columns those
  reads check (cancel requested, pack run and step, source, project), so the range is read from
  the index alone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_WAITING = "status IN ('pending', 'scheduled')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_tenant_type_dispatch",
        "jobs",
        ["tenant_id", "job_type", sa.text("priority DESC"), "run_after", "job_id"],
        postgresql_include=["cancel_requested", "pack_run_id", "step_index", "source_id", "project_id"],
        postgresql_where=sa.text(_WAITING),
        sqlite_where=sa.text(_WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_type_dispatch", table_name="jobs")

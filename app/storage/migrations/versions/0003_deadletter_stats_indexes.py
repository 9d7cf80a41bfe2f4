"""Covering indexes for the dead-letter stats (index-only scans of one tenant's entries).

- ``ix_dle_tenant_category_status`` (tenant_id, category, status): totals by status and by category
  in one grouped pass.
- ``ix_dle_tenant_cluster`` (tenant_id, error_code, template_hash, dead_lettered_at, entry_id)
  INCLUDE (status): the error clusters (count, pending, first/last seen) in index order, and the
  newest sample entries of a cluster by a backward range scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_dle_tenant_category_status", "dead_letter_entries", ["tenant_id", "category", "status"]
    )
    op.create_index(
        "ix_dle_tenant_cluster",
        "dead_letter_entries",
        ["tenant_id", "error_code", "template_hash", "dead_lettered_at", "entry_id"],
        postgresql_include=["status"],
    )


def downgrade() -> None:
    op.drop_index("ix_dle_tenant_cluster", table_name="dead_letter_entries")
    op.drop_index("ix_dle_tenant_category_status", table_name="dead_letter_entries")

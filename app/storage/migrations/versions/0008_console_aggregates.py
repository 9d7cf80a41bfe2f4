"""Maintained aggregates for the console summaries, kept exact by triggers like those of 0004.

- ``dead_letter_groups`` (tenant_id, category, error_code, project_key, stripe) -> entries, pending:
  the dead-letter summary's groups, read in (category, errorCode) order; the first and last instants
  of the groups of one page are seeks of ``ix_dle_tenant_category_code``, which now ends in
  ``dead_lettered_at`` (and carries ``project_id`` on PostgreSQL for project-scoped readers).
- ``job_counts`` (tenant_id, job_type, status, project_key, source_id, stripe) -> jobs: the job
  summary and the quota summary's active and queued counts (``ix_jobs_tenant_started`` gives the
  quota summary its starts of the last hour, ``ix_jobs_tenant_queued`` its queued jobs not due
  yet, without reading the other jobs).

The triggers copy the status (and every other key column) from the rows: whatever value a job's
status takes, it is counted under that value, so a new status needs no change here.

Unlike 0004's, these PostgreSQL triggers do not delete the rows a statement brings to zero (the
fold does; readers leave out keys that sum to zero), and an update that changes none of the
counted columns returns after one comparison: measured inside the server, the trigger costs about
36 µs on a heartbeat-like update instead of 130 µs, and 140 µs instead of 210 µs on a status
change (``docs/benchmarks.md``).

Same mechanics as 0004 (stripes by backend pid, statement triggers with transition tables on
PostgreSQL, row triggers and one stripe on SQLite); the stripes are folded by the workers' fold
step (``app/storage/aggregates.py``), and ``jobgate db check-aggregates`` compares every aggregate
with a grouping of its rows.

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-06
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

STRIPES = 64

# table -> (source table, key columns as (name, expression over a source row), values as (name, +1 expression))
_AGGREGATES = {
    "dead_letter_groups": (
        "dead_letter_entries",
        (("tenant_id", "tenant_id"), ("category", "category"), ("error_code", "error_code"),
         ("project_key", "coalesce(project_id, '')")),
        (("entries", "1"), ("pending", "CASE WHEN status = 'pending' THEN 1 ELSE 0 END")),
        "tenant_id, project_id, category, error_code, status",
    ),
    "job_counts": (
        "jobs",
        (("tenant_id", "tenant_id"), ("job_type", "job_type"), ("status", "status"),
         ("project_key", "coalesce(project_id, '')"), ("source_id", "source_id")),
        (("jobs", "1"),),
        "tenant_id, project_id, source_id, job_type, status",
    ),
}


def _pg_function(table: str, event: str) -> str:
    _, keys, values, _ = _AGGREGATES[table]
    key_names = ", ".join(k for k, _ in keys)
    row = ", ".join(f"{expr} AS {name}" for name, expr in keys)
    if "status" not in dict(keys):
        row += ", status"  # what the values are computed from
    changes = {
        "insert": f"SELECT {row}, 1 AS d FROM new_rows",
        "delete": f"SELECT {row}, -1 AS d FROM old_rows",
        # Versions whose aggregate columns did not change cancel out (multiset difference), so
        # updates of other columns (heartbeats, leases) cost one empty comparison.
        "update": (
            f"SELECT *, -1 AS d FROM (SELECT {row} FROM old_rows EXCEPT ALL SELECT {row} FROM new_rows) r "
            f"UNION ALL "
            f"SELECT *, 1 AS d FROM (SELECT {row} FROM new_rows EXCEPT ALL SELECT {row} FROM old_rows) a"
        ),
    }[event]
    sums = ", ".join(f"sum(d * ({expr}))" for _, expr in values)
    nonzero = " OR ".join(f"sum(d * ({expr})) <> 0" for _, expr in values)
    value_names = ", ".join(v for v, _ in values)
    add = ", ".join(f"{v} = c.{v} + excluded.{v}" for v, _ in values)
    # An update that changes no aggregate column (a heartbeat, a lease, a message) stops at one
    # comparison of the old and new rows.
    unchanged = (
        f"    PERFORM FROM (SELECT {row} FROM old_rows EXCEPT ALL SELECT {row} FROM new_rows) changed LIMIT 1;\n"
        f"    IF NOT FOUND THEN RETURN NULL; END IF;\n"
        if event == "update"
        else ""
    )
    # Rows of a stripe brought to zero are left for the fold (which deletes them): a DELETE here
    # would cost every write a third of its trigger time; readers skip keys that sum to zero.
    return f"""
CREATE FUNCTION {table}_{event}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_stripe smallint := pg_backend_pid() % {STRIPES};
BEGIN
{unchanged}    INSERT INTO {table} AS c ({key_names}, stripe, {value_names})
    SELECT {key_names}, my_stripe, {sums}
      FROM ({changes}) changes
     GROUP BY {key_names} HAVING {nonzero}
     ORDER BY {key_names}
    ON CONFLICT ({key_names}, stripe) DO UPDATE SET {add};
    RETURN NULL;
END
$$
"""


def _pg_trigger(table: str, event: str) -> str:
    source = _AGGREGATES[table][0]
    refs = {
        "insert": "NEW TABLE AS new_rows",
        "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "delete": "OLD TABLE AS old_rows",
    }[event]
    return (
        f"CREATE TRIGGER {table}_{event} AFTER {event.upper()} ON {source} "
        f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION {table}_{event}()"
    )


def _sqlite_triggers(table: str) -> tuple[str, ...]:
    source, keys, values, watched = _AGGREGATES[table]
    key_names = ", ".join(k for k, _ in keys)
    value_names = ", ".join(v for v, _ in values)

    def over(row: str, expr: str) -> str:  # the expression over the trigger's OLD or NEW row
        return re.sub(r"\b(tenant_id|project_id|category|error_code|status|job_type|source_id)\b", rf"{row}.\1", expr)

    add = (
        f"INSERT INTO {table} ({key_names}, stripe, {value_names}) "
        f"VALUES ({', '.join(over('NEW', e) for _, e in keys)}, 0, {', '.join(over('NEW', e) for _, e in values)}) "
        f"ON CONFLICT ({key_names}, stripe) DO UPDATE SET "
        + ", ".join(f"{v} = {v} + excluded.{v}" for v, _ in values)
        + ";"
    )
    match = " AND ".join(f"{k} = {over('OLD', e)}" for k, e in keys) + " AND stripe = 0"
    remove = (
        f"UPDATE {table} SET " + ", ".join(f"{v} = {v} - ({over('OLD', e)})" for v, e in values)
        + f" WHERE {match}; "
        f"DELETE FROM {table} WHERE {match} AND " + " AND ".join(f"{v} = 0" for v, _ in values) + ";"
    )
    return (
        f"CREATE TRIGGER {table}_insert AFTER INSERT ON {source} BEGIN {add} END",
        f"CREATE TRIGGER {table}_update AFTER UPDATE OF {watched} ON {source} BEGIN {remove} {add} END",
        f"CREATE TRIGGER {table}_delete AFTER DELETE ON {source} BEGIN {remove} END",
    )


def _backfill(table: str) -> str:
    source, keys, values, _ = _AGGREGATES[table]
    return (
        f"INSERT INTO {table} ({', '.join(k for k, _ in keys)}, stripe, {', '.join(v for v, _ in values)}) "
        f"SELECT {', '.join(e for _, e in keys)}, 0, {', '.join(f'sum({e})' for _, e in values)} "
        f"FROM {source} GROUP BY {', '.join(e for _, e in keys)}"
    )


_QUEUED = "status IN ('pending', 'scheduled')"
_TENANT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "dead_letter_groups",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("error_code", sa.String(128), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "category", "error_code", "project_key", "stripe"),
    )
    op.create_table(
        "job_counts",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("job_type", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "job_type", "status", "project_key", "source_id", "stripe"),
    )
    # The summary's first and last instants per (category, errorCode): two seeks per group.
    op.drop_index("ix_dle_tenant_category_code", table_name="dead_letter_entries")
    op.create_index(
        "ix_dle_tenant_category_code",
        "dead_letter_entries",
        ["tenant_id", "category", "error_code", "dead_lettered_at"],
        postgresql_include=["project_id"],
    )
    # The quota summary's starts of the last hour: a range of the tenant's latest starts.
    op.create_index(
        "ix_jobs_tenant_started", "jobs", ["tenant_id", "started_at"], postgresql_include=["job_type"],
        postgresql_where=sa.text("started_at IS NOT NULL"), sqlite_where=sa.text("started_at IS NOT NULL"),
    )
    # The queued jobs not due yet (queued = the counters' pending and scheduled less these): an
    # index-only range of the tenant's future run_after instants.
    op.create_index(
        "ix_jobs_tenant_queued", "jobs", ["tenant_id", "run_after"], postgresql_include=["job_type", "status"],
        postgresql_where=sa.text(_QUEUED), sqlite_where=sa.text(_QUEUED),
    )
    for table in _AGGREGATES:
        op.execute(_backfill(table))
        if postgresql:
            for event in ("insert", "update", "delete"):
                op.execute(_pg_function(table, event))
                op.execute(_pg_trigger(table, event))
        else:
            for statement in _sqlite_triggers(table):
                op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, (source, *_) in _AGGREGATES.items():
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{event}" + (f" ON {source}" if postgresql else ""))
            if postgresql:
                op.execute(f"DROP FUNCTION IF EXISTS {table}_{event}()")
        op.drop_table(table)
    op.drop_index("ix_jobs_tenant_queued", table_name="jobs")
    op.drop_index("ix_jobs_tenant_started", table_name="jobs")
    op.drop_index("ix_dle_tenant_category_code", table_name="dead_letter_entries")
    op.create_index("ix_dle_tenant_category_code", "dead_letter_entries", ["tenant_id", "category", "error_code"])

"""Maintained dead-letter aggregates, kept exact by triggers on ``dead_letter_entries``.

- ``dead_letter_counts`` (tenant_id, project_key, category, status, stripe) -> entries: the totals
  by status and by category.
- ``dead_letter_clusters`` (tenant_id, project_key, error_code, template_hash, stripe) -> entries,
  pending: the error clusters (their first and last instants are read from ``ix_dle_tenant_cluster``
  for the ten clusters shown, two index seeks each).

``project_key`` is the entry's project id, or '' for entries without a project (so it can be part of
the primary key). Triggers on ``dead_letter_entries`` adjust both tables in the writer's transaction,
so every write path is covered: submission, the worker dead-lettering a job, replays, the return of
a replayed entry to pending, deletes, the demo seed.

Concurrency: every writer adds its net change to the rows of its own **stripe**, the writer's
PostgreSQL backend (``pg_backend_pid() % 64``), and readers sum the stripes. A single row per
cluster would serialise every transaction that touches the cluster until it commits: concurrent
replays, the worker dead-lettering jobs and replays by filter queued behind one another on the same
aggregate row (measured by the soak benchmark: 10 s statement timeouts). With stripes two
connections only meet on a row when their backend ids collide modulo 64, and a transaction's writes
all go to one stripe. A stripe's values may go negative (an entry added through one connection and
removed through another); only their sums mean something, and rows whose values are all zero are
deleted.

On PostgreSQL the triggers are per statement with transition tables: a statement's net change is
applied as one upsert per touched aggregate row (row triggers would update the same aggregate row
once per entry, and a large statement, e.g. 5,000 replays in one transaction, would walk an ever
longer version chain). SQLite, the embedded default (one writer at a time), uses row triggers and a
single stripe.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STRIPES = 64
_WATCHED = "tenant_id, project_id, category, status, error_code, template_hash"
_COLUMNS = "tenant_id, coalesce(project_id, '') AS project_key, category, status, error_code, template_hash"
# The net change of one statement, as (aggregate columns, d) with d = +1 for an added and -1 for a
# removed entry version. For an UPDATE, versions whose aggregate columns did not change cancel out
# (multiset difference), so updates of other columns cost one empty comparison.
_CHANGES = {
    "insert": f"SELECT {_COLUMNS}, 1 AS d FROM new_rows",
    "delete": f"SELECT {_COLUMNS}, -1 AS d FROM old_rows",
    "update": (
        f"SELECT *, -1 AS d FROM (SELECT {_COLUMNS} FROM old_rows EXCEPT ALL SELECT {_COLUMNS} FROM new_rows) r "
        f"UNION ALL "
        f"SELECT *, 1 AS d FROM (SELECT {_COLUMNS} FROM new_rows EXCEPT ALL SELECT {_COLUMNS} FROM old_rows) a"
    ),
}

_PG_FUNCTION = """
CREATE FUNCTION dead_letter_aggregates_{event}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_stripe smallint := pg_backend_pid() % {stripes};
BEGIN
    INSERT INTO dead_letter_counts AS c (tenant_id, project_key, category, status, stripe, entries)
    SELECT tenant_id, project_key, category, status, my_stripe, sum(d)
      FROM ({changes}) changes
     GROUP BY tenant_id, project_key, category, status HAVING sum(d) <> 0
     ORDER BY tenant_id, project_key, category, status
    ON CONFLICT (tenant_id, project_key, category, status, stripe)
    DO UPDATE SET entries = c.entries + excluded.entries;

    INSERT INTO dead_letter_clusters AS c
        (tenant_id, project_key, error_code, template_hash, stripe, entries, pending)
    SELECT tenant_id, project_key, error_code, template_hash, my_stripe, sum(d),
           sum(CASE WHEN status = 'pending' THEN d ELSE 0 END)
      FROM ({changes}) changes
     GROUP BY tenant_id, project_key, error_code, template_hash
    HAVING sum(d) <> 0 OR sum(CASE WHEN status = 'pending' THEN d ELSE 0 END) <> 0
     ORDER BY tenant_id, project_key, error_code, template_hash
    ON CONFLICT (tenant_id, project_key, error_code, template_hash, stripe)
    DO UPDATE SET entries = c.entries + excluded.entries, pending = c.pending + excluded.pending;

    -- Rows of this stripe that this statement brought to zero.
    DELETE FROM dead_letter_counts c
     WHERE c.stripe = my_stripe AND c.entries = 0
       AND (c.tenant_id, c.project_key, c.category, c.status) IN
           (SELECT tenant_id, project_key, category, status FROM ({changes}) changes);
    DELETE FROM dead_letter_clusters c
     WHERE c.stripe = my_stripe AND c.entries = 0 AND c.pending = 0
       AND (c.tenant_id, c.project_key, c.error_code, c.template_hash) IN
           (SELECT tenant_id, project_key, error_code, template_hash FROM ({changes}) changes);
    RETURN NULL;
END
$$
"""

_PG_TRIGGERS = tuple(
    (
        f"CREATE TRIGGER dead_letter_aggregates_{event} AFTER {event.upper()} ON dead_letter_entries "
        f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION dead_letter_aggregates_{event}()"
    )
    for event, refs in (
        ("insert", "NEW TABLE AS new_rows"),
        ("update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("delete", "OLD TABLE AS old_rows"),
    )
)

# SQLite (the embedded default): the same bookkeeping as plain trigger statements, stripe 0.
_SQLITE_ADD = """
    INSERT INTO dead_letter_counts (tenant_id, project_key, category, status, stripe, entries)
    VALUES (NEW.tenant_id, coalesce(NEW.project_id, ''), NEW.category, NEW.status, 0, 1)
    ON CONFLICT (tenant_id, project_key, category, status, stripe) DO UPDATE SET entries = entries + 1;
    INSERT INTO dead_letter_clusters (tenant_id, project_key, error_code, template_hash, stripe, entries, pending)
    VALUES (NEW.tenant_id, coalesce(NEW.project_id, ''), NEW.error_code, NEW.template_hash, 0, 1,
            NEW.status = 'pending')
    ON CONFLICT (tenant_id, project_key, error_code, template_hash, stripe)
    DO UPDATE SET entries = entries + 1, pending = pending + excluded.pending;
"""
_SQLITE_REMOVE = """
    UPDATE dead_letter_counts SET entries = entries - 1
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND category = OLD.category AND status = OLD.status AND stripe = 0;
    DELETE FROM dead_letter_counts
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND category = OLD.category AND status = OLD.status AND stripe = 0 AND entries = 0;
    UPDATE dead_letter_clusters
       SET entries = entries - 1, pending = pending - (OLD.status = 'pending')
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND error_code = OLD.error_code AND template_hash = OLD.template_hash AND stripe = 0;
    DELETE FROM dead_letter_clusters
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND error_code = OLD.error_code AND template_hash = OLD.template_hash AND stripe = 0
       AND entries = 0 AND pending = 0;
"""
_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER dead_letter_aggregates_insert AFTER INSERT ON dead_letter_entries BEGIN {_SQLITE_ADD} END",
    (
        f"CREATE TRIGGER dead_letter_aggregates_update AFTER UPDATE OF {_WATCHED} ON dead_letter_entries "
        f"BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END"
    ),
    f"CREATE TRIGGER dead_letter_aggregates_delete AFTER DELETE ON dead_letter_entries BEGIN {_SQLITE_REMOVE} END",
)

_BACKFILL = (
    (
        "INSERT INTO dead_letter_counts (tenant_id, project_key, category, status, stripe, entries) "
        "SELECT tenant_id, coalesce(project_id, ''), category, status, 0, count(*) FROM dead_letter_entries "
        "GROUP BY tenant_id, coalesce(project_id, ''), category, status"
    ),
    (
        "INSERT INTO dead_letter_clusters (tenant_id, project_key, error_code, template_hash, stripe, entries, pending) "
        "SELECT tenant_id, coalesce(project_id, ''), error_code, template_hash, 0, count(*), "
        "sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) "
        "FROM dead_letter_entries GROUP BY tenant_id, coalesce(project_id, ''), error_code, template_hash"
    ),
)

_TENANT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dead_letter_counts",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "project_key", "category", "status", "stripe"),
    )
    op.create_table(
        "dead_letter_clusters",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("error_code", sa.String(128), nullable=False),
        sa.Column("template_hash", sa.String(32), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "project_key", "error_code", "template_hash", "stripe"),
    )
    for statement in _BACKFILL:
        op.execute(statement)
    if op.get_bind().dialect.name == "postgresql":
        for event, changes in _CHANGES.items():
            op.execute(
                _PG_FUNCTION.replace("{event}", event)
                .replace("{changes}", changes)
                .replace("{stripes}", str(STRIPES))
            )
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for event in _CHANGES:
        op.execute(
            f"DROP TRIGGER IF EXISTS dead_letter_aggregates_{event}" + (" ON dead_letter_entries" if postgresql else "")
        )
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS dead_letter_aggregates_{event}()")
    op.drop_table("dead_letter_clusters")
    op.drop_table("dead_letter_counts")

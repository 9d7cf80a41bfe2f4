"""Maintained dead-letter aggregates, kept exact by triggers on ``dead_letter_entries``.

- ``dead_letter_counts`` (tenant_id, project_key, category, status) -> entries: the totals by status
  and by category.
- ``dead_letter_clusters`` (tenant_id, project_key, error_code, template_hash) -> entries, pending,
  first_seen = min(dead_lettered_at), last_seen = max(dead_lettered_at): the error clusters.

``project_key`` is the entry's project id, or '' for entries without a project (so it can be part of
the primary key). Triggers on ``dead_letter_entries`` adjust both tables in the writer's transaction,
so every write path is covered: submission, the worker dead-lettering a job, replays, the return of
a replayed entry to pending, deletes, the demo seed. On PostgreSQL they are statement triggers with
transition tables: a statement's net change is applied as one upsert per touched aggregate row (row
triggers would update the same aggregate row once per entry, and a large statement, e.g. 5,000
replays in one transaction, would walk an ever longer version chain). SQLite, the embedded default,
uses row triggers. Rows that reach zero entries are deleted. ``first_seen``/``last_seen`` are
widened with least/greatest; when a removed entry version sat at a cluster's oldest or newest
instant, both are re-read from ``ix_dle_tenant_cluster``.

Concurrency: writers of entries of the same cluster (or the same category and status) of one tenant
and project serialise on the aggregate row until they commit.

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

_WATCHED = "tenant_id, project_id, category, status, error_code, template_hash, dead_lettered_at"

_COLUMNS = (
    "tenant_id, coalesce(project_id, '') AS project_key, category, status, error_code, template_hash, "
    "dead_lettered_at"
)
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
BEGIN
    -- The statement's net changes, read by each step below (one table per session).
    IF to_regclass('pg_temp.dead_letter_changes') IS NULL THEN
        CREATE TEMP TABLE dead_letter_changes (
            tenant_id bigint, project_key text, category text, status text, error_code text,
            template_hash text, dead_lettered_at timestamptz, d int
        ) ON COMMIT DELETE ROWS;
    END IF;
    INSERT INTO dead_letter_changes {changes};
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    INSERT INTO dead_letter_counts AS c (tenant_id, project_key, category, status, entries)
    SELECT tenant_id, project_key, category, status, sum(d)
      FROM dead_letter_changes GROUP BY tenant_id, project_key, category, status HAVING sum(d) <> 0
     ORDER BY tenant_id, project_key, category, status
    ON CONFLICT (tenant_id, project_key, category, status) DO UPDATE SET entries = c.entries + excluded.entries;
    DELETE FROM dead_letter_counts c USING (SELECT DISTINCT tenant_id, project_key, category, status
                                              FROM dead_letter_changes WHERE d < 0) k
     WHERE c.entries = 0 AND c.tenant_id = k.tenant_id AND c.project_key = k.project_key
       AND c.category = k.category AND c.status = k.status;

    INSERT INTO dead_letter_clusters AS c
        (tenant_id, project_key, error_code, template_hash, entries, pending, first_seen, last_seen)
    SELECT tenant_id, project_key, error_code, template_hash, sum(d),
           sum(CASE WHEN status = 'pending' THEN d ELSE 0 END),
           coalesce(min(dead_lettered_at) FILTER (WHERE d > 0), min(dead_lettered_at)),
           coalesce(max(dead_lettered_at) FILTER (WHERE d > 0), max(dead_lettered_at))
      FROM dead_letter_changes GROUP BY tenant_id, project_key, error_code, template_hash
     ORDER BY tenant_id, project_key, error_code, template_hash
    ON CONFLICT (tenant_id, project_key, error_code, template_hash)
    DO UPDATE SET entries = c.entries + excluded.entries,
                  pending = c.pending + excluded.pending,
                  first_seen = least(c.first_seen, excluded.first_seen),
                  last_seen = greatest(c.last_seen, excluded.last_seen);
    DELETE FROM dead_letter_clusters c USING (SELECT DISTINCT tenant_id, project_key, error_code, template_hash
                                                FROM dead_letter_changes WHERE d < 0) k
     WHERE c.entries = 0 AND c.tenant_id = k.tenant_id AND c.project_key = k.project_key
       AND c.error_code = k.error_code AND c.template_hash = k.template_hash;
    -- A removed version at a cluster's edge (its oldest or newest instant, kept by least/greatest
    -- above) may have taken that edge away: re-read both from the cluster index.
    UPDATE dead_letter_clusters c
       SET first_seen = (SELECT min(e.dead_lettered_at) FROM dead_letter_entries e
                          WHERE e.tenant_id = c.tenant_id AND e.error_code = c.error_code
                            AND e.template_hash = c.template_hash
                            AND coalesce(e.project_id, '') = c.project_key),
           last_seen = (SELECT max(e.dead_lettered_at) FROM dead_letter_entries e
                         WHERE e.tenant_id = c.tenant_id AND e.error_code = c.error_code
                           AND e.template_hash = c.template_hash
                           AND coalesce(e.project_id, '') = c.project_key)
      FROM (SELECT tenant_id, project_key, error_code, template_hash,
                   min(dead_lettered_at) AS removed_first, max(dead_lettered_at) AS removed_last
              FROM dead_letter_changes WHERE d < 0
             GROUP BY tenant_id, project_key, error_code, template_hash) r
     WHERE c.tenant_id = r.tenant_id AND c.project_key = r.project_key
       AND c.error_code = r.error_code AND c.template_hash = r.template_hash
       AND (r.removed_first <= c.first_seen OR r.removed_last >= c.last_seen);
    DELETE FROM dead_letter_changes;
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

# SQLite (the embedded default): the same bookkeeping as plain trigger statements; the cluster's
# first/last seen are re-read from the cluster index whenever an entry leaves it.
_SQLITE_ADD = """
    INSERT INTO dead_letter_counts (tenant_id, project_key, category, status, entries)
    VALUES (NEW.tenant_id, coalesce(NEW.project_id, ''), NEW.category, NEW.status, 1)
    ON CONFLICT (tenant_id, project_key, category, status) DO UPDATE SET entries = entries + 1;
    INSERT INTO dead_letter_clusters
        (tenant_id, project_key, error_code, template_hash, entries, pending, first_seen, last_seen)
    VALUES (NEW.tenant_id, coalesce(NEW.project_id, ''), NEW.error_code, NEW.template_hash, 1,
            NEW.status = 'pending', NEW.dead_lettered_at, NEW.dead_lettered_at)
    ON CONFLICT (tenant_id, project_key, error_code, template_hash)
    DO UPDATE SET entries = entries + 1, pending = pending + excluded.pending,
                  first_seen = min(first_seen, excluded.first_seen),
                  last_seen = max(last_seen, excluded.last_seen);
"""
_SQLITE_REMOVE = """
    UPDATE dead_letter_counts SET entries = entries - 1
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND category = OLD.category AND status = OLD.status;
    DELETE FROM dead_letter_counts
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND category = OLD.category AND status = OLD.status AND entries <= 0;
    UPDATE dead_letter_clusters
       SET entries = entries - 1, pending = pending - (OLD.status = 'pending')
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND error_code = OLD.error_code AND template_hash = OLD.template_hash;
    DELETE FROM dead_letter_clusters
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND error_code = OLD.error_code AND template_hash = OLD.template_hash AND entries <= 0;
    UPDATE dead_letter_clusters
       SET first_seen = (SELECT min(e.dead_lettered_at) FROM dead_letter_entries e
                          WHERE e.tenant_id = OLD.tenant_id AND e.error_code = OLD.error_code
                            AND e.template_hash = OLD.template_hash
                            AND e.project_id IS OLD.project_id),
           last_seen = (SELECT max(e.dead_lettered_at) FROM dead_letter_entries e
                         WHERE e.tenant_id = OLD.tenant_id AND e.error_code = OLD.error_code
                           AND e.template_hash = OLD.template_hash
                           AND e.project_id IS OLD.project_id)
     WHERE tenant_id = OLD.tenant_id AND project_key = coalesce(OLD.project_id, '')
       AND error_code = OLD.error_code AND template_hash = OLD.template_hash;
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
        "INSERT INTO dead_letter_counts (tenant_id, project_key, category, status, entries) "
        "SELECT tenant_id, coalesce(project_id, ''), category, status, count(*) FROM dead_letter_entries "
        "GROUP BY tenant_id, coalesce(project_id, ''), category, status"
    ),
    ("INSERT INTO dead_letter_clusters "
    "(tenant_id, project_key, error_code, template_hash, entries, pending, first_seen, last_seen) "
    "SELECT tenant_id, coalesce(project_id, ''), error_code, template_hash, count(*), "
    "sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), min(dead_lettered_at), max(dead_lettered_at) "
    "FROM dead_letter_entries GROUP BY tenant_id, coalesce(project_id, ''), error_code, template_hash"),
)


def upgrade() -> None:
    op.create_table(
        "dead_letter_counts",
        sa.Column("tenant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "project_key", "category", "status"),
    )
    op.create_table(
        "dead_letter_clusters",
        sa.Column("tenant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("error_code", sa.String(128), nullable=False),
        sa.Column("template_hash", sa.String(32), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "project_key", "error_code", "template_hash"),
    )
    for statement in _BACKFILL:
        op.execute(statement)
    if op.get_bind().dialect.name == "postgresql":
        for event, changes in _CHANGES.items():
            op.execute(_PG_FUNCTION.replace("{event}", event).replace("{changes}", changes))
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS dead_letter_aggregates_{name} ON dead_letter_entries"
                   if op.get_bind().dialect.name == "postgresql"
                   else f"DROP TRIGGER IF EXISTS dead_letter_aggregates_{name}")
    if op.get_bind().dialect.name == "postgresql":
        for event in _CHANGES:
            op.execute(f"DROP FUNCTION IF EXISTS dead_letter_aggregates_{event}()")
    op.drop_table("dead_letter_clusters")
    op.drop_table("dead_letter_counts")

"""The change feed: per-tenant versions and events, kept by triggers on every collection table.

- ``feed_versions`` (tenant_id, kind) -> version. The row of kind ``''`` is the tenant's
  **sequence**: it advances by one for every (object, statement) change of the tenant; the row of
  a kind (``source``, ``quota``, ``job``, ``deadletter``, ``packrun``, ``operation``, ``audit``)
  holds the sequence of that kind's latest change, its **version**.
- ``feed_events`` (tenant_id, seq) -> kind, object id, project id, instant (epoch milliseconds):
  one row per changed object and transaction (per statement on SQLite), what ``GET /jobengine/events`` sends and what
  ``Last-Event-ID`` resumes from. Rows older than the retention window are deleted by the feed.

Triggers on the collection tables (sources, quotas, jobs, dead_letter_entries, pack_runs,
operation_runs, audit_log) write both in the writer's own transaction, so no write path can
forget them: gateway mutations, submissions, the worker's outcomes, the reconciler, replays,
discards, the seed, later migrations and hand-written SQL alike. An operation run without a
tenant (a workspace-scoped run) is a change for every tenant of its workspace, which shows it.
Workers (``workers``) are to be wired when that table exists.

PostgreSQL: one trigger per statement with transition tables (a statement of 5,000 rows is one
call, not 5,000) stages the statement's changed objects per tenant in ``feed_pending`` (unlogged: it
only holds the changes of transactions in flight and rolls back with them). At commit a deferred
constraint trigger numbers the transaction's changed objects (each once) in each tenant's sequence
(an upsert of the tenant's sequence row, tenants in id order), inserts the events, sets the kinds'
versions and notifies channel ``jobgate_feed`` with ``<tenant>:<sequence>`` (delivered at commit,
never for a rolled-back change). The sequence row is taken only at commit and held until the commit
ends, so a tenant's changes commit in sequence order (a reader that has seen sequence N never later
finds a change below N) while its writers do not wait for each other during their transactions, and
no lock taken by the feed can close a cycle with the writers' own row locks. SQLite, the embedded
default (one writer at a time): row triggers numbering each change at once, no notification (the
in-process feed reads new events by rowid).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CHANNEL = "jobgate_feed"

# table -> (kind, object id expression, project expression, operations)
WATCHED = {
    "sources": ("source", "source_id", "project_id", ("insert", "update", "delete")),
    "quotas": ("quota", "quota_id", "NULL", ("insert", "update", "delete")),
    "jobs": ("job", "job_id", "project_id", ("insert", "update", "delete")),
    "dead_letter_entries": ("deadletter", "entry_id", "project_id", ("insert", "update", "delete")),
    "pack_runs": ("packrun", "pack_run_id", "project_id", ("insert", "update", "delete")),
    "operation_runs": ("operation", "CAST(id AS TEXT)", "project_id", ("insert", "update", "delete")),
    "audit_log": ("audit", "CAST(id AS TEXT)", "project_id", ("insert",)),
}

# Each watched statement stages its changed objects (one row per tenant, in an unlogged table: it
# only ever holds the changes of transactions in flight, and rolls back with them).
_PG_RECORD = """
CREATE FUNCTION feed_record(p_kind text, p_tenants bigint[], p_ids text[], p_projects text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_pending (txid, tenant_id, kind, ids, projects)
    SELECT txid_current(), u.t, p_kind, array_agg(u.i), array_agg(u.p)
      FROM unnest(p_tenants, p_ids, p_projects) AS u(t, i, p)
     WHERE u.t IS NOT NULL
     GROUP BY u.t;
END
$$
"""

# At commit (a deferred constraint trigger on the staged rows; the first firing of a transaction
# takes all of its rows, the others find none): number the transaction's changed objects in each
# tenant's sequence, record them, set the kinds' versions and notify.
_PG_COMMIT = """
CREATE FUNCTION feed_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tenants bigint[];
    v_kinds text[];
    v_ids text[];
    v_projects text[];
    t bigint;
    n bigint;
    last_seq bigint;
    at_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    WITH staged AS (
        DELETE FROM feed_pending WHERE txid = txid_current() RETURNING tenant_id, kind, ids, projects
    ), changed AS (
        SELECT DISTINCT ON (s.tenant_id, s.kind, u.i) s.tenant_id, s.kind, u.i AS object_id, u.p AS project_id
          FROM staged s, unnest(s.ids, s.projects) AS u(i, p)
    )
    SELECT array_agg(tenant_id ORDER BY tenant_id, kind, object_id),
           array_agg(kind ORDER BY tenant_id, kind, object_id),
           array_agg(object_id ORDER BY tenant_id, kind, object_id),
           array_agg(project_id ORDER BY tenant_id, kind, object_id)
      INTO v_tenants, v_kinds, v_ids, v_projects
      FROM changed;
    IF v_tenants IS NULL THEN
        RETURN NULL;
    END IF;
    FOR t, n IN SELECT u.t, count(*) FROM unnest(v_tenants) AS u(t) GROUP BY u.t ORDER BY u.t LOOP
        INSERT INTO feed_versions AS v (tenant_id, kind, version) VALUES (t, '', n)
        ON CONFLICT (tenant_id, kind) DO UPDATE SET version = v.version + excluded.version
        RETURNING version INTO last_seq;
        INSERT INTO feed_events (tenant_id, seq, kind, object_id, project_id, at)
        SELECT t, last_seq - n + row_number() OVER (ORDER BY u.o), u.k, u.i, u.p, at_ms
          FROM unnest(v_tenants, v_kinds, v_ids, v_projects) WITH ORDINALITY AS u(tt, k, i, p, o)
         WHERE u.tt = t;
        INSERT INTO feed_versions AS v (tenant_id, kind, version)
        SELECT t, e.kind, max(e.seq) FROM feed_events e
         WHERE e.tenant_id = t AND e.seq > last_seq - n
         GROUP BY e.kind
        ON CONFLICT (tenant_id, kind) DO UPDATE SET version = excluded.version;
        PERFORM pg_notify('{channel}', t || ':' || last_seq);
    END LOOP;
    RETURN NULL;
END
$$
"""

# The rows a statement touched, with the tenant(s) each is a change for.
_PG_ROWS = {
    "operation_runs": (
        "SELECT coalesce(r.tenant_id, t.id) AS tenant_id, CAST(r.id AS TEXT) AS object_id, r.project_id "
        "FROM {rows} r LEFT JOIN tenants t ON r.tenant_id IS NULL AND t.workspace_id = r.workspace_id"
    ),
}
_PG_FUNCTION = """
CREATE FUNCTION feed_{table}_{event}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM feed_record('{kind}', array_agg(c.tenant_id), array_agg(c.object_id), array_agg(c.project_id))
       FROM ({rows_sql}) c;
    RETURN NULL;
END
$$
"""
_REFS = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}

# SQLite: the tenants an object's change is for, then the same bookkeeping per row.
_SQLITE_TENANTS = {
    "operation_runs": (
        "SELECT id FROM tenants WHERE (ROW.tenant_id IS NULL AND workspace_id = ROW.workspace_id) OR id = ROW.tenant_id"
    ),
}
_SQLITE_BODY = """
    INSERT INTO feed_versions (tenant_id, kind, version)
    SELECT t.id, '', 1 FROM ({tenants}) t WHERE true
    ON CONFLICT (tenant_id, kind) DO UPDATE SET version = version + 1;
    INSERT INTO feed_events (tenant_id, seq, kind, object_id, project_id, at)
    SELECT v.tenant_id, v.version, '{kind}', {object_id}, {project},
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
      FROM feed_versions v WHERE v.kind = '' AND v.tenant_id IN ({tenants});
    INSERT INTO feed_versions (tenant_id, kind, version)
    SELECT v.tenant_id, '{kind}', v.version FROM feed_versions v
     WHERE v.kind = '' AND v.tenant_id IN ({tenants}) AND true
    ON CONFLICT (tenant_id, kind) DO UPDATE SET version = excluded.version;
"""

_TENANT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _qualified(expression: str, row: str) -> str:
    if expression == "NULL":
        return expression
    if expression.startswith("CAST("):
        return expression.replace("CAST(", f"CAST({row}.", 1)
    return f"{row}.{expression}"


def upgrade() -> None:
    op.create_table(
        "feed_versions",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind"),
    )
    op.create_table(
        "feed_events",
        sa.Column("tenant_id", _TENANT_ID, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq"),
    )
    op.create_index("ix_feed_events_at", "feed_events", ["at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE UNLOGGED TABLE feed_pending (txid bigint NOT NULL, tenant_id bigint NOT NULL, "
            "kind varchar(16) NOT NULL, ids text[] NOT NULL, projects text[] NOT NULL)"
        )
        op.execute("CREATE INDEX ix_feed_pending_txid ON feed_pending (txid)")
        op.execute(_PG_RECORD)
        op.execute(_PG_COMMIT.replace("{channel}", CHANNEL))
        op.execute(
            "CREATE CONSTRAINT TRIGGER feed_commit AFTER INSERT ON feed_pending DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION feed_commit()"
        )
        for table, (kind, object_id, project, events) in WATCHED.items():
            for event in events:
                rows = "new_rows" if event != "delete" else "old_rows"
                rows_sql = _PG_ROWS.get(table) or (
                    f"SELECT tenant_id, {object_id} AS object_id, {project} AS project_id FROM {{rows}}"
                )
                op.execute(
                    _PG_FUNCTION.replace("{table}", table)
                    .replace("{event}", event)
                    .replace("{kind}", kind)
                    .replace("{rows_sql}", rows_sql.replace("{rows}", rows))
                )
                op.execute(
                    f"CREATE TRIGGER feed_{table}_{event} AFTER {event.upper()} ON {table} {_REFS[event]} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION feed_{table}_{event}()"
                )
    else:
        for table, (kind, object_id, project, events) in WATCHED.items():
            for event in events:
                row = "OLD" if event == "delete" else "NEW"
                tenants = _SQLITE_TENANTS.get(table, "SELECT ROW.tenant_id AS id").replace("ROW", row)
                body = (
                    _SQLITE_BODY.replace("{tenants}", tenants)
                    .replace("{kind}", kind)
                    .replace("{object_id}", _qualified(object_id, row))
                    .replace("{project}", _qualified(project, row))
                )
                op.execute(f"CREATE TRIGGER feed_{table}_{event} AFTER {event.upper()} ON {table} BEGIN {body} END")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, (_, _, _, events) in WATCHED.items():
        for event in events:
            op.execute(f"DROP TRIGGER IF EXISTS feed_{table}_{event}" + (f" ON {table}" if postgresql else ""))
            if postgresql:
                op.execute(f"DROP FUNCTION IF EXISTS feed_{table}_{event}()")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS feed_record(text, bigint[], text[], text[])")
        op.execute("DROP TABLE IF EXISTS feed_pending")
        op.execute("DROP FUNCTION IF EXISTS feed_commit()")
    op.drop_index("ix_feed_events_at", "feed_events")
    op.drop_table("feed_events")
    op.drop_table("feed_versions")

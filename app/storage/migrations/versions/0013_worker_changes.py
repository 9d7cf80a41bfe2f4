"""Workers in the change feed: a worker's change is announced to every tenant that sees it.

- ``workers.lapsed_at``: when the reconciler found the worker's heartbeat overdue (its
  ``expires_at`` passed without a graceful stop). Set once per lapse; a heartbeat clears it.
- Row triggers on ``workers`` stage a ``worker`` change for each tenant that sees the worker (the
  rule of ``GET /jobengine/workers``: every tenant when ``tenant_ids`` is null, else the listed
  ones; both the old and the new set when the tenants change) on: an insert (a registration), an
  update of what a tenant is shown of it other than its load and last-seen time (job types,
  tenants, concurrency, host, pid, start, a graceful stop, a lapse or its end), and the delete of a
  row that was neither stopped nor lapsed. An ordinary heartbeat (running count, last seen,
  expiry) matches no trigger's ``WHEN``: on PostgreSQL its trigger function is not even called.
- PostgreSQL: the fan-out is staged as one row, ``feed_pending.tenants`` (an array of tenant ids
  taken by one ``SELECT`` of ``tenants``), not one row per tenant; ``feed_commit`` is rewritten
  set-based (every tenant's sequence upserted by one statement in tenant id order, the events
  and kind versions by one statement each) so that a change for thousands of tenants costs a
  few statements, not a loop of statements per tenant. Its rules are those of 0011: a tenant's
  changes numbered once each in (kind, id) order, sequence rows taken at commit in tenant order,
  one notification per tenant.
- SQLite: row triggers with the same ``WHEN`` conditions, numbering each change at once.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

CHANNEL = "jobgate_feed"

# What a tenant is shown of a worker, or whether it is shown at all, changed (the load and the
# last-seen time excepted: they move at every heartbeat).
_SHOWN = ("job_types", "tenant_ids", "concurrency", "host", "pid", "started_at", "stopped_at", "lapsed_at")
_WAS_LIVE = "OLD.stopped_at IS NULL AND OLD.lapsed_at IS NULL"

_PG_TENANTS = """
CREATE FUNCTION feed_worker_tenants(p_tenant_ids jsonb) RETURNS bigint[] LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_tenant_ids IS NULL OR jsonb_typeof(p_tenant_ids) <> 'array' THEN
        RETURN ARRAY(SELECT id FROM tenants ORDER BY id);
    END IF;
    RETURN ARRAY(SELECT t.id FROM tenants t
                  WHERE t.id IN (SELECT e::bigint FROM jsonb_array_elements_text(p_tenant_ids) AS e)
                  ORDER BY t.id);
END
$$
"""

_PG_WORKERS = """
CREATE FUNCTION feed_workers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id text;
    v_tenants bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_id := OLD.worker_id;
        v_tenants := feed_worker_tenants(OLD.tenant_ids);
    ELSIF TG_OP = 'UPDATE' AND OLD.tenant_ids IS DISTINCT FROM NEW.tenant_ids THEN
        v_id := NEW.worker_id;
        v_tenants := ARRAY(SELECT DISTINCT u.t FROM unnest(feed_worker_tenants(OLD.tenant_ids)
                                                           || feed_worker_tenants(NEW.tenant_ids)) AS u(t));
    ELSE
        v_id := NEW.worker_id;
        v_tenants := feed_worker_tenants(NEW.tenant_ids);
    END IF;
    IF cardinality(v_tenants) > 0 THEN
        INSERT INTO feed_pending (txid, tenant_id, tenants, kind, ids, projects)
        VALUES (txid_current(), NULL, v_tenants, 'worker', ARRAY[v_id], ARRAY[NULL::text]);
    END IF;
    RETURN NULL;
END
$$
"""

_PG_COMMIT = """
CREATE OR REPLACE FUNCTION feed_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tenants bigint[];
    v_sequences bigint[];
    at_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    WITH staged AS (
        DELETE FROM feed_pending WHERE txid = txid_current() RETURNING tenant_id, tenants, kind, ids, projects
    ), changed AS (
        SELECT DISTINCT ON (t.t, s.kind, u.i) t.t AS tenant_id, s.kind, u.i AS object_id, u.p AS project_id
          FROM staged s
         CROSS JOIN LATERAL unnest(coalesce(s.tenants, ARRAY[s.tenant_id])) AS t(t)
         CROSS JOIN LATERAL unnest(s.ids, s.projects) AS u(i, p)
    ), counted AS (
        SELECT tenant_id, count(*) AS n FROM changed GROUP BY tenant_id
    ), sequenced AS (
        INSERT INTO feed_versions AS v (tenant_id, kind, version)
        SELECT tenant_id, '', n FROM counted ORDER BY tenant_id
        ON CONFLICT (tenant_id, kind) DO UPDATE SET version = v.version + excluded.version
        RETURNING tenant_id, version
    ), numbered AS (
        INSERT INTO feed_events (tenant_id, seq, kind, object_id, project_id, at)
        SELECT c.tenant_id,
               q.version - k.n + row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.kind, c.object_id),
               c.kind, c.object_id, c.project_id, at_ms
          FROM changed c JOIN sequenced q USING (tenant_id) JOIN counted k USING (tenant_id)
        RETURNING tenant_id, seq, kind
    ), kinds AS (
        INSERT INTO feed_versions AS v (tenant_id, kind, version)
        SELECT tenant_id, kind, max(seq) FROM numbered GROUP BY tenant_id, kind
        ON CONFLICT (tenant_id, kind) DO UPDATE SET version = excluded.version
    )
    SELECT array_agg(tenant_id ORDER BY tenant_id), array_agg(version ORDER BY tenant_id)
      INTO v_tenants, v_sequences
      FROM sequenced;
    IF v_tenants IS NOT NULL THEN
        PERFORM pg_notify('{channel}', u.t || ':' || u.s) FROM unnest(v_tenants, v_sequences) AS u(t, s);
    END IF;
    RETURN NULL;
END
$$
"""

_SQLITE_VISIBLE = (
    "SELECT id FROM tenants WHERE ROW.tenant_ids IS NULL OR json_type(ROW.tenant_ids) <> 'array' "
    "OR id IN (SELECT value FROM json_each(ROW.tenant_ids))"
)
_SQLITE_BODY = """
    INSERT INTO feed_versions (tenant_id, kind, version)
    SELECT t.id, '', 1 FROM ({tenants}) t WHERE true
    ON CONFLICT (tenant_id, kind) DO UPDATE SET version = version + 1;
    INSERT INTO feed_events (tenant_id, seq, kind, object_id, project_id, at)
    SELECT v.tenant_id, v.version, 'worker', {row}.worker_id, NULL,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
      FROM feed_versions v WHERE v.kind = '' AND v.tenant_id IN ({tenants});
    INSERT INTO feed_versions (tenant_id, kind, version)
    SELECT v.tenant_id, 'worker', v.version FROM feed_versions v
     WHERE v.kind = '' AND v.tenant_id IN ({tenants}) AND true
    ON CONFLICT (tenant_id, kind) DO UPDATE SET version = excluded.version;
"""


def _changed(dialect: str) -> str:
    differs = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{column} {differs} NEW.{column}" for column in _SHOWN)


def upgrade() -> None:
    op.add_column("workers", sa.Column("lapsed_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE feed_pending ALTER COLUMN tenant_id DROP NOT NULL, ADD COLUMN tenants bigint[]")
        op.execute(_PG_COMMIT.replace("{channel}", CHANNEL))
        op.execute(_PG_TENANTS)
        op.execute(_PG_WORKERS)
        for event, when in (("insert", ""), ("update", f"WHEN ({_changed('postgresql')}) "),
                            ("delete", f"WHEN ({_WAS_LIVE}) ")):
            op.execute(
                f"CREATE TRIGGER feed_workers_{event} AFTER {event.upper()} ON workers FOR EACH ROW "
                f"{when}EXECUTE FUNCTION feed_workers()"
            )
        return
    visible_new, visible_old = _SQLITE_VISIBLE.replace("ROW", "NEW"), _SQLITE_VISIBLE.replace("ROW", "OLD")
    for event, when, row, tenants in (
        ("insert", "", "NEW", visible_new),
        ("update", f"WHEN {_changed('sqlite')} ", "NEW", f"{visible_old} UNION {visible_new}"),
        ("delete", f"WHEN {_WAS_LIVE} ", "OLD", visible_old),
    ):
        body = _SQLITE_BODY.replace("{tenants}", tenants).replace("{row}", row)
        op.execute(f"CREATE TRIGGER feed_workers_{event} AFTER {event.upper()} ON workers {when}BEGIN {body} END")


def _feed_commit_of_0011() -> str:
    path = Path(__file__).with_name("0011_change_feed.py")
    spec = importlib.util.spec_from_file_location("jobgate_migration_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._PG_COMMIT.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
        "{channel}", CHANNEL
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS feed_workers_{event}" + (" ON workers" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS feed_workers()")
        op.execute("DROP FUNCTION IF EXISTS feed_worker_tenants(jsonb)")
        op.execute(_feed_commit_of_0011())
        op.execute("DELETE FROM feed_pending WHERE tenant_id IS NULL")
        op.execute("ALTER TABLE feed_pending DROP COLUMN tenants, ALTER COLUMN tenant_id SET NOT NULL")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("lapsed_at")

"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('workspaces',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('tenants',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_id'),
    sa.UniqueConstraint('key')
    )
    op.create_index(op.f('ix_tenants_workspace_id'), 'tenants', ['workspace_id'], unique=False)
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('client_id', sa.String(length=256), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('route', sa.String(length=256), nullable=False),
    sa.Column('target', sa.String(length=256), nullable=True),
    sa.Column('reason', sa.String(length=512), nullable=True),
    sa.Column('ticket', sa.String(length=128), nullable=True),
    sa.Column('trace_id', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('result_status', sa.Integer(), nullable=False),
    sa.Column('result_code', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_tenant_time', 'audit_log', ['tenant_id', 'occurred_at', 'id'], unique=False)
    op.create_table('dead_letter_entries',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('entry_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('job_type', sa.String(length=128), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('error_code', sa.String(length=128), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('error_template', sa.Text(), nullable=False),
    sa.Column('template_hash', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('replay_count', sa.Integer(), nullable=False),
    sa.Column('last_replayed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_replay_job_id', sa.String(length=64), nullable=True),
    sa.Column('first_dead_lettered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dead_lettered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'entry_id'),
    sa.UniqueConstraint('tenant_id', 'job_id', name='uq_dle_tenant_job')
    )
    op.create_index('ix_dle_tenant_category_code', 'dead_letter_entries', ['tenant_id', 'category', 'error_code'], unique=False)
    op.create_index('ix_dle_tenant_dead_lettered', 'dead_letter_entries', ['tenant_id', 'dead_lettered_at', 'entry_id'], unique=False)
    op.create_index('ix_dle_tenant_status', 'dead_letter_entries', ['tenant_id', 'status', 'dead_lettered_at'], unique=False)
    op.create_index('ix_dle_tenant_template', 'dead_letter_entries', ['tenant_id', 'error_code', 'template_hash'], unique=False)
    op.create_table('idempotency_records',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('response_headers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('response_body', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'subject', 'key')
    )
    op.create_index(op.f('ix_idempotency_records_expires_at'), 'idempotency_records', ['expires_at'], unique=False)
    op.create_table('jobs',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('job_type', sa.String(length=128), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('run_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pack_run_id', sa.String(length=64), nullable=True),
    sa.Column('step_index', sa.Integer(), nullable=True),
    sa.Column('replay_of_entry_id', sa.String(length=64), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('last_error_code', sa.String(length=128), nullable=True),
    sa.Column('last_error_category', sa.String(length=64), nullable=True),
    sa.Column('last_error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'job_id')
    )
    op.create_index('ix_jobs_due', 'jobs', ['run_after'], unique=False, postgresql_where=sa.text("status IN ('pending', 'scheduled')"), sqlite_where=sa.text("status IN ('pending', 'scheduled')"))
    op.create_index('ix_jobs_leases', 'jobs', ['lease_expires_at'], unique=False, postgresql_where=sa.text("status IN ('leased', 'running')"), sqlite_where=sa.text("status IN ('leased', 'running')"))
    op.create_index('ix_jobs_pack_run', 'jobs', ['tenant_id', 'pack_run_id'], unique=False)
    op.create_index('ix_jobs_tenant_created', 'jobs', ['tenant_id', 'created_at', 'job_id'], unique=False)
    op.create_index('ix_jobs_tenant_status_type', 'jobs', ['tenant_id', 'status', 'job_type'], unique=False)
    op.create_table('operation_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('user_id', sa.String(length=256), nullable=True),
    sa.Column('initiator_name', sa.String(length=256), nullable=True),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=False),
    sa.Column('run_identity_hash', sa.String(length=64), nullable=False),
    sa.Column('summary_counts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('failure_summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('context', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('operator_message', sa.String(length=512), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reconciled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reconciliation', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_operation_runs_active', 'operation_runs', ['tenant_id', 'status'], unique=False, postgresql_where=sa.text("status IN ('queued', 'running')"), sqlite_where=sa.text("status IN ('queued', 'running')"))
    op.create_index('ix_operation_runs_tenant_created', 'operation_runs', ['tenant_id', 'created_at', 'id'], unique=False)
    op.create_index('ix_operation_runs_workspace_created', 'operation_runs', ['workspace_id', 'created_at', 'id'], unique=False)
    op.create_index('uq_operation_runs_tenant_active_identity', 'operation_runs', ['tenant_id', 'run_identity_hash'], unique=True, postgresql_where=sa.text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"), sqlite_where=sa.text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"))
    op.create_index('uq_operation_runs_workspace_active_identity', 'operation_runs', ['workspace_id', 'run_identity_hash'], unique=True, postgresql_where=sa.text("tenant_id IS NULL AND status IN ('queued', 'running')"), sqlite_where=sa.text("tenant_id IS NULL AND status IN ('queued', 'running')"))
    op.create_table('pack_runs',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('pack_run_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('source_id', sa.String(length=64), nullable=True),
    sa.Column('pack_name', sa.String(length=200), nullable=False),
    sa.Column('pack_version', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('retry_of', sa.String(length=64), nullable=True),
    sa.Column('operation_run_id', sa.BigInteger(), nullable=True),
    sa.Column('steps_total', sa.Integer(), nullable=False),
    sa.Column('steps_succeeded', sa.Integer(), nullable=False),
    sa.Column('steps_failed', sa.Integer(), nullable=False),
    sa.Column('initiated_by', sa.String(length=256), nullable=True),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'pack_run_id')
    )
    op.create_index('ix_pack_runs_retry_of', 'pack_runs', ['tenant_id', 'retry_of'], unique=False)
    op.create_index('ix_pack_runs_tenant_created', 'pack_runs', ['tenant_id', 'created_at', 'pack_run_id'], unique=False)
    op.create_table('quotas',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('quota_id', sa.String(length=64), nullable=False),
    sa.Column('job_type', sa.String(length=128), nullable=False),
    sa.Column('max_active', sa.Integer(), nullable=False),
    sa.Column('max_per_hour', sa.Integer(), nullable=False),
    sa.Column('burst', sa.Integer(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('paused_by', sa.String(length=256), nullable=True),
    sa.Column('paused_reason', sa.String(length=512), nullable=True),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'quota_id'),
    sa.UniqueConstraint('tenant_id', 'job_type', name='uq_quotas_tenant_job_type')
    )
    op.create_index('ix_quotas_tenant_job_type', 'quotas', ['tenant_id', 'job_type', 'quota_id'], unique=False)
    op.create_table('sources',
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source_type', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_job_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('jobs_submitted', sa.BigInteger(), nullable=False),
    sa.Column('jobs_active', sa.BigInteger(), nullable=False),
    sa.Column('jobs_failed', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'source_id')
    )
    op.create_index('ix_sources_tenant_name', 'sources', ['tenant_id', 'name', 'source_id'], unique=False)
    op.create_index('ix_sources_tenant_project_name', 'sources', ['tenant_id', 'project_id', 'name', 'source_id'], unique=False)

    _make_audit_append_only()


_AUDIT_GUARD = (
    """CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$""",
    """CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only()""",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only()""",
)


def _make_audit_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _AUDIT_GUARD:
            op.execute(statement)
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )

def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER audit_log_no_update_delete ON audit_log")
        op.execute("DROP FUNCTION audit_log_is_append_only()")

    op.drop_index('ix_sources_tenant_project_name', table_name='sources')
    op.drop_index('ix_sources_tenant_name', table_name='sources')
    op.drop_table('sources')
    op.drop_index('ix_quotas_tenant_job_type', table_name='quotas')
    op.drop_table('quotas')
    op.drop_index('ix_pack_runs_tenant_created', table_name='pack_runs')
    op.drop_index('ix_pack_runs_retry_of', table_name='pack_runs')
    op.drop_table('pack_runs')
    op.drop_index('uq_operation_runs_workspace_active_identity', table_name='operation_runs', postgresql_where=sa.text("tenant_id IS NULL AND status IN ('queued', 'running')"), sqlite_where=sa.text("tenant_id IS NULL AND status IN ('queued', 'running')"))
    op.drop_index('uq_operation_runs_tenant_active_identity', table_name='operation_runs', postgresql_where=sa.text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"), sqlite_where=sa.text("tenant_id IS NOT NULL AND status IN ('queued', 'running')"))
    op.drop_index('ix_operation_runs_workspace_created', table_name='operation_runs')
    op.drop_index('ix_operation_runs_tenant_created', table_name='operation_runs')
    op.drop_index('ix_operation_runs_active', table_name='operation_runs', postgresql_where=sa.text("status IN ('queued', 'running')"), sqlite_where=sa.text("status IN ('queued', 'running')"))
    op.drop_table('operation_runs')
    op.drop_index('ix_jobs_tenant_status_type', table_name='jobs')
    op.drop_index('ix_jobs_tenant_created', table_name='jobs')
    op.drop_index('ix_jobs_pack_run', table_name='jobs')
    op.drop_index('ix_jobs_leases', table_name='jobs', postgresql_where=sa.text("status IN ('leased', 'running')"), sqlite_where=sa.text("status IN ('leased', 'running')"))
    op.drop_index('ix_jobs_due', table_name='jobs', postgresql_where=sa.text("status IN ('pending', 'scheduled')"), sqlite_where=sa.text("status IN ('pending', 'scheduled')"))
    op.drop_table('jobs')
    op.drop_index(op.f('ix_idempotency_records_expires_at'), table_name='idempotency_records')
    op.drop_table('idempotency_records')
    op.drop_index('ix_dle_tenant_template', table_name='dead_letter_entries')
    op.drop_index('ix_dle_tenant_status', table_name='dead_letter_entries')
    op.drop_index('ix_dle_tenant_dead_lettered', table_name='dead_letter_entries')
    op.drop_index('ix_dle_tenant_category_code', table_name='dead_letter_entries')
    op.drop_table('dead_letter_entries')
    op.drop_index('ix_audit_tenant_time', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_index(op.f('ix_tenants_workspace_id'), table_name='tenants')
    op.drop_table('tenants')
    op.drop_table('workspaces')


"""A replay job that ends ``canceled`` returns its dead-letter entry to ``pending``.

A replay job that fails again returns its entry to ``pending`` (``app/engine/outcomes.py``,
``dead_letter``) and one that succeeds marks it ``replayed``; one that is canceled — by an operator
(``POST /jobengine/jobs/{jobId}/cancel``), at its worker's heartbeat or shutdown, by lease expiry or
by the reconciler — would otherwise leave it ``replaying`` for good, where it can neither be
replayed nor discarded. A row trigger on ``jobs`` covers every path that cancels a job: when a job
with ``replay_of_entry_id`` becomes ``canceled``, its entry, if still ``replaying``, is ``pending``
again (the replay did not happen; its ``replay_count`` stays counted). The dead-letter aggregates
follow through their own triggers.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_RETURN = (
    "UPDATE dead_letter_entries SET status = 'pending', updated_at = NEW.updated_at "
    "WHERE tenant_id = NEW.tenant_id AND entry_id = NEW.replay_of_entry_id AND status = 'replaying'"
)
_WHEN = "NEW.status = 'canceled' AND OLD.status <> 'canceled' AND NEW.replay_of_entry_id IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION jobgate_replay_canceled() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {_RETURN}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER jobs_replay_canceled AFTER UPDATE OF status ON jobs FOR EACH ROW "
            f"WHEN ({_WHEN}) EXECUTE FUNCTION jobgate_replay_canceled()"
        )
    else:
        op.execute(
            "CREATE TRIGGER jobs_replay_canceled AFTER UPDATE OF status ON jobs FOR EACH ROW "
            f"WHEN {_WHEN} BEGIN {_RETURN}; END"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_replay_canceled" + (" ON jobs" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS jobgate_replay_canceled()")

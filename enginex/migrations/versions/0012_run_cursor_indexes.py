"""Session lists page by a row-value cursor (issue 13, item 5): the runs indexes that serve
``ORDER BY created_at DESC, id DESC`` end with ``id``, so ``(created_at, id) < (:at, :id)`` is
one index range scan at any depth.

Replaces ``ix_runs_tenant_id_created_at`` and ``ix_runs_tenant_id_agent_key_created_at``
(``tenant_id`` still leads both). On a large PostgreSQL table, build the new indexes
``CONCURRENTLY`` by hand first (docs/ARCHITECTURE.md "Migrations"); this migration then only
drops the old ones.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 18:30:00.000000
"""

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_tenant_id_created_at_id',
                              ['tenant_id', 'created_at', 'id'], unique=False,
                              if_not_exists=True)
        batch_op.create_index('ix_runs_tenant_id_agent_key_created_at_id',
                              ['tenant_id', 'agent_key', 'created_at', 'id'], unique=False,
                              if_not_exists=True)
        batch_op.drop_index('ix_runs_tenant_id_created_at')
        batch_op.drop_index('ix_runs_tenant_id_agent_key_created_at')


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_tenant_id_agent_key_created_at',
                              ['tenant_id', 'agent_key', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_tenant_id_created_at', ['tenant_id', 'created_at'],
                              unique=False)
        batch_op.drop_index('ix_runs_tenant_id_agent_key_created_at_id')
        batch_op.drop_index('ix_runs_tenant_id_created_at_id')

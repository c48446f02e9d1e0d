"""Lineage of API keys: ``api_keys.parent_key_id``, the key (same organization) that created
a key, for keys created with an API key (docs/MULTI_TENANT.md "API keys created by keys").

A nullable column with a composite foreign key ``(tenant_id, parent_key_id)`` to the same
table, so a parent is always in the child's organization, and an index led by ``tenant_id``
for the revocation cascade. Existing keys get NULL (created by a person), so no row is read
or rewritten. ``api_keys`` keeps its row-level security.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 17:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_key_id', sa.Uuid(), nullable=True))
        batch_op.create_index('ix_api_keys_tenant_id_parent_key_id',
                              ['tenant_id', 'parent_key_id'], unique=False)
        batch_op.create_foreign_key(
            batch_op.f('fk_api_keys_tenant_id_parent_key_id_api_keys'), 'api_keys',
            ['tenant_id', 'parent_key_id'], ['tenant_id', 'id'], ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_api_keys_tenant_id_parent_key_id_api_keys'),
                                 type_='foreignkey')
        batch_op.drop_index('ix_api_keys_tenant_id_parent_key_id')
        batch_op.drop_column('parent_key_id')

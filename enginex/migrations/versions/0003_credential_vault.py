"""Credential vault: master-key registry, per-tenant data keys, credentials.

``vault_master_keys`` is global (fingerprints of master keys, no key material).
``tenant_keys`` and ``credentials`` are tenant-owned: on PostgreSQL they get forced row-level
security with the tenant policy. No SECURITY DEFINER function: maintenance that spans tenants
(key rotation, tenant deletion) works one tenant per transaction (docs/CREDENTIALS.md).

The LLM settings' API key column is unchanged; its ciphertext format becomes the vault format
when the key is next saved or rotated (the interim format stays readable).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

TENANT_TABLES = ["tenant_keys", "credentials"]


def upgrade() -> None:
    op.create_table('vault_master_keys',
    sa.Column('kek_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kek_id', name=op.f('pk_vault_master_keys'))
    )
    op.create_table('tenant_keys',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('kek_id', sa.String(length=32), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_tenant_keys_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'version', name=op.f('pk_tenant_keys'))
    )
    op.create_table('credentials',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('provider', sa.String(length=100), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('hint', sa.String(length=16), nullable=True),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=False),
    sa.Column('value_version', sa.Integer(), nullable=False),
    sa.Column('expires_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('refreshed_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by_kind', sa.String(length=20), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_credentials_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_credentials'))
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index('ix_credentials_tenant_id_key_version', ['tenant_id', 'key_version'], unique=False)
        batch_op.create_index('uq_credentials_tenant_id_name', ['tenant_id', 'name'], unique=True)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index('uq_credentials_tenant_id_name')
        batch_op.drop_index('ix_credentials_tenant_id_key_version')

    op.drop_table('credentials')
    op.drop_table('tenant_keys')
    op.drop_table('vault_master_keys')

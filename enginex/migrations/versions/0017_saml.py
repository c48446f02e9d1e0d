"""SAML sign-in state (issue 14, item 1): ``saml_requests`` (AuthnRequest ids awaiting their
response) and ``saml_seen_assertions`` (the replay cache of accepted assertion ids).

Both tenant-owned: ``tenant_id`` leads the primary keys and the expiry indexes; on PostgreSQL
they get forced row-level security with the tenant policy.

Revision ID: 0017_saml
Revises: 0016_sso
Create Date: 2026-12-07 21:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0017_saml'
down_revision = '0016_sso'
branch_labels = None
depends_on = None

TENANT_TABLES = ["saml_requests", "saml_seen_assertions"]


def upgrade() -> None:
    op.create_table('saml_requests',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('connection_id', sa.Uuid(), nullable=False),
    sa.Column('next_path', sa.String(length=500), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_saml_requests_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'request_id', name=op.f('pk_saml_requests'))
    )
    with op.batch_alter_table('saml_requests', schema=None) as batch_op:
        batch_op.create_index('ix_saml_requests_tenant_id_expires_at', ['tenant_id', 'expires_at'], unique=False)

    op.create_table('saml_seen_assertions',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('connection_id', sa.Uuid(), nullable=False),
    sa.Column('assertion_id', sa.String(length=256), nullable=False),
    sa.Column('expires_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_saml_seen_assertions_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'connection_id', 'assertion_id', name=op.f('pk_saml_seen_assertions'))
    )
    with op.batch_alter_table('saml_seen_assertions', schema=None) as batch_op:
        batch_op.create_index('ix_saml_seen_assertions_tenant_id_expires_at', ['tenant_id', 'expires_at'], unique=False)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('saml_seen_assertions', schema=None) as batch_op:
        batch_op.drop_index('ix_saml_seen_assertions_tenant_id_expires_at')
    op.drop_table('saml_seen_assertions')
    with op.batch_alter_table('saml_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_saml_requests_tenant_id_expires_at')
    op.drop_table('saml_requests')

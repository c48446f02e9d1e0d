"""SCIM 2.0 provisioning and disabled memberships (issue 14, items 5 and 6).

* ``memberships.disabled_at``: a disabled membership gives no access to its organization.
  On PostgreSQL ``enginex_user_memberships`` (the SECURITY DEFINER function the cookie guard
  and the organization list use) now leaves disabled memberships out; the downgrade restores
  the 0001 body.
* ``scim_tokens``, ``scim_users``, ``scim_groups``, ``scim_group_members``: tenant-owned, with
  forced row-level security and the tenant policy (docs/SCIM.md).

Revision ID: 0018_scim
Revises: 0017_saml
Create Date: 2026-12-07 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0018_scim'
down_revision = '0017_saml'
branch_labels = None
depends_on = None

TENANT_TABLES = ["scim_tokens", "scim_users", "scim_groups", "scim_group_members"]

_USER_MEMBERSHIPS = """
    CREATE OR REPLACE FUNCTION enginex_user_memberships(p_user uuid)
    RETURNS TABLE(tenant_id uuid, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        SELECT m.tenant_id, m.role::text FROM public.memberships m
        WHERE m.user_id = p_user{extra}
    $$"""


def upgrade() -> None:
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled_at', enginex.db.UTCDateTime(timezone=True),
                                      nullable=True))
    if is_postgres():
        op.execute(_USER_MEMBERSHIPS.format(extra=" AND m.disabled_at IS NULL"))

    op.create_table('scim_tokens',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('token_digest', sa.LargeBinary(length=32), nullable=False),
    sa.Column('hint', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_scim_tokens_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_scim_tokens_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_scim_tokens'))
    )
    with op.batch_alter_table('scim_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_scim_tokens_tenant_id_created_at', ['tenant_id', 'created_at'], unique=False)
        batch_op.create_index('uq_scim_tokens_tenant_id_token_digest', ['tenant_id', 'token_digest'], unique=True)

    op.create_table('scim_users',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('user_name', sa.String(length=254), nullable=False),
    sa.Column('user_name_key', sa.String(length=254), nullable=False),
    sa.Column('external_id', sa.String(length=254), nullable=True),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'user_id'], ['memberships.tenant_id', 'memberships.user_id'], name=op.f('fk_scim_users_tenant_id_memberships'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_scim_users_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'user_id', name=op.f('pk_scim_users'))
    )
    with op.batch_alter_table('scim_users', schema=None) as batch_op:
        batch_op.create_index('uq_scim_users_tenant_id_external_id', ['tenant_id', 'external_id'], unique=True)
        batch_op.create_index('uq_scim_users_tenant_id_user_name_key', ['tenant_id', 'user_name_key'], unique=True)

    op.create_table('scim_groups',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('display_name_key', sa.String(length=256), nullable=False),
    sa.Column('external_id', sa.String(length=254), nullable=True),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_scim_groups_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_scim_groups'))
    )
    with op.batch_alter_table('scim_groups', schema=None) as batch_op:
        batch_op.create_index('uq_scim_groups_tenant_id_display_name_key', ['tenant_id', 'display_name_key'], unique=True)
        batch_op.create_index('uq_scim_groups_tenant_id_external_id', ['tenant_id', 'external_id'], unique=True)

    op.create_table('scim_group_members',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('group_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('display', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id', 'group_id'], ['scim_groups.tenant_id', 'scim_groups.id'], name=op.f('fk_scim_group_members_tenant_id_scim_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id', 'user_id'], ['memberships.tenant_id', 'memberships.user_id'], name=op.f('fk_scim_group_members_tenant_id_memberships'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_scim_group_members_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'group_id', 'user_id', name=op.f('pk_scim_group_members'))
    )
    with op.batch_alter_table('scim_group_members', schema=None) as batch_op:
        batch_op.create_index('ix_scim_group_members_tenant_id_user_id', ['tenant_id', 'user_id'], unique=False)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('scim_group_members', schema=None) as batch_op:
        batch_op.drop_index('ix_scim_group_members_tenant_id_user_id')
    op.drop_table('scim_group_members')
    with op.batch_alter_table('scim_groups', schema=None) as batch_op:
        batch_op.drop_index('uq_scim_groups_tenant_id_external_id')
        batch_op.drop_index('uq_scim_groups_tenant_id_display_name_key')
    op.drop_table('scim_groups')
    with op.batch_alter_table('scim_users', schema=None) as batch_op:
        batch_op.drop_index('uq_scim_users_tenant_id_user_name_key')
        batch_op.drop_index('uq_scim_users_tenant_id_external_id')
    op.drop_table('scim_users')
    with op.batch_alter_table('scim_tokens', schema=None) as batch_op:
        batch_op.drop_index('uq_scim_tokens_tenant_id_token_digest')
        batch_op.drop_index('ix_scim_tokens_tenant_id_created_at')
    op.drop_table('scim_tokens')
    if is_postgres():
        op.execute(_USER_MEMBERSHIPS.format(extra=""))
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_column('disabled_at')

"""Single sign-on per organization (issue 14): ``sso_connections``, ``sso_identities``,
``email_domains``, ``role_mapping_rules`` (tenant-owned, forced row-level security), the SSO
enforcement columns on ``organizations`` (``require_sso``, ``sso_break_glass_user_id``) and
``auth_sessions.sso_org_id`` (the organization whose SSO opened a session).

``email_domains``: one VERIFIED claim per domain in the whole deployment (partial unique
index). The sign-in page must find the organization of a verified domain before it knows any
tenant: on PostgreSQL through ``enginex_verified_domain_org(text)`` (SECURITY DEFINER, returns
one organization id or nothing) over an owner-only ``platform_read`` policy.

The new columns on ``organizations`` and ``auth_sessions`` are added in place (no table
rebuild on SQLite); existing rows get ``require_sso = false`` and NULLs.

Revision ID: 0016_sso
Revises: 0015_lifecycle
Create Date: 2026-12-07 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0016_sso'
down_revision = '0015_lifecycle'
branch_labels = None
depends_on = None

TENANT_TABLES = ["sso_connections", "sso_identities", "email_domains", "role_mapping_rules"]

DOMAIN_FUNCTION = """
CREATE FUNCTION enginex_verified_domain_org(p_domain text)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.tenant_id FROM public.email_domains d
    WHERE d.domain = p_domain AND d.verified_at IS NOT NULL
$$
"""


def upgrade() -> None:
    op.create_table('sso_connections',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('default_role', sa.String(length=20), nullable=False),
    sa.Column('groups_claim', sa.String(length=200), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_sso_connections_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_sso_connections'))
    )
    with op.batch_alter_table('sso_connections', schema=None) as batch_op:
        batch_op.create_index('uq_sso_connections_tenant_id_name', ['tenant_id', 'name'], unique=True)

    op.create_table('sso_identities',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('connection_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('subject', sa.String(length=500), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id', 'connection_id'], ['sso_connections.tenant_id', 'sso_connections.id'], name=op.f('fk_sso_identities_tenant_id_connection_id_sso_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_sso_identities_tenant_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_sso_identities_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_sso_identities'))
    )
    with op.batch_alter_table('sso_identities', schema=None) as batch_op:
        batch_op.create_index('ix_sso_identities_tenant_id_user_id', ['tenant_id', 'user_id'], unique=False)
        batch_op.create_index('uq_sso_identities_tenant_id_connection_id_issuer_subject', ['tenant_id', 'connection_id', 'issuer', 'subject'], unique=True)

    op.create_table('email_domains',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('verification_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('verified_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('verified_by', sa.Uuid(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_email_domains_tenant_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['verified_by'], ['users.id'], name=op.f('fk_email_domains_verified_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_email_domains'))
    )
    with op.batch_alter_table('email_domains', schema=None) as batch_op:
        batch_op.create_index('uq_email_domains_tenant_id_domain', ['tenant_id', 'domain'], unique=True)
        batch_op.create_index('uq_email_domains_verified_domain', ['domain'], unique=True,
                              sqlite_where=sa.text('verified_at IS NOT NULL'),
                              postgresql_where=sa.text('verified_at IS NOT NULL'))

    op.create_table('role_mapping_rules',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('group_name', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_role_mapping_rules_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_role_mapping_rules'))
    )
    with op.batch_alter_table('role_mapping_rules', schema=None) as batch_op:
        batch_op.create_index('uq_role_mapping_rules_tenant_id_group_name', ['tenant_id', 'group_name'], unique=True)

    # In place (ALTER TABLE ... ADD COLUMN), never a table rebuild of organizations.
    op.add_column('organizations', sa.Column('require_sso', sa.Boolean(), nullable=False,
                                             server_default=sa.false()))
    op.add_column('organizations', sa.Column('sso_break_glass_user_id', sa.Uuid(),
                                             nullable=True))
    op.add_column('auth_sessions', sa.Column('sso_org_id', sa.Uuid(), nullable=True))

    for table in TENANT_TABLES:
        enable_tenant_rls(table)
    if is_postgres():
        op.execute("CREATE POLICY platform_read ON email_domains FOR SELECT TO CURRENT_USER "
                   "USING (true)")
        op.execute(DOMAIN_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION enginex_verified_domain_org(text) FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_verified_domain_org(text)")
        op.execute("DROP POLICY IF EXISTS platform_read ON email_domains")
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    op.drop_column('auth_sessions', 'sso_org_id')
    op.drop_column('organizations', 'sso_break_glass_user_id')
    op.drop_column('organizations', 'require_sso')
    with op.batch_alter_table('role_mapping_rules', schema=None) as batch_op:
        batch_op.drop_index('uq_role_mapping_rules_tenant_id_group_name')
    op.drop_table('role_mapping_rules')
    with op.batch_alter_table('email_domains', schema=None) as batch_op:
        batch_op.drop_index('uq_email_domains_verified_domain',
                            sqlite_where=sa.text('verified_at IS NOT NULL'),
                            postgresql_where=sa.text('verified_at IS NOT NULL'))
        batch_op.drop_index('uq_email_domains_tenant_id_domain')
    op.drop_table('email_domains')
    with op.batch_alter_table('sso_identities', schema=None) as batch_op:
        batch_op.drop_index('uq_sso_identities_tenant_id_connection_id_issuer_subject')
        batch_op.drop_index('ix_sso_identities_tenant_id_user_id')
    op.drop_table('sso_identities')
    with op.batch_alter_table('sso_connections', schema=None) as batch_op:
        batch_op.drop_index('uq_sso_connections_tenant_id_name')
    op.drop_table('sso_connections')

"""Per-organization MCP servers and the platform's stdio MCP catalog (issue 7).

``mcp_catalog`` is platform-wide (no tenant_id, no RLS): the stdio commands the platform admin
approved, with their bounds and ``network`` (off: the process gets no network at all). ``mcp_servers`` is tenant-owned: forced row-level security with the tenant policy.

The platform admin may delete a catalog entry only while no organization's server uses it,
and the refusal says how many servers do. Counting across tenants needs a narrow platform
read on PostgreSQL: ``enginex_mcp_catalog_usage(uuid)`` (SECURITY DEFINER, returns a count
only) through an owner-only ``platform_read`` policy on ``mcp_servers``. The foreign key
(ON DELETE RESTRICT) enforces the rule itself, whoever deletes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TENANT_TABLES = ["mcp_servers"]

USAGE_FUNCTION = """
CREATE FUNCTION enginex_mcp_catalog_usage(p_entry uuid)
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM public.mcp_servers s WHERE s.catalog_id = p_entry
$$
"""


def upgrade() -> None:
    op.create_table('mcp_catalog',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('command', sa.String(length=1000), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('allowed_env', sa.JSON(), nullable=False),
    sa.Column('timeout_seconds', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('network', sa.Boolean(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_catalog')),
    sa.UniqueConstraint('name', name=op.f('uq_mcp_catalog_name'))
    )
    op.create_table('mcp_servers',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('transport', sa.String(length=10), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=True),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('catalog_id', sa.Uuid(), nullable=True),
    sa.Column('env', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('tools', sa.JSON(), nullable=False),
    sa.Column('tools_refreshed_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=2000), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['catalog_id'], ['mcp_catalog.id'], name=op.f('fk_mcp_servers_catalog_id_mcp_catalog'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_mcp_servers_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_mcp_servers'))
    )
    with op.batch_alter_table('mcp_servers', schema=None) as batch_op:
        batch_op.create_index('uq_mcp_servers_tenant_id_name', ['tenant_id', 'name'], unique=True)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)
    if is_postgres():
        op.execute("CREATE POLICY platform_read ON mcp_servers FOR SELECT TO CURRENT_USER "
                   "USING (true)")
        op.execute(USAGE_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION enginex_mcp_catalog_usage(uuid) FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_mcp_catalog_usage(uuid)")
        op.execute("DROP POLICY IF EXISTS platform_read ON mcp_servers")
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('mcp_servers', schema=None) as batch_op:
        batch_op.drop_index('uq_mcp_servers_tenant_id_name')

    op.drop_table('mcp_servers')
    op.drop_table('mcp_catalog')

"""Deletion with a grace period, retention and audit anchors (issue 15, items 3 and 5).

Platform tables: ``org_deletions`` (scheduled deletions and, once done, tombstones: org id,
slug hash, times, who asked; no foreign key, so a tombstone outlives its organization) and
``retention_policies`` (per organization: days to keep finished sessions and audit entries).
Tenant table (forced row-level security): ``audit_anchors`` (where an organization's audit
chain starts after retention deleted its oldest entries: the last deleted entry's seq and
hash, signed).

PostgreSQL: audit entries stay append-only for the app role (no DELETE privilege; the trigger
of 0005 refuses UPDATE and DELETE). Retention trims the oldest entries through
``enginex_audit_trim(tenant, upto_seq)``, a SECURITY DEFINER function that deletes only the
bound tenant's entries up to ``upto_seq`` (row-level security still applies: the owner sees the
tenant of ``app.tenant_id`` only) and tells the trigger so with a transaction-local setting.

Revision ID: 0021_deletion
Revises: 0020_metering
Create Date: 2026-12-08 01:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0021_deletion'
down_revision = '0020_metering'
branch_labels = None
depends_on = None

TENANT_TABLES = ["audit_anchors"]
UTC = enginex.db.UTCDateTime(timezone=True)

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION enginex_audit_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (
            SELECT 1 FROM public.organizations o WHERE o.id = OLD.tenant_id) THEN
        RETURN OLD;  -- the organization is being deleted: its chain goes with it
    END IF;
    IF TG_OP = 'DELETE' AND current_user = '%(owner)s'
            AND current_setting('enginex.audit_trim', true) = OLD.tenant_id::text THEN
        RETURN OLD;  -- retention, through enginex_audit_trim (owner only)
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: %% refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

PREVIOUS_APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION enginex_audit_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (
            SELECT 1 FROM public.organizations o WHERE o.id = OLD.tenant_id) THEN
        RETURN OLD;  -- the organization is being deleted: its chain goes with it
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

TRIM_FUNCTION = """
CREATE FUNCTION enginex_audit_trim(p_tenant uuid, p_upto integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deleted integer;
BEGIN
    IF p_tenant IS DISTINCT FROM
            NULLIF(current_setting('app.tenant_id', true), '')::uuid THEN
        RAISE EXCEPTION 'enginex_audit_trim: the transaction is bound to another tenant'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('enginex.audit_trim', p_tenant::text, true);
    DELETE FROM public.audit_entries WHERE tenant_id = p_tenant AND seq <= p_upto;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('enginex.audit_trim', '', true);
    RETURN deleted;
END
$$
"""


def upgrade() -> None:
    op.create_table('org_deletions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('slug_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('previous_status', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sa.Uuid(), nullable=True),
    sa.Column('requested_by_kind', sa.String(length=20), nullable=False),
    sa.Column('requested_at', UTC, nullable=False),
    sa.Column('hard_delete_at', UTC, nullable=False),
    sa.Column('restored_by', sa.Uuid(), nullable=True),
    sa.Column('restored_at', UTC, nullable=True),
    sa.Column('started_at', UTC, nullable=True),
    sa.Column('deleted_at', UTC, nullable=True),
    sa.Column('rows_deleted', sa.BigInteger(), nullable=False),
    sa.Column('data_keys_destroyed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_org_deletions'))
    )
    op.create_index('ix_org_deletions_org_id', 'org_deletions', ['org_id'], unique=False)
    op.create_index('ix_org_deletions_status_hard_delete_at', 'org_deletions',
                    ['status', 'hard_delete_at'], unique=False)
    op.create_table('retention_policies',
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('session_days', sa.Integer(), nullable=True),
    sa.Column('audit_days', sa.Integer(), nullable=True),
    sa.Column('updated_at', UTC, nullable=False),
    sa.Column('updated_by', sa.Uuid(), nullable=True),
    sa.Column('last_applied_at', UTC, nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_retention_policies_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('org_id', name=op.f('pk_retention_policies'))
    )
    op.create_table('audit_anchors',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('at', UTC, nullable=False),
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('updated_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_audit_anchors_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_audit_anchors'))
    )
    for table in TENANT_TABLES:
        enable_tenant_rls(table)
    if is_postgres():
        owner = op.get_bind().exec_driver_sql("SELECT current_user").scalar_one()
        op.execute(APPEND_ONLY_FUNCTION % {"owner": str(owner).replace("'", "''")})
        op.execute(TRIM_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION enginex_audit_trim(uuid, integer) FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_audit_trim(uuid, integer)")
        op.execute(PREVIOUS_APPEND_ONLY_FUNCTION)
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    op.drop_table('audit_anchors')
    op.drop_table('retention_policies')
    op.drop_index('ix_org_deletions_status_hard_delete_at', table_name='org_deletions')
    op.drop_index('ix_org_deletions_org_id', table_name='org_deletions')
    op.drop_table('org_deletions')

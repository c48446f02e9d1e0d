"""Deletion with a grace period, retention and audit anchors (issue 15, items 3 and 5).

Platform tables: ``org_deletions`` (scheduled deletions and, once done, tombstones: org id,
slug hash, times, who asked; no foreign key, so a tombstone outlives its organization) and
``retention_policies`` (per organization: days to keep finished sessions and audit entries).
Tenant table (forced row-level security): ``audit_anchors`` (where an organization's audit
chain starts after retention deleted its oldest entries: the last deleted entry's seq and
hash, signed).

Revision ID: 0021_deletion
Revises: 0020_metering
Create Date: 2026-12-08 01:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0021_deletion'
down_revision = '0020_metering'
branch_labels = None
depends_on = None

TENANT_TABLES = ["audit_anchors"]
UTC = enginex.db.UTCDateTime(timezone=True)


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


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    op.drop_table('audit_anchors')
    op.drop_table('retention_policies')
    op.drop_index('ix_org_deletions_status_hard_delete_at', table_name='org_deletions')
    op.drop_index('ix_org_deletions_org_id', table_name='org_deletions')
    op.drop_table('org_deletions')

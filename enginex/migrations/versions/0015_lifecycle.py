"""Data life cycle (issue 15): tenant exports and the life-cycle job queue.

``tenant_exports`` is tenant-owned (forced row-level security with the tenant policy);
``lifecycle_jobs`` is platform data holding ids only (docs/DATA_LIFECYCLE.md).

Revision ID: 0015_lifecycle
Revises: 0014_accounts
Create Date: 2026-12-07 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0015_lifecycle'
down_revision = '0014_accounts'
branch_labels = None
depends_on = None

TENANT_TABLES = ["tenant_exports"]


def upgrade() -> None:
    op.create_table('tenant_exports',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sa.Uuid(), nullable=True),
    sa.Column('requested_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('current_kind', sa.String(length=40), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('expires_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('link_digest', sa.LargeBinary(length=32), nullable=True),
    sa.Column('link_expires_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('downloads', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_tenant_exports_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_tenant_exports'))
    )
    with op.batch_alter_table('tenant_exports', schema=None) as batch_op:
        batch_op.create_index('ix_tenant_exports_tenant_id_requested_at', ['tenant_id', 'requested_at'], unique=False)
        batch_op.create_index('uq_tenant_exports_tenant_id_link_digest', ['tenant_id', 'link_digest'], unique=True)

    op.create_table('lifecycle_jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('target_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('run_after', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_expires_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=2000), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_lifecycle_jobs_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lifecycle_jobs'))
    )
    with op.batch_alter_table('lifecycle_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_lifecycle_jobs_status_run_after', ['status', 'run_after'], unique=False)
        batch_op.create_index('ix_lifecycle_jobs_org_id', ['org_id'], unique=False)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('lifecycle_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_lifecycle_jobs_org_id')
        batch_op.drop_index('ix_lifecycle_jobs_status_run_after')
    op.drop_table('lifecycle_jobs')
    with op.batch_alter_table('tenant_exports', schema=None) as batch_op:
        batch_op.drop_index('uq_tenant_exports_tenant_id_link_digest')
        batch_op.drop_index('ix_tenant_exports_tenant_id_requested_at')
    op.drop_table('tenant_exports')

"""Per-organization skills (SKILL.md bundles) (issue 7).

``skills`` is tenant-owned: on PostgreSQL it gets forced row-level security with the tenant
policy (docs/SKILLS.md).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

TENANT_TABLES = ["skills"]


def upgrade() -> None:
    op.create_table('skills',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=1024), nullable=False),
    sa.Column('instructions', sa.Text(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_skills_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_skills'))
    )
    with op.batch_alter_table('skills', schema=None) as batch_op:
        batch_op.create_index('uq_skills_tenant_id_name', ['tenant_id', 'name'], unique=True)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('skills', schema=None) as batch_op:
        batch_op.drop_index('uq_skills_tenant_id_name')

    op.drop_table('skills')

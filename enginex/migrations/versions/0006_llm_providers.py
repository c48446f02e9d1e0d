"""Per-organization LLM providers and model aliases (issue 7).

``llm_providers``: named providers (kind, base URL, the *name* of the org credential holding
the key, allowed models). ``model_aliases``: model names agents use, mapped to a provider and
a model. Both are tenant-owned: forced row-level security on PostgreSQL. ``llm_settings``
(the quick setup) is unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TENANT_TABLES = ["llm_providers", "model_aliases"]


def upgrade() -> None:
    op.create_table('llm_providers',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('base_url', sa.String(length=500), nullable=True),
    sa.Column('credential_name', sa.String(length=64), nullable=True),
    sa.Column('allowed_models', sa.JSON(), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_llm_providers_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_llm_providers'))
    )
    with op.batch_alter_table('llm_providers', schema=None) as batch_op:
        batch_op.create_index('uq_llm_providers_tenant_id_name', ['tenant_id', 'name'], unique=True)

    op.create_table('model_aliases',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('provider_id', sa.Uuid(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('temperature', sa.Double(), nullable=True),
    sa.Column('max_tokens', sa.Integer(), nullable=True),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_model_aliases_tenant_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id', 'provider_id'], ['llm_providers.tenant_id', 'llm_providers.id'], name=op.f('fk_model_aliases_tenant_id_provider_id_llm_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'name', name=op.f('pk_model_aliases'))
    )
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.create_index('ix_model_aliases_tenant_id_provider_id', ['tenant_id', 'provider_id'], unique=False)

    for table in TENANT_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_index('ix_model_aliases_tenant_id_provider_id')

    op.drop_table('model_aliases')
    with op.batch_alter_table('llm_providers', schema=None) as batch_op:
        batch_op.drop_index('uq_llm_providers_tenant_id_name')

    op.drop_table('llm_providers')

"""Erasure of a person (issue 15, item 4): ``user_erasures``, a platform table; and
``tenant_exports.secrets_recipient`` (an export with credentials' values sealed to an import
key, item 1).

It holds account ids (pseudonyms once the account is gone), statuses and times; an e-mail
address only while an erasure runs. Existing audit entries are not touched: they name people
by account id only, so no hashed content has to change (docs/DATA_LIFECYCLE.md "Erasure").

Revision ID: 0022_erasure
Revises: 0020_metering
Create Date: 2026-12-08 01:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db

revision = '0022_erasure'
down_revision = '0021_deletion'
branch_labels = None
depends_on = None

OPEN = "status IN ('requested', 'erasing')"


def upgrade() -> None:
    op.create_table('user_erasures',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('self_requested', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('requested_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.Uuid(), nullable=True),
    sa.Column('decided_by_kind', sa.String(length=20), nullable=True),
    sa.Column('decided_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('decline_reason', sa.String(length=500), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('last_org_id', sa.Uuid(), nullable=True),
    sa.Column('orgs_done', sa.Integer(), nullable=False),
    sa.Column('orgs_affected', sa.Integer(), nullable=False),
    sa.Column('finished_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_erasures'))
    )
    with op.batch_alter_table('tenant_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secrets_recipient', sa.String(length=120), nullable=True))
    with op.batch_alter_table('user_erasures', schema=None) as batch_op:
        batch_op.create_index('ix_user_erasures_user_id', ['user_id'], unique=False)
        batch_op.create_index('ix_user_erasures_status_requested_at', ['status', 'requested_at'],
                              unique=False)
        batch_op.create_index('uq_user_erasures_open_user_id', ['user_id'], unique=True,
                              sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))


def downgrade() -> None:
    with op.batch_alter_table('user_erasures', schema=None) as batch_op:
        batch_op.drop_index('uq_user_erasures_open_user_id', sqlite_where=sa.text(OPEN),
                            postgresql_where=sa.text(OPEN))
        batch_op.drop_index('ix_user_erasures_status_requested_at')
        batch_op.drop_index('ix_user_erasures_user_id')
    op.drop_table('user_erasures')
    with op.batch_alter_table('tenant_exports', schema=None) as batch_op:
        batch_op.drop_column('secrets_recipient')

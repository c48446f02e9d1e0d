"""Allowed hosts of credentials: ``credentials.allowed_hosts`` (a JSON list of host
patterns, docs/CREDENTIALS.md "Allowed hosts").

Existing credentials get ``[]`` (may be sent to any host, as before) through the column's
server default, so no row is read or rewritten: on PostgreSQL the forced tenant policy would
hide them from the owner role anyway. ``credentials`` keeps its row-level security.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_hosts', sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_column('allowed_hosts')

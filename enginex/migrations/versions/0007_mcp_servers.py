"""Per-organization MCP servers and the platform's stdio MCP catalog (issue 7).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 22:00:00.000000
"""

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Every cursor-paginated list pages by ``(created_at, id) < (:at, :id)`` (issue 13, item 5):
each list's index is ``(tenant_id, created_at, id)`` so the row-value condition bounds one
index range scan at any depth, as 0012 did for sessions.

New: members (``(tenant_id, created_at, user_id)``; a membership's id is its user), agents,
and approvals without a status filter. Replaced (same leading columns, ``id`` appended): API
keys, invitations, approvals by status, and reports (``artifacts``). On a large PostgreSQL
table, build the new indexes ``CONCURRENTLY`` by hand first (docs/ARCHITECTURE.md
"Migrations"); ``if_not_exists`` then skips them and this migration only drops the old ones.

Revision ID: 0019_list_cursors
Revises: 0018_scim
Create Date: 2026-12-07 21:30:00.000000
"""

from alembic import op

revision = '0019_list_cursors'
down_revision = '0018_scim'
branch_labels = None
depends_on = None

# (table, new index, its columns, the index it replaces or None)
INDEXES: list[tuple[str, str, list[str], tuple[str, list[str]] | None]] = [
    ('memberships', 'ix_memberships_tenant_id_created_at_user_id',
     ['tenant_id', 'created_at', 'user_id'], None),
    ('agents', 'ix_agents_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'], None),
    ('approvals', 'ix_approvals_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'],
     None),
    ('approvals', 'ix_approvals_tenant_id_status_created_at_id',
     ['tenant_id', 'status', 'created_at', 'id'],
     ('ix_approvals_tenant_id_status_created_at', ['tenant_id', 'status', 'created_at'])),
    ('api_keys', 'ix_api_keys_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'],
     ('ix_api_keys_tenant_id_created_at', ['tenant_id', 'created_at'])),
    ('invitations', 'ix_invitations_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'],
     ('ix_invitations_tenant_id_created_at', ['tenant_id', 'created_at'])),
    ('artifacts', 'ix_artifacts_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'],
     ('ix_artifacts_tenant_id_created_at', ['tenant_id', 'created_at'])),
]


def upgrade() -> None:
    for table, name, columns, replaced in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False, if_not_exists=True)
            if replaced is not None:
                batch_op.drop_index(replaced[0])


def downgrade() -> None:
    for table, name, _columns, replaced in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            if replaced is not None:
                batch_op.create_index(replaced[0], replaced[1], unique=False)
            batch_op.drop_index(name)

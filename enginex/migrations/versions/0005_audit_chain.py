"""Audit chain: per-organization seq and SHA-256 hash chain on ``audit_entries``, the
``audit_heads`` table an append locks, and (PostgreSQL) a trigger that keeps audit entries
append-only.

Existing entries are chained in (at, id) order, one organization at a time. On PostgreSQL the
app role also loses UPDATE and DELETE on ``audit_entries`` (enginex/migrate.py, applied after
every upgrade). The trigger refuses UPDATE always, and DELETE unless the entry's organization
row no longer exists: that is the ON DELETE CASCADE of a tenant deletion, which removes the
whole chain with its tenant (docs: enginex/audit/service.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 20:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.audit.chain import GENESIS, hash_of
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION enginex_audit_append_only() RETURNS trigger
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

TRUNCATE_FUNCTION = """
CREATE FUNCTION enginex_audit_no_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table('audit_heads',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_audit_heads_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_audit_heads'))
    )
    enable_tenant_rls('audit_heads')
    with op.batch_alter_table('audit_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
    _chain_existing_entries()
    with op.batch_alter_table('audit_entries', schema=None) as batch_op:
        batch_op.alter_column('seq', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index('ix_audit_entries_tenant_id_seq', ['tenant_id', 'seq'],
                              unique=True)
    if is_postgres():
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(TRUNCATE_FUNCTION)
        op.execute("CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON "
                   "audit_entries FOR EACH ROW EXECUTE FUNCTION enginex_audit_append_only()")
        op.execute("CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries "
                   "FOR EACH STATEMENT EXECUTE FUNCTION enginex_audit_no_truncate()")


_entries = sa.table(
    'audit_entries',
    sa.column('tenant_id', sa.Uuid()), sa.column('id', sa.Uuid()), sa.column('seq', sa.Integer()),
    sa.column('at', enginex.db.UTCDateTime(timezone=True)),
    sa.column('actor_kind', sa.String()), sa.column('actor_id', sa.Uuid()),
    sa.column('action', sa.String()), sa.column('target_kind', sa.String()),
    sa.column('target_id', sa.String()), sa.column('details', sa.JSON()),
    sa.column('prev_hash', sa.String()), sa.column('hash', sa.String()),
)
_heads = sa.table('audit_heads', sa.column('tenant_id', sa.Uuid()),
                  sa.column('last_seq', sa.Integer()), sa.column('last_hash', sa.String()))


class _Row:
    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


def _chain_existing_entries() -> None:
    """Chain the entries written before this migration, per organization in (at, id) order.
    On PostgreSQL the owner is subject to the forced tenant policy, so each organization's
    rows are read with app.tenant_id set to it (transaction-local)."""
    bind = op.get_bind()
    org_ids = bind.execute(sa.select(sa.column('id', sa.Uuid())).select_from(
        sa.table('organizations'))).scalars().all()
    for org_id in org_ids:
        if is_postgres():
            bind.execute(sa.text("SELECT set_config('app.tenant_id', :t, true)"),
                         {"t": str(org_id)})
        rows = bind.execute(sa.select(_entries).where(_entries.c.tenant_id == org_id)
                            .order_by(_entries.c.at, _entries.c.id)).mappings().all()
        prev_hash = GENESIS
        for seq, row in enumerate(rows, start=1):
            entry = _Row(**{**row, "seq": seq, "details": row["details"] or {}})
            digest = hash_of(entry, prev_hash)
            bind.execute(sa.update(_entries)
                         .where(_entries.c.tenant_id == org_id, _entries.c.id == row["id"])
                         .values(seq=seq, prev_hash=prev_hash, hash=digest,
                                 details=entry.details))
            prev_hash = digest
        if rows:
            bind.execute(sa.insert(_heads).values(tenant_id=org_id, last_seq=len(rows),
                                                  last_hash=prev_hash))
    if is_postgres():
        bind.execute(sa.text("SELECT set_config('app.tenant_id', '', true)"))


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP TRIGGER IF EXISTS audit_entries_no_truncate ON audit_entries")
        op.execute("DROP TRIGGER IF EXISTS audit_entries_append_only ON audit_entries")
        op.execute("DROP FUNCTION IF EXISTS enginex_audit_no_truncate()")
        op.execute("DROP FUNCTION IF EXISTS enginex_audit_append_only()")
    with op.batch_alter_table('audit_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_entries_tenant_id_seq')
        batch_op.drop_column('hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('seq')
    disable_tenant_rls('audit_heads')
    op.drop_table('audit_heads')

"""The ORM tenant guard (enginex/db.py), on SQLite and PostgreSQL.

On SQLite this guard is the only data-layer defence, so these tests use the application's own
Database and sessions directly: a statement that touches a tenant-owned table without a tenant
raises, a tenant's session never sees or writes another tenant's rows -- whether or not the
query filters on tenant_id -- and a session or repository cannot be pointed at a second tenant.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    delete,
    exists,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

import enginex.models  # noqa: F401 - registers every model
from enginex.auth.models import User
from enginex.config import Settings
from enginex.db import Database, TenantContextMissing, session_tenant, set_tenant
from enginex.kit.time import utcnow
from enginex.orgs.models import Invitation, Membership, Organization
from enginex.orgs.repository import InvitationRepository, MembershipRepository
from enginex.tenancy.context import system_context

B_ONLY_ROLE = "b-secret-role"  # the role of B's own member: a canary in every result


@dataclass(frozen=True)
class Tenants:
    a: uuid.UUID
    b: uuid.UUID
    user: uuid.UUID  # a member of both
    user_b: uuid.UUID  # a member of B only
    invitation_b: uuid.UUID


def run(settings: Settings, work: Callable[[Database], Awaitable[Any]]) -> Any:
    """Run ``work(db)`` on a fresh Database of the app (its own engine and pool)."""
    async def main() -> Any:
        db = Database(settings)
        try:
            return await work(db)
        finally:
            await db.dispose()
    return asyncio.run(main())


async def _seed(db: Database) -> Tenants:
    tag = secrets.token_hex(4)
    async with db.sessions() as session, session.begin():
        orgs = [Organization(slug=f"guard-{x}-{tag}", name=f"Guard {x}") for x in "ab"]
        user = User(email=f"guard-{tag}@example.org", password_hash=None)
        user_b = User(email=f"guard-b-{tag}@example.org", password_hash=None)
        session.add_all([*orgs, user, user_b])
    invitation_ids = []
    for org in orgs:
        async with db.sessions() as session, session.begin():
            await set_tenant(session, org.id)
            session.add(Membership(user_id=user.id, role="admin"))
            if org is orgs[1]:
                session.add(Membership(user_id=user_b.id, role=B_ONLY_ROLE))
            invitation = Invitation(email=f"x-{tag}@example.org", role="viewer",
                                    token_digest=secrets.token_bytes(32),
                                    expires_at=utcnow())
            session.add(invitation)
            await session.flush()
            invitation_ids.append(invitation.id)
    return Tenants(a=orgs[0].id, b=orgs[1].id, user=user.id, user_b=user_b.id,
                   invitation_b=invitation_ids[1])


@pytest.fixture
def tenants(settings: Settings) -> Tenants:
    return run(settings, _seed)


def unscoped_statements(t: Tenants) -> dict[str, Any]:
    """Statements touching memberships/invitations in every position the guard must see."""
    return {
        "entity": select(Membership),
        "column": select(Membership.role),
        "count": select(func.count()).select_from(Membership),
        "join": select(User).join(Membership, Membership.user_id == User.id),
        "subquery": select(User).where(User.id.in_(select(Membership.user_id))),
        "exists": select(User).where(exists().where(Invitation.email == User.email)),
        "update": update(Membership).values(role="viewer"),
        "delete": delete(Invitation),
        "insert": insert(Membership).values(tenant_id=t.a, user_id=uuid.uuid4(), role="x"),
    }


def test_statements_without_a_tenant_raise(settings: Settings, tenants: Tenants) -> None:
    async def work(db: Database) -> list[str]:
        raised = []
        for name, statement in unscoped_statements(tenants).items():
            async with db.sessions() as session:
                with pytest.raises(TenantContextMissing):
                    await session.execute(statement)
                raised.append(name)
        async with db.sessions() as session:
            with pytest.raises(TenantContextMissing):
                await session.get(Membership, (tenants.a, tenants.user))
            session.add(Membership(tenant_id=tenants.a, user_id=tenants.user, role="viewer"))
            with pytest.raises(TenantContextMissing):
                await session.flush()
        return raised

    assert run(settings, work) == list(unscoped_statements(tenants))


def test_a_tenant_sees_only_its_rows_even_without_a_filter(settings: Settings,
                                                           tenants: Tenants) -> None:
    async def work(db: Database) -> None:
        async with db.sessions() as session:
            await set_tenant(session, tenants.a)
            rows = (await session.execute(select(Membership))).scalars().all()
            assert [(m.tenant_id, m.user_id) for m in rows] == [(tenants.a, tenants.user)]
            asked_for_b = select(Invitation).where(Invitation.tenant_id == tenants.b)
            assert (await session.execute(asked_for_b)).scalars().all() == []
            by_id = select(Invitation).where(Invitation.id == tenants.invitation_b)
            assert (await session.execute(by_id)).scalars().all() == []
            assert await session.get(Invitation, (tenants.b, tenants.invitation_b)) is None
            assert await session.get(Membership, (tenants.b, tenants.user)) is None
            count = select(func.count()).select_from(Membership)
            assert (await session.execute(count)).scalar_one() == 1
            joined = select(User.id).join(Membership, Membership.user_id == User.id)
            assert (await session.execute(joined)).scalars().all() == [tenants.user]
            in_b = select(User.id).where(exists().where(
                Membership.user_id == User.id, Membership.tenant_id == tenants.b))
            assert (await session.execute(in_b)).scalars().all() == []
            # bulk writes aimed at B's rows touch nothing
            moved = await session.execute(update(Invitation)
                                          .where(Invitation.id == tenants.invitation_b)
                                          .values(email="hijacked@example.org"))
            removed = await session.execute(delete(Membership)
                                            .where(Membership.tenant_id == tenants.b))
            assert (moved.rowcount, removed.rowcount) == (0, 0)
            await session.commit()
        async with db.sessions() as session:
            await set_tenant(session, tenants.b)
            invitation = await session.get(Invitation, (tenants.b, tenants.invitation_b))
            assert invitation is not None and invitation.email != "hijacked@example.org"
            assert await session.get(Membership, (tenants.b, tenants.user)) is not None

    run(settings, work)


def test_writing_a_row_of_another_tenant_raises(settings: Settings, tenants: Tenants) -> None:
    async def bound_to_a(db: Database) -> AsyncSession:
        session = db.sessions()
        await set_tenant(session, tenants.a)
        return session

    async def work(db: Database) -> int:
        refused = 0
        attempts: list[Callable[[AsyncSession], Awaitable[Any]]] = [
            lambda s: _add_and_flush(s, Membership(tenant_id=tenants.b, user_id=tenants.user,
                                                   role="admin")),
            lambda s: _move_own_row_to(s, tenants),
            lambda s: s.execute(insert(Membership).values(tenant_id=tenants.b,
                                                          user_id=tenants.user, role="admin")),
            lambda s: s.execute(insert(Membership),
                                [{"tenant_id": tenants.b, "user_id": tenants.user,
                                  "role": "admin", "created_at": utcnow()}]),
            lambda s: s.execute(update(Membership).values(tenant_id=tenants.b)),
            lambda s: s.execute(update(Membership),
                                [{"tenant_id": tenants.b, "user_id": tenants.user,
                                  "role": "viewer"}]),
            lambda s: s.execute(select(Membership.__table__)),
            lambda s: s.execute(update(Membership.__table__).values(role="viewer")),
        ]
        for attempt in attempts:
            session = await bound_to_a(db)
            try:
                with pytest.raises(TenantContextMissing):
                    await attempt(session)
                refused += 1
            finally:
                await session.close()
        async with db.sessions() as session:
            await set_tenant(session, tenants.b)
            rows = (await session.execute(select(Membership))).scalars().all()
            assert sorted((m.user_id, m.role) for m in rows) == sorted(
                [(tenants.user, "admin"), (tenants.user_b, B_ONLY_ROLE)])
        async with db.sessions() as session:
            await set_tenant(session, tenants.a)
            rows = (await session.execute(select(Membership))).scalars().all()
            assert [(m.tenant_id, m.role) for m in rows] == [(tenants.a, "admin")]
        return refused

    assert run(settings, work) == 8


async def _add_and_flush(session: AsyncSession, obj: object) -> None:
    session.add(obj)
    await session.flush()


async def _move_own_row_to(session: AsyncSession, tenants: Tenants) -> None:
    own = await session.get(Membership, (tenants.a, tenants.user))
    assert own is not None
    own.tenant_id = tenants.b
    await session.flush()


def test_a_new_row_takes_the_session_tenant(settings: Settings, tenants: Tenants) -> None:
    async def work(db: Database) -> uuid.UUID:
        async with db.sessions() as session, session.begin():
            await set_tenant(session, tenants.a)
            invitation = Invitation(email="new@example.org", role="viewer",
                                    token_digest=secrets.token_bytes(32), expires_at=utcnow())
            session.add(invitation)
            await session.flush()
            return invitation.tenant_id

    assert run(settings, work) == tenants.a


def test_a_session_cannot_be_rebound_to_another_tenant(settings: Settings,
                                                      tenants: Tenants) -> None:
    async def work(db: Database) -> None:
        async with db.sessions() as session:
            await set_tenant(session, tenants.a)
            await set_tenant(session, tenants.a)  # the same tenant again is fine
            with pytest.raises(TenantContextMissing):
                await set_tenant(session, tenants.b)
            assert session_tenant(session) == tenants.a
            await session.commit()
            # still bound after commit: the next transaction gets the same tenant back
            with pytest.raises(TenantContextMissing):
                await set_tenant(session, tenants.b)
            rows = (await session.execute(select(Membership.tenant_id))).scalars().all()
            assert rows == [tenants.a]

    run(settings, work)


def test_scoped_repository_refuses_a_context_of_another_tenant(settings: Settings,
                                                              tenants: Tenants) -> None:
    ctx_a = system_context(tenants.a, "a")
    ctx_b = system_context(tenants.b, "b")

    async def work(db: Database) -> None:
        async with db.sessions() as session:
            with pytest.raises(TenantContextMissing):
                MembershipRepository(session, ctx_a)  # session bound to no tenant
            await set_tenant(session, tenants.a)
            with pytest.raises(TenantContextMissing):
                MembershipRepository(session, ctx_b)
            with pytest.raises(TenantContextMissing):
                InvitationRepository(session, ctx_b)
            own = MembershipRepository(session, ctx_a)
            assert await own.get_member(tenants.user) is not None
            invitations = InvitationRepository(session, ctx_a)
            assert await invitations.get(tenants.invitation_b) is None

    run(settings, work)


def query_shapes() -> dict[str, Any]:
    """Ways to reach memberships: each must be filtered to the session's tenant or refused.

    Only memberships carry B's canaries (B's id, its B-only member, its role); users are global.
    """
    member_ids = select(Membership.user_id)
    members = member_ids.subquery()
    return {
        "entity": select(Membership),
        "columns": select(Membership.user_id, Membership.role),
        "aliased": select(aliased(Membership)),
        "aliased subquery": select(aliased(Membership, select(Membership).subquery())),
        "join": select(User.id, User.email).join(Membership, Membership.user_id == User.id),
        "join subquery": select(User.email, members.c.user_id).join(
            members, members.c.user_id == User.id),
        "in subquery": select(User.id).where(User.id.in_(member_ids)),
        "exists": select(User.id).where(exists().where(Membership.user_id == User.id)),
        "scalar subquery": select(User.email, select(Membership.role).where(
            Membership.user_id == User.id).limit(1).scalar_subquery()),
        "group by": select(Membership.role, func.count()).group_by(Membership.role),
        "aggregate": select(func.max(Membership.role)),
        "derived table": select(member_ids.subquery().c.user_id),
        "cte": select(member_ids.cte().c.user_id),
        "cte in where": select(User.id).where(User.id.in_(select(member_ids.cte().c.user_id))),
        "union": union_all(member_ids, select(User.id)),
        "from_statement": select(Membership).from_statement(
            text("SELECT * FROM memberships")),
        "bare table": select(Membership.__table__),
        "bare column": select(Membership.__table__.c.role),
    }


REFUSED_SHAPES = {"derived table", "cte", "cte in where", "union", "from_statement",
                  "bare table", "bare column"}


def _values(row: Any) -> list[object]:
    out: list[object] = []
    for value in row:
        mapper = getattr(sa_inspect(value, raiseerr=False), "mapper", None)
        out += [getattr(value, a.key) for a in mapper.column_attrs] if mapper else [value]
    return out


def test_every_query_shape_is_filtered_to_the_tenant_or_refused(
        settings: Settings, tenants: Tenants) -> None:
    canaries = {tenants.b, tenants.user_b, B_ONLY_ROLE}

    async def work(db: Database) -> tuple[set[str], set[str]]:
        refused, filtered = set(), set()
        for name, statement in query_shapes().items():
            async with db.sessions() as session:  # without a tenant, every shape raises
                with pytest.raises(TenantContextMissing):
                    await session.execute(statement)
            async with db.sessions() as session:
                await set_tenant(session, tenants.a)
                try:
                    rows = (await session.execute(statement)).all()
                except TenantContextMissing:
                    refused.add(name)
                    continue
                seen = {v for row in rows for v in _values(row)}
                assert not seen & canaries, (name, seen & canaries)
                filtered.add(name)
        return refused, filtered

    refused, filtered = run(settings, work)
    assert refused == REFUSED_SHAPES
    assert filtered == set(query_shapes()) - REFUSED_SHAPES

"""Queries of the SSO tables (scoped to one tenant), and the one platform-wide read: which
organization verified an email domain."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth.models import AuthSession
from enginex.orgs.models import Membership
from enginex.sso.models import EmailDomain, RoleMappingRule, SsoConnection, SsoIdentity
from enginex.tenancy.repository import ScopedRepository


class ConnectionRepository(ScopedRepository[SsoConnection]):
    model = SsoConnection

    async def list(self) -> list[SsoConnection]:
        stmt = (select(SsoConnection).where(SsoConnection.tenant_id == self.ctx.org_id)
                .order_by(SsoConnection.name))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> SsoConnection | None:
        stmt = select(SsoConnection).where(SsoConnection.tenant_id == self.ctx.org_id,
                                           SsoConnection.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def first_enabled(self) -> SsoConnection | None:
        """The enabled connection sign-in uses (by name when there are several)."""
        stmt = (select(SsoConnection).where(SsoConnection.tenant_id == self.ctx.org_id,
                                            SsoConnection.enabled.is_(True))
                .order_by(SsoConnection.name).limit(1))
        return (await self.db.execute(stmt)).scalar_one_or_none()


class IdentityRepository(ScopedRepository[SsoIdentity]):
    model = SsoIdentity

    async def find(self, connection_id: uuid.UUID, issuer: str,
                   subject: str) -> SsoIdentity | None:
        stmt = select(SsoIdentity).where(SsoIdentity.tenant_id == self.ctx.org_id,
                                         SsoIdentity.connection_id == connection_id,
                                         SsoIdentity.issuer == issuer,
                                         SsoIdentity.subject == subject)
        return (await self.db.execute(stmt)).scalar_one_or_none()


class DomainRepository(ScopedRepository[EmailDomain]):
    model = EmailDomain

    async def list(self) -> list[EmailDomain]:
        stmt = (select(EmailDomain).where(EmailDomain.tenant_id == self.ctx.org_id)
                .order_by(EmailDomain.domain))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_domain(self, domain: str) -> EmailDomain | None:
        stmt = select(EmailDomain).where(EmailDomain.tenant_id == self.ctx.org_id,
                                         EmailDomain.domain == domain)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def delete(self, domain: EmailDomain) -> None:
        await self.db.execute(delete(EmailDomain).where(EmailDomain.tenant_id == self.ctx.org_id,
                                                        EmailDomain.id == domain.id))


class RuleRepository(ScopedRepository[RoleMappingRule]):
    model = RoleMappingRule

    async def list(self) -> list[RoleMappingRule]:
        stmt = (select(RoleMappingRule).where(RoleMappingRule.tenant_id == self.ctx.org_id)
                .order_by(RoleMappingRule.priority, RoleMappingRule.group_name))
        return list((await self.db.execute(stmt)).scalars())

    async def delete(self, rule: RoleMappingRule) -> None:
        await self.db.execute(delete(RoleMappingRule).where(
            RoleMappingRule.tenant_id == self.ctx.org_id, RoleMappingRule.id == rule.id))


class MemberRepository(ScopedRepository[Membership]):
    """The membership reads and writes SSO needs (JIT provisioning, role mapping, enforcement)."""

    model = Membership

    async def get_for_update(self, user_id: uuid.UUID) -> Membership | None:
        stmt = (select(Membership).where(Membership.tenant_id == self.ctx.org_id,
                                         Membership.user_id == user_id)
                .with_for_update().execution_options(populate_existing=True))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def count_admins(self) -> int:
        stmt = select(func.count()).select_from(Membership).where(
            Membership.tenant_id == self.ctx.org_id, Membership.role == "admin")
        return int((await self.db.execute(stmt)).scalar_one())

    async def member_ids(self) -> list[uuid.UUID]:
        stmt = select(Membership.user_id).where(Membership.tenant_id == self.ctx.org_id)
        return list((await self.db.execute(stmt)).scalars())


async def end_sessions_without_sso(db: AsyncSession, user_ids: list[uuid.UUID],
                                   org_id: uuid.UUID) -> int:
    """Delete the browser sessions of ``user_ids`` that ``org_id``'s SSO did not open
    (``auth_sessions`` is a global table); returns how many."""
    if not user_ids:
        return 0
    result = await db.execute(
        delete(AuthSession).where(AuthSession.user_id.in_(user_ids),
                                  (AuthSession.sso_org_id.is_(None))
                                  | (AuthSession.sso_org_id != org_id)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def session_sso_org(db: AsyncSession, session_id: uuid.UUID) -> uuid.UUID | None:
    """The organization whose SSO opened browser session ``session_id`` (None: password)."""
    stmt = select(AuthSession.sso_org_id).where(AuthSession.id == session_id)
    return (await db.execute(stmt)).scalar_one_or_none()


async def verified_domain_org(db: AsyncSession, domain: str) -> uuid.UUID | None:
    """The organization that verified ``domain`` (lowercase), if any. A platform read that
    needs no tenant: on PostgreSQL through ``enginex_verified_domain_org`` (migration 0014)."""
    if db.get_bind().dialect.name == "postgresql":
        value = (await db.execute(text("SELECT enginex_verified_domain_org(:d)"),
                                  {"d": domain})).scalar_one_or_none()
    else:
        value = (await db.execute(
            text("SELECT tenant_id FROM email_domains WHERE domain = :d "
                 "AND verified_at IS NOT NULL"), {"d": domain})).scalar_one_or_none()
    if value is None:
        return None
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

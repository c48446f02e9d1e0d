"""IdP groups -> an EngineX role, by the organization's role-mapping rules.

Used at every SSO sign-in (OIDC and SAML) and by SCIM group membership, so the same groups
give the same role whichever way they arrive.

Order (documented in docs/SSO.md, "Role mapping"): among the rules whose group is one of the
user's groups (names compared case-insensitively, surrounding spaces ignored), the rule with
the LOWEST ``priority`` number wins; rules of equal priority are decided by the higher
privilege (admin > builder > operator > viewer; builder before operator). No matching rule:
``default_role`` (the connection's default role).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import TenantContextMissing, session_tenant
from enginex.sso.models import RoleMappingRule
from enginex.tenancy.scopes import Role

# Tie-break among rules of equal priority: more privilege first.
_PRIVILEGE_ORDER: dict[Role, int] = {Role.ADMIN: 0, Role.BUILDER: 1, Role.OPERATOR: 2,
                                     Role.VIEWER: 3}


def normalise_group(name: str) -> str:
    return name.strip().casefold()


def pick_role(rules: Sequence[tuple[str, Role, int]], groups: Sequence[str],
              default_role: Role) -> Role:
    """The role for ``groups`` under ``rules`` (group name, role, priority); see the module
    docstring for the order. Pure: no database."""
    wanted = {normalise_group(g) for g in groups if isinstance(g, str)}
    matching = [(priority, _PRIVILEGE_ORDER[role], role) for group, role, priority in rules
                if normalise_group(group) in wanted]
    if not matching:
        return default_role
    return min(matching)[2]


async def role_for_groups(db: AsyncSession, tenant_id: uuid.UUID, groups: list[str],
                          default_role: Role) -> Role:
    """The role the organization ``tenant_id`` gives a person in ``groups``.

    ``db`` must already be bound to ``tenant_id`` (``set_tenant``); TenantContextMissing
    otherwise. One query (the organization's rules). Lowest priority number wins, ties go to
    the higher privilege, no match gives ``default_role``.
    """
    if session_tenant(db) != tenant_id:
        raise TenantContextMissing("database session is not bound to this tenant")
    rows = (await db.execute(
        select(RoleMappingRule.group_name, RoleMappingRule.role, RoleMappingRule.priority)
        .where(RoleMappingRule.tenant_id == tenant_id))).all()
    return pick_role([(g, Role(r), p) for g, r, p in rows], groups, default_role)


async def has_rules(db: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether the organization ``tenant_id`` has any role-mapping rule (groups matter only
    then). ``db`` must be bound to ``tenant_id``."""
    if session_tenant(db) != tenant_id:
        raise TenantContextMissing("database session is not bound to this tenant")
    stmt = select(RoleMappingRule.group_name).where(RoleMappingRule.tenant_id == tenant_id)
    return (await db.execute(stmt.limit(1))).first() is not None

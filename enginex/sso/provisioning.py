"""Who an SSO sign-in is, and what it may do: identity lookup, linking, just-in-time
provisioning and role mapping. Shared by every protocol (OIDC here, SAML in saml.py).

Rules (docs/SSO.md, "Who signs in"):

1. A person is identified by (connection, issuer, subject). A known identity signs in as its
   user, whatever email the IdP sends now.
2. An unknown identity is accepted only when the IdP asserts an email (not marked unverified)
   whose domain THIS organization has verified. Then it is linked to the existing account with
   that email, or a new account (no password) is created. Any other email is refused: an IdP
   configured by one organization can never sign anyone into an account of a domain it does
   not own, nor into another organization.
3. The membership in this organization is created with the role the groups map to (the
   connection's default role when no rule matches) and updated at every sign-in, audited as
   ``sso.role_changed``. The last admin is never demoted by a mapping (the change is reported
   in the audit entry as kept).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.models import User
from enginex.kit.errors import AppError, Forbidden
from enginex.kit.time import utcnow
from enginex.orgs.models import Membership
from enginex.sso import repository as repo
from enginex.sso.models import SsoAuditAction, SsoConnection, SsoIdentity
from enginex.sso.role_mapping import has_rules, role_for_groups
from enginex.sso.saml import SamlAssertion
from enginex.sso.service import normalise_domain
from enginex.tenancy.context import TenantContext
from enginex.tenancy.scopes import Role

log = logging.getLogger("enginex.sso")


@dataclass(frozen=True)
class Assertion:
    """What an IdP said about the person, after the protocol's own checks passed."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool | None
    display_name: str
    groups: Sequence[str]
    # The IdP left the groups out because there are too many (Entra's "group overage"):
    # they are only available from Microsoft Graph, which EngineX does not call.
    groups_overage: bool = False


@dataclass(frozen=True)
class SignedIn:
    user: User
    role: Role
    provisioned: bool


def groups_from(value: object) -> list[str]:
    """A groups claim/attribute as a list of names: a list of strings, or one string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [g for g in value if isinstance(g, str)]
    return []


ENTRA_SAML_GROUPS_LINK = "http://schemas.microsoft.com/claims/groups.link"
GROUP_OVERAGE = ("Your identity provider left your groups out of the sign-in because you are "
                 "in too many of them (Microsoft Entra's 'group overage'), so EngineX cannot "
                 "tell which role this organization's rules give you. An organization admin "
                 "can fix it at the identity provider: emit only the groups assigned to the "
                 "application (Token configuration -> groups claim -> 'Groups assigned to the "
                 "application'), then sign in again.")


def oidc_groups_overage(claims: Mapping[str, Any], groups_claim: str) -> bool:
    """Whether an id_token omits its groups for overage: no ``groups_claim`` but the claim
    named in ``_claim_names`` (a distributed claim, OIDC Core 5.6.2, as Entra sends beyond 200
    groups), or ``hasgroups: true`` (Entra's implicit-flow form)."""
    if groups_claim in claims:
        return False
    names = claims.get("_claim_names")
    if isinstance(names, Mapping) and groups_claim in names:
        return True
    return claims.get("hasgroups") in (True, "true")


def saml_groups_overage(assertion: SamlAssertion, groups_attribute: str) -> bool:
    """Whether a SAML assertion omits its groups for overage: no ``groups_attribute`` values
    but Entra's ``groups.link`` attribute (sent instead beyond 150 groups)."""
    return not assertion.attribute(groups_attribute) and bool(
        assertion.attribute(ENTRA_SAML_GROUPS_LINK))


def _refused(message: str, code: str) -> AppError:
    return Forbidden(message, code=code)


async def sign_in_user(db: AsyncSession, ctx: TenantContext, connection: SsoConnection,
                       assertion: Assertion) -> SignedIn:
    """Resolve, link or provision the user of ``assertion`` in ``ctx``'s organization and set
    their role from their groups (rules in the module docstring). ``db`` must be bound to
    ``ctx.org_id``. Raises Forbidden (codes ``sso_domain_not_verified``, ``sso_no_email``,
    ``account_disabled``, ``sso_group_overage`` -- the IdP omitted the groups and the
    organization has role-mapping rules, so no role can be decided) and writes nothing then.
    Audited: ``sso.user_provisioned``, ``sso.identity_linked``, ``sso.role_changed``."""
    if assertion.groups_overage and await has_rules(db, ctx.org_id):
        raise _refused(GROUP_OVERAGE, "sso_group_overage")
    identities = repo.IdentityRepository(db, ctx)
    identity = await identities.find(connection.id, assertion.issuer, assertion.subject)
    provisioned = False
    now = utcnow()
    if identity is not None:
        user = await auth_repo.get_user(db, identity.user_id)
        assert user is not None  # the identity row cascades with its user
    else:
        user, provisioned = await _link_or_provision(db, ctx, assertion)
        identity = identities.add(SsoIdentity(connection_id=connection.id, user_id=user.id,
                                              issuer=assertion.issuer,
                                              subject=assertion.subject, created_at=now))
        await db.flush()
        await record(db, ctx, SsoAuditAction.IDENTITY_LINKED, target_kind="user",
                     target_id=user.id, details={"connection_id": str(connection.id),
                                                 "new_account": provisioned},
                     actor_kind="user", actor_id=user.id)
    if user.disabled:
        raise _refused("This account is disabled. Ask an organization admin to re-enable it.",
                       "account_disabled")
    identity.last_login_at = now
    role = await _apply_role(db, ctx, connection, user, assertion.groups)
    return SignedIn(user=user, role=role, provisioned=provisioned)


async def _link_or_provision(db: AsyncSession, ctx: TenantContext,
                             assertion: Assertion) -> tuple[User, bool]:
    email = (assertion.email or "").strip()
    if not email or "@" not in email:
        raise _refused("The identity provider did not send an email address for this person, "
                       "so EngineX cannot tell which account it is. Ask your admin to release "
                       "the 'email' claim to EngineX.", "sso_no_email")
    if assertion.email_verified is False:
        raise _refused("The identity provider marks this email address as unverified. Verify "
                       "it at your identity provider first.", "sso_email_unverified")
    try:
        domain = normalise_domain(email.rsplit("@", 1)[1])
    except AppError:
        domain = ""
    claim = await repo.DomainRepository(db, ctx).get_by_domain(domain) if domain else None
    if claim is None or claim.verified_at is None:
        raise _refused(f"This organization has not verified the email domain of this account "
                       f"({domain or 'none'}), so its single sign-on cannot create or link "
                       "the account. An organization admin can verify the domain under "
                       "Settings -> Single sign-on.", "sso_domain_not_verified")
    user = await auth_repo.get_user_by_email(db, email)
    if user is not None:
        return user, False
    user = User(email=email, display_name=assertion.display_name[:200], password_hash=None)
    db.add(user)
    await db.flush()
    await record(db, ctx, SsoAuditAction.USER_PROVISIONED, target_kind="user",
                 target_id=user.id, details={"domain": domain},
                 actor_kind="user", actor_id=user.id)
    return user, True


async def _apply_role(db: AsyncSession, ctx: TenantContext, connection: SsoConnection,
                      user: User, groups: Sequence[str]) -> Role:
    role = await role_for_groups(db, ctx.org_id, list(groups), Role(connection.default_role))
    members = repo.MemberRepository(db, ctx)
    membership = await members.get_for_update(user.id)
    if membership is None:
        members.add(Membership(user_id=user.id, role=str(role), created_at=utcnow()))
        await db.flush()
        await record(db, ctx, "member.added", target_kind="user", target_id=user.id,
                     details={"role": str(role), "via": "sso",
                              "connection_id": str(connection.id)},
                     actor_kind="user", actor_id=user.id)
        return role
    current = Role(membership.role)
    if current == role:
        return role
    details = {"from": str(current), "to": str(role), "connection_id": str(connection.id)}
    if current == Role.ADMIN and await members.count_admins() <= 1:
        await record(db, ctx, SsoAuditAction.ROLE_CHANGED, target_kind="user",
                     target_id=user.id, details={**details, "kept": "last admin"},
                     actor_kind="user", actor_id=user.id)
        return current
    membership.role = str(role)
    await db.flush()
    await record(db, ctx, SsoAuditAction.ROLE_CHANGED, target_kind="user", target_id=user.id,
                 details=details, actor_kind="user", actor_id=user.id)
    return role

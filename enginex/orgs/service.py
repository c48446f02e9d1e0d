"""Organizations, members and invitations.

Every function that takes a TenantContext acts only inside that organization: ids of other
organizations' members or invitations raise NotFound exactly like ids that do not exist.
Mutations are audited in the caller's transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.models import User
from enginex.auth.passwords import check_password_policy, hash_password_off_loop
from enginex.db import set_tenant
from enginex.kit.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from enginex.kit.ids import new_token, token_digest
from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.kit.parsing import hex_uuid_or_none
from enginex.kit.time import utcnow
from enginex.mail.service import queue_invitation
from enginex.orgs import repository as repo
from enginex.orgs.models import Invitation, Membership, Organization
from enginex.tenancy.context import TenantContext, system_context
from enginex.tenancy.principal import acting_user_id
from enginex.tenancy.scopes import Role, can_grant
from enginex.usage.service import check_new_member

INVITATION_PREFIX = "inv_"
INVITATION_TTL = timedelta(days=7)


# --- organizations (platform level) ----------------------------------------------------------


async def create_organization(db: AsyncSession, *, slug: str, name: str,
                              region: str = "default") -> tuple[Organization, TenantContext]:
    """Create a tenant and bind ``db`` to it. Raises Conflict if the slug is taken.

    Two concurrent creations of one slug: the unique index decides, the loser gets Conflict.
    """
    taken = Conflict(f"The slug '{slug}' is already taken; choose another.",
                     details={"field": "slug"})
    if await repo.get_org_by_slug(db, slug) is not None:
        raise taken
    org = Organization(slug=slug.lower(), name=name, region=region)
    db.add(org)
    try:
        await db.flush()
    except IntegrityError as exc:
        raise taken from exc
    await set_tenant(db, org.id)
    return org, system_context(org.id, org.slug)


async def ensure_user(db: AsyncSession, *, email: str, password: str | None,
                      platform_admin: bool = False) -> tuple[User, bool]:
    """Return the user with ``email``, creating it (password checked) if it does not exist."""
    user = await auth_repo.get_user_by_email(db, email)
    if user is not None:
        return user, False
    if password is None:
        raise ValidationFailed("password: required for a new account.",
                               details={"field": "password"})
    check_password_policy(password, email=email)
    user = User(email=email.strip(), password_hash=await hash_password_off_loop(password),
                is_platform_admin=platform_admin, password_changed_at=utcnow())
    db.add(user)
    await db.flush()
    return user, True


async def add_member(db: AsyncSession, ctx: TenantContext, user: User, role: Role) -> Membership:
    """Add ``user`` with ``role`` (or keep an existing membership unchanged). Audited."""
    members = repo.MembershipRepository(db, ctx)
    existing = await members.get_member(user.id)
    if existing is not None:
        return existing
    membership = members.add(Membership(user_id=user.id, role=str(role)))
    await db.flush()
    await record(db, ctx, "member.added", target_kind="user", target_id=user.id,
                 details={"role": str(role)})
    return membership


async def set_org_status(db: AsyncSession, org: Organization, status: str, *,
                         actor_id: uuid.UUID) -> Organization:
    """Suspend or reactivate a tenant; audited in that tenant's log as a platform action."""
    if org.status != status:
        org.status = status
        ctx = system_context(org.id, org.slug)
        await set_tenant(db, org.id)
        await record(db, ctx, f"org.{'suspended' if status == 'suspended' else 'reactivated'}",
                     target_kind="organization", target_id=org.id,
                     actor_kind="platform_admin", actor_id=actor_id)
    return org


# --- members ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    email: str
    display_name: str
    role: str
    joined_at: datetime
    disabled_at: datetime | None = None


async def list_members(db: AsyncSession, ctx: TenantContext) -> list[Member]:
    rows = await repo.MembershipRepository(db, ctx).list_member_rows()
    return [Member(*row) for row in rows]


async def page_members(db: AsyncSession, ctx: TenantContext, *, limit: int,
                       cursor: str | None) -> Page[Member]:
    """A page of members, newest first; ``next_cursor`` continues (ValidationFailed for a
    cursor that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await repo.MembershipRepository(db, ctx).page_member_rows(limit + 1, before)
    return page_of([Member(*row) for row in rows], limit,
                   lambda m: (m.joined_at, m.user_id))


async def get_member(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID) -> Member:
    """One member of ``ctx``'s organization; NotFound for anyone else (other orgs too)."""
    rows = await repo.MembershipRepository(db, ctx).list_member_rows(user_id)
    if not rows:
        raise NotFound()
    return Member(*rows[0])


async def _access_member(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID) -> Membership:
    membership = await repo.MembershipRepository(db, ctx).get_member(user_id)
    if membership is None:
        raise NotFound()
    return membership


async def _ensure_admin_remains(db: AsyncSession, ctx: TenantContext,
                                membership: Membership) -> None:
    """Conflict when ``membership`` is the last enabled admin (disabled admins do not count:
    they cannot act)."""
    if membership.role == Role.ADMIN and membership.disabled_at is None and \
            await repo.MembershipRepository(db, ctx).count_role(Role.ADMIN) <= 1:
        raise Conflict("This is the organization's last admin. Make another member admin "
                       "first.", code="last_admin")


async def change_role(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID, role: Role,
                      ) -> Membership:
    """Change a member's role. Conflict when it would leave no admin. Audited."""
    await repo.lock_org(db, ctx.org_id)
    membership = await _access_member(db, ctx, user_id)
    if membership.role != role:
        if role != Role.ADMIN:
            await _ensure_admin_remains(db, ctx, membership)
        old = membership.role
        membership.role = str(role)
        await record(db, ctx, "member.role_changed", target_kind="user", target_id=user_id,
                     details={"from": old, "to": str(role)})
    return membership


async def remove_member(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID) -> None:
    """Remove a member; takes effect on their next request. Conflict for the last admin."""
    await repo.lock_org(db, ctx.org_id)
    membership = await _access_member(db, ctx, user_id)
    await _ensure_admin_remains(db, ctx, membership)
    await repo.MembershipRepository(db, ctx).delete(membership)
    await record(db, ctx, "member.removed", target_kind="user", target_id=user_id)


async def set_member_disabled(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID,
                              disabled: bool) -> Membership:
    """Disable (or re-enable) a member of ``ctx``'s organization. Audited when it changes.

    While disabled, the tenant guard treats the person as no member of this organization:
    their cookie requests get 404, the API keys they created for it answer 401
    (``key_creator_gone``), and their open event streams end at the next access re-check
    (at most ``ENGINEX_STREAM_RECHECK_SECONDS``). Their account, sessions, keys and other
    organizations are untouched, so enabling restores everything. NotFound for another
    organization's member; Conflict (``last_admin``) for the last enabled admin; Forbidden
    (``cannot_disable_self``) for the caller's own membership.
    """
    await repo.lock_org(db, ctx.org_id)
    membership = await _access_member(db, ctx, user_id)
    if disabled == (membership.disabled_at is not None):
        return membership
    if disabled:
        if acting_user_id(ctx.principal) == user_id:
            raise Forbidden("You cannot disable your own membership. Ask another admin.",
                            code="cannot_disable_self")
        await _ensure_admin_remains(db, ctx, membership)
        membership.disabled_at = utcnow()
    else:
        membership.disabled_at = None
    await record(db, ctx, "member.disabled" if disabled else "member.enabled",
                 target_kind="user", target_id=user_id)
    return membership


# --- invitations -----------------------------------------------------------------------------


def parse_invitation_token(token: str) -> uuid.UUID | None:
    if not token.startswith(INVITATION_PREFIX):
        return None
    org_hex, _, secret = token[len(INVITATION_PREFIX):].partition("_")
    if len(secret) < 20:
        return None
    return hex_uuid_or_none(org_hex)


def invitation_link(base_url: str, token: str) -> str:
    """The acceptance link: the token travels in the fragment (web/invitations.py)."""
    return f"{base_url.rstrip('/')}/invitations/accept#{token}"


async def create_invitation(db: AsyncSession, ctx: TenantContext, *, email: str,
                            role: Role, base_url: str) -> tuple[str, Invitation]:
    """Invite ``email`` with ``role``; the token is returned once, and the link is mailed to
    ``email`` through the outbox (same transaction). Audited.

    Forbidden if ``role`` is above the inviter's; Conflict if the person is already a member.
    """
    if not can_grant(ctx.role, role):
        raise Forbidden(f"You cannot invite with role '{role}': it is above your own role.",
                        code="role_escalation")
    user = await auth_repo.get_user_by_email(db, email)
    if user is not None and await repo.MembershipRepository(db, ctx).get_member(user.id):
        raise Conflict(f"{email} is already a member of this organization.",
                       details={"field": "email"})
    await check_new_member(db, ctx)  # usage quotas (issue 18)
    token = f"{INVITATION_PREFIX}{ctx.org_id.hex}_{new_token()}"
    invitation = repo.InvitationRepository(db, ctx).add(Invitation(
        email=email.strip(), role=str(role), token_digest=token_digest(token),
        invited_by=acting_user_id(ctx.principal),
        expires_at=utcnow() + INVITATION_TTL,
    ))
    await db.flush()
    await record(db, ctx, "invitation.created", target_kind="invitation",
                 target_id=invitation.id, details={"role": str(role)})
    org = await repo.get_org(db, ctx.org_id)
    queue_invitation(db, recipient=invitation.email, org_name=org.name if org else ctx.org_slug,
                     role=str(role), link=invitation_link(base_url, token),
                     expires=invitation.expires_at)
    return token, invitation


async def list_invitations(db: AsyncSession, ctx: TenantContext) -> list[Invitation]:
    return await repo.InvitationRepository(db, ctx).list()


async def page_invitations(db: AsyncSession, ctx: TenantContext, *, limit: int,
                           cursor: str | None) -> Page[Invitation]:
    """A page of invitations, newest first; ``next_cursor`` continues (ValidationFailed for
    a cursor that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await repo.InvitationRepository(db, ctx).list(limit + 1, before)
    return page_of(rows, limit, lambda i: (i.created_at, i.id))


async def revoke_invitation(db: AsyncSession, ctx: TenantContext,
                            invitation_id: uuid.UUID) -> Invitation:
    invitation = await repo.InvitationRepository(db, ctx).access(invitation_id)
    if invitation.accepted_at is not None:
        raise Conflict("This invitation was already accepted; remove the member instead.")
    if invitation.revoked_at is None:
        invitation.revoked_at = utcnow()
        await record(db, ctx, "invitation.revoked", target_kind="invitation",
                     target_id=invitation.id)
    return invitation


INVALID_INVITATION = ("This invitation link is not valid: it may have expired, been revoked or "
                      "already used. Ask an organization admin for a new one.")


NEW_ACCOUNT_NEEDS_ONE = ("password: choose a password for your new account. If you already "
                         "have an EngineX account, sign in as it first and accept the "
                         "invitation signed in.")
SIGN_IN_REQUIRED = ("This invitation is for an existing account. Sign in to that account first, "
                    "then accept the invitation again.")
WRONG_ACCOUNT = ("This invitation is for another email address than the account you are signed "
                 "in as. Sign out, then open the invitation link again.")


async def accept_invitation(db: AsyncSession, *, token: str, password: str | None,
                            display_name: str = "", signed_in_user_id: uuid.UUID | None = None,
                            ) -> tuple[User, Organization, bool]:
    """Join the organization of ``token``. Returns (user, org, created_new_account).

    Signed in (``signed_in_user_id``): the invitation is accepted only when it names that
    account's email; any other invitation (for another account or for an address with no
    account) gives the same Unauthenticated ``wrong_account``. The password is ignored.

    Anonymous: the answer does not depend on whether the invited address has an account
    anywhere on the platform, up to the point where an account would be created. The
    password is required (ValidationFailed ``password``) and policy-checked, and argon2 runs,
    for every invitation alike. Then a new address gets its account (signed in by the
    caller); an existing account is never joined, and its password never set, by whoever
    holds the link (Unauthenticated ``sign_in_required``: that person signs in and accepts
    signed in). Nothing is written when it refuses. Any invalid, expired, revoked or used
    token gives the same 404.
    """
    org_id = parse_invitation_token(token)
    org = await repo.get_org(db, org_id) if org_id else None
    if org is None or org_id is None:
        raise NotFound.with_message(INVALID_INVITATION)
    await set_tenant(db, org.id)
    ctx = system_context(org.id, org.slug)
    invitation = await repo.InvitationRepository(db, ctx).get_by_digest_for_update(
        token_digest(token))
    now = utcnow()
    if (invitation is None or invitation.revoked_at is not None or
            invitation.accepted_at is not None or invitation.expires_at <= now):
        raise NotFound.with_message(INVALID_INVITATION)
    if org.status != "active":
        raise Forbidden("This organization is suspended. Contact the platform operator.",
                        code="org_suspended")
    if signed_in_user_id is not None:
        user = await auth_repo.get_user_by_email(db, invitation.email)
        if user is None or user.id != signed_in_user_id:
            raise Unauthenticated(WRONG_ACCOUNT, code="wrong_account")
        created = False
    else:
        user, created = await _new_account_for(db, invitation.email, password)
        if created and display_name:
            user.display_name = display_name
    invitation.accepted_at = now
    await add_member(db, ctx, user, Role(invitation.role))
    await record(db, ctx, "invitation.accepted", target_kind="invitation",
                 target_id=invitation.id, actor_kind="user", actor_id=user.id)
    return user, org, created


async def _new_account_for(db: AsyncSession, email: str, password: str | None,
                           ) -> tuple[User, bool]:
    """The account an anonymous acceptance creates. Every check that does not create an
    account is answered alike for an address with and without an account (the account
    lookup comes after them, and the argon2 hash is computed in both cases)."""
    if not password:
        raise ValidationFailed(NEW_ACCOUNT_NEEDS_ONE, details={"field": "password"})
    check_password_policy(password, email=email)
    password_hash = await hash_password_off_loop(password)
    if await auth_repo.get_user_by_email(db, email) is not None:
        raise Unauthenticated(SIGN_IN_REQUIRED, code="sign_in_required")
    user = User(email=email.strip(), password_hash=password_hash, password_changed_at=utcnow())
    db.add(user)
    await db.flush()
    return user, True

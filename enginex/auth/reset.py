"""Password reset by email.

Contracts:
* Requesting a reset answers the same for every well-formed address -- the same status and
  body, and the same work before the answer (counting the request for throttling). Whether
  an account exists is looked up after the response is sent (``issue_reset`` runs as a
  background task), so neither the answer nor its timing tells.
* Requests are throttled per email address and per client address
  (``password_reset_max_per_email`` / ``_per_address`` in ``login_window_minutes``), counted
  in ``login_failures`` under keys of their own; over a limit: 429 with Retry-After.
* A link's token (``pwr_...``, 256 random bits) is stored as its SHA-256 digest, works once,
  for ``password_reset_ttl_minutes``. No link is issued for a disabled account.
* SSO enforcement: when every organization of the account requires SSO for it (not its
  break-glass admin) and it is no platform admin, a password would open nothing, so no link is
  made: the mail names the organizations' SSO sign-in addresses instead. Confirming a link
  issued before enforcement turned on is refused the same way (Forbidden ``sso_required``). A
  new password never opens an SSO-enforced organization anyway: its guard refuses password
  sessions (``sso_required``) for everyone but its break-glass admin and platform admins.
* Confirming sets the new password (the sign-up policy), ends every browser session of the
  user and every other unused link; it revokes nothing else (API keys stay). Audited in each
  organization the user belongs to, after the commit (``audit.service.record_in_user_orgs``).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.auth import repository as repo
from enginex.auth.models import PasswordReset, User
from enginex.auth.passwords import check_password_policy, hash_password_off_loop
from enginex.auth.service import clear_account_failures
from enginex.config import Settings
from enginex.kit.errors import Forbidden, NotFound, TooManyRequests
from enginex.kit.ids import new_token, token_digest
from enginex.kit.time import utcnow
from enginex.mail.service import queue_password_reset, queue_sso_sign_in_notice
from enginex.orgs.models import Organization
from enginex.orgs.repository import get_org
from enginex.tenancy.platform import list_user_orgs

log = logging.getLogger("enginex.auth")

RESET_PREFIX = "pwr_"
RESET_PATH = "/password-reset/confirm"
RESET_REQUESTED = ("If an EngineX account uses this email address, a link to choose a new "
                   "password is on its way to it. The link works once, for a limited time. "
                   "Nothing arrived? Check the spam folder, or ask your platform operator.")
INVALID_RESET = ("This password-reset link is not valid: it may have expired or been used "
                 "already. Ask for a new one on the sign-in page ('Forgot your password?').")


SSO_ONLY_RESET = ("Your organizations now require single sign-on, so a password would not "
                  "open them and this link no longer sets one. Sign in through your identity "
                  "provider: type your email address on the sign-in page.")


async def sso_only_organizations(db: AsyncSession, user: User) -> list[Organization]:
    """The account's organizations when every one of them requires SSO for this user (it is
    not their break-glass admin); empty when a password opens at least one of them, when the
    user is a platform admin, or when the account belongs to no organization."""
    if user.is_platform_admin:
        return []
    found = []
    for membership in await list_user_orgs(db, user.id):
        org = await get_org(db, membership.org_id)
        if org is None or not org.require_sso or org.sso_break_glass_user_id == user.id:
            return []
        found.append(org)
    return found


def _email_key(email: str) -> str:
    return "rst-acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]


def _address_key(address: str) -> str:
    return "rst-addr:" + hashlib.sha256(address.encode()).hexdigest()[:40]


async def admit_request(db: AsyncSession, settings: Settings, *, email: str,
                        client_address: str) -> None:
    """Count a reset request under its email and its client address, and refuse it
    (TooManyRequests, nothing counted) when either is over its limit. Commits: the count is
    visible to concurrent requests before they decide (as sign-in's ``_reserve``)."""
    now = utcnow()
    window = timedelta(minutes=settings.login_window_minutes)
    keys = [_email_key(email), _address_key(client_address)]
    await repo.prune_failures(db, now - window)
    ids = await repo.add_failures(db, keys, now)
    await db.commit()
    counts = await repo.count_failures(db, keys, now - window)
    limits = (settings.password_reset_max_per_email, settings.password_reset_max_per_address)
    for key, limit in zip(keys, limits, strict=True):
        if counts[key].count > limit:
            await repo.delete_failures(db, ids)
            await db.commit()
            oldest = counts[key].oldest or now
            retry = max(int((oldest + window - now).total_seconds()) + 1, 1)
            raise TooManyRequests(
                f"Too many password-reset requests. Wait {retry} seconds and try again.",
                details={"retry_after_seconds": retry}, headers={"Retry-After": str(retry)})


def reset_link(settings: Settings, token: str) -> str:
    """The link in the mail: the token travels in the fragment, never sent to a server."""
    return f"{settings.base_url.rstrip('/')}{RESET_PATH}#{token}"


async def issue_reset(sessions: async_sessionmaker[AsyncSession], settings: Settings, *,
                      email: str) -> bool:
    """Create a reset link for the account with ``email`` and queue its mail, in one
    transaction; nothing when there is no such account or it is disabled. Returns whether a
    link was issued (for logs only: callers answer the same either way). Run after the
    request's response is sent."""
    now = utcnow()
    async with sessions() as db, db.begin():
        await repo.prune_resets(db, now - timedelta(days=1))
        user = await repo.get_user_by_email(db, email)
        if user is None or user.disabled:
            return False
        sso_only = await sso_only_organizations(db, user)
        if sso_only:
            base = settings.base_url.rstrip("/")
            queue_sso_sign_in_notice(db, recipient=user.email, organizations=[
                (org.name, f"{base}/sso/{org.slug}/start") for org in sso_only])
            log.info("password reset refused (SSO required) user_id=%s", user.id)
            return False
        token = new_token(RESET_PREFIX)
        db.add(PasswordReset(token_digest=token_digest(token), user_id=user.id,
                             created_at=now, expires_at=now + timedelta(
                                 minutes=settings.password_reset_ttl_minutes)))
        queue_password_reset(db, recipient=user.email, link=reset_link(settings, token),
                             ttl_minutes=settings.password_reset_ttl_minutes)
    log.info("password reset link issued user_id=%s", user.id)
    return True


async def issue_reset_quietly(sessions: async_sessionmaker[AsyncSession], settings: Settings,
                              *, email: str) -> None:
    """``issue_reset`` as a background task: a failure is logged, never raised."""
    try:
        await issue_reset(sessions, settings, email=email)
    except Exception:
        log.exception("could not issue a password reset link")


async def confirm_reset(db: AsyncSession, *, token: str, new_password: str,
                        now: datetime | None = None) -> User:
    """Set the password of the link's account; the caller commits (then audits).

    Raises NotFound (``INVALID_RESET``) for an unknown, used or expired link -- also when a
    concurrent confirmation used it first; ValidationFailed (``new_password``) when the
    password breaks the policy (the link stays usable); Forbidden (``account_disabled``) for
    a disabled account. No transaction is open while argon2 hashes.
    """
    invalid = NotFound.with_message(INVALID_RESET)
    if not token.startswith(RESET_PREFIX):
        raise invalid
    found = await repo.get_reset_with_user(db, token_digest(token))
    now = now or utcnow()
    if found is None or found[0].used_at is not None or found[0].expires_at <= now:
        raise invalid
    reset, user = found
    if user.disabled:
        raise Forbidden("This account is disabled. Ask an organization admin to re-enable it.",
                        code="account_disabled")
    if await sso_only_organizations(db, user):
        raise Forbidden(SSO_ONLY_RESET, code="sso_required")
    check_password_policy(new_password, email=user.email, field="new_password")
    reset_id, user_id = reset.id, user.id
    await db.commit()
    password_hash = await hash_password_off_loop(new_password)
    if not await repo.use_reset(db, reset_id, utcnow()):
        raise invalid
    user = await _user(db, user_id)
    user.password_hash = password_hash
    user.password_changed_at = utcnow()
    await repo.end_user_resets(db, user_id, utcnow())
    await repo.delete_user_sessions(db, user_id)
    await clear_account_failures(db, user.email)
    return user


async def _user(db: AsyncSession, user_id: uuid.UUID) -> User:
    user = await repo.get_user(db, user_id)
    if user is None:  # deleted between the two transactions
        raise NotFound.with_message(INVALID_RESET)
    return user

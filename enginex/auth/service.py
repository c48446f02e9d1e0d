"""Sign-in, browser sessions, request authentication, CSRF and API keys.

Contracts:
* Tokens (cookies, API keys) are 256-bit random values stored only as SHA-256 digests.
* ``authenticate`` raises Unauthenticated (401) for missing/expired/revoked credentials and
  Forbidden (403, code ``csrf_failed``) for a cookie-authenticated unsafe request without the
  CSRF token. Disabled users and revoked sessions fail on their next request.
* An API key has the form ``enx_<org id hex>_<secret>``: authenticating one binds the database
  session to that organization, so the key can never read another tenant's rows.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as repo
from enginex.auth.models import ApiKey, AuthSession, User
from enginex.auth.passwords import (
    check_password_policy,
    hash_password_off_loop,
    needs_rehash,
    verify_password_off_loop,
)
from enginex.config import Settings
from enginex.db import set_tenant
from enginex.kit.crypto import hmac_hex
from enginex.kit.errors import Forbidden, TooManyRequests, Unauthenticated, ValidationFailed
from enginex.kit.ids import new_token, token_digest
from enginex.kit.origin import origin_names_another_site
from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.kit.parsing import hex_uuid_or_none
from enginex.kit.schemas import SLUG_PATTERN
from enginex.kit.time import utcnow
from enginex.tenancy import platform
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import (
    ApiKeyPrincipal,
    Principal,
    ScimTokenPrincipal,
    UserPrincipal,
    acting_user_id,
)
from enginex.tenancy.scopes import Role, can_grant

_SLUG = re.compile(SLUG_PATTERN)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
API_KEY_PREFIX = "enx_"
SCIM_TOKEN_PREFIX = "scim_"  # noqa: S105 - a prefix, not a secret
TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class AuthKeys:
    """Keys derived from the master key that authentication needs."""

    csrf: bytes

    def csrf_token(self, session_id: uuid.UUID) -> str:
        return hmac_hex(self.csrf, session_id.bytes)


# --- sign-in ---------------------------------------------------------------------------------


def _account_key(email: str) -> str:
    return "acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]


def account_failure_key(email: str) -> str:
    """The ``login_failures`` key of an account's failed sign-ins (erasure deletes them)."""
    return _account_key(email)


async def clear_account_failures(db: AsyncSession, email: str) -> None:
    """Forget the account's failed sign-ins (its password was just replaced)."""
    await repo.clear_failures(db, _account_key(email))


def _address_key(address: str) -> str:
    return "addr:" + hashlib.sha256(address.encode()).hexdigest()[:40]


def _pair_key(address: str, email: str) -> str:
    """One account from one address (see ``_admit``)."""
    joined = f"{address}\n{email.strip().lower()}"
    return "pair:" + hashlib.sha256(joined.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class _Attempt:
    """A sign-in attempt, counted before its password is verified.

    ``ids`` are its committed ``login_failures`` rows, one per key: they are the failure if
    the password turns out wrong, and are deleted if it is right or the attempt is refused.
    """

    ids: list[uuid.UUID]
    account: str
    address: str | None = None
    pair: str | None = None

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.account, self.address, self.pair) if k is not None]


def _too_many(oldest: datetime | None, now: datetime, window: timedelta) -> TooManyRequests:
    retry = max(int(((oldest or now) + window - now).total_seconds()) + 1, 1)
    return TooManyRequests(
        f"Too many failed sign-in attempts. Wait {retry} seconds and try again; "
        "the pause protects the account from password guessing.",
        details={"retry_after_seconds": retry},
        headers={"Retry-After": str(retry)},
    )


async def _reserve(db: AsyncSession, settings: Settings, email: str,
                   client_address: str | None) -> _Attempt:
    """Count the attempt under its keys in a transaction of its own, committed at once.

    Committing before the count that decides (``_admit``) is what makes the limits hold under
    concurrency: an attempt's row is visible to every attempt that counts after it, so the
    k-th attempt to be admitted sees at least k rows and no more than ``limit`` are admitted,
    on SQLite and PostgreSQL alike, without locks held across the password check.
    """
    now = utcnow()
    window = timedelta(minutes=settings.login_window_minutes)
    keys = _Attempt([], _account_key(email))
    if client_address is not None:
        keys = _Attempt([], keys.account, _address_key(client_address),
                        _pair_key(client_address, email))
    # Keep the table small: rows older than the window no longer count.
    await repo.prune_failures(db, now - window)
    ids = await repo.add_failures(db, keys.keys, now)
    await db.commit()
    return _Attempt(ids, keys.account, keys.address, keys.pair)


async def _admit(db: AsyncSession, settings: Settings, attempt: _Attempt) -> None:
    """Decide on a reserved attempt, counting it: raise TooManyRequests (429, with
    Retry-After) and forget the attempt when a limit is exceeded.

    * Account: more than ``login_max_failures_per_account`` rows in the window -> refused, from
      any address.
    * Address: more than ``login_max_failures_per_address`` rows -> the address is throttled;
      from it, an account may still try only if it has not failed from this address in the
      window (its pair key has no row but this attempt's). Guessing from the address stops
      (at most one more guess per account per window), while the other people behind the same
      address (an office NAT, a proxy) still sign in with their own password.
    """
    now = utcnow()
    window = timedelta(minutes=settings.login_window_minutes)
    counts = await repo.count_failures(db, attempt.keys, now - window)
    refused: TooManyRequests | None = None
    account = counts[attempt.account]
    if account.count > settings.login_max_failures_per_account:
        refused = _too_many(account.oldest, now, window)
    elif attempt.address is not None and attempt.pair is not None:
        address, pair = counts[attempt.address], counts[attempt.pair]
        if address.count > settings.login_max_failures_per_address and pair.count > 1:
            refused = _too_many(pair.oldest, now, window)
    if refused is not None:
        # A refused attempt verified nothing, so it is not a failure: forget it (committed,
        # since the request boundary rolls back on the error).
        await repo.delete_failures(db, attempt.ids)
        await db.commit()
        raise refused


@dataclass(frozen=True)
class LoginResult:
    token: str
    session: AuthSession
    user: User


class LoginFailed(Unauthenticated):
    """Wrong email or password. The failure is already committed when this is raised.

    ``user_id`` names the account when the email exists (for the audit log only; the
    response is the same either way)."""

    user_id: uuid.UUID | None = None


async def audit_login(request: Request, db: AsyncSession, user_id: uuid.UUID | None, *,
                      succeeded: bool) -> None:
    """Commit the sign-in's transaction, then record it in the user's organizations' audit
    logs. An audit failure is logged, never turned into a failed sign-in."""
    await db.commit()
    if user_id is None:
        return
    from enginex.audit.service import record_login

    try:
        await record_login(request.app.state.db.sessions, user_id, succeeded=succeeded)
    except Exception:
        logging.getLogger("enginex.auth").exception("could not audit a sign-in")


async def login(db: AsyncSession, settings: Settings, *, email: str, password: str,
                client_address: str, user_agent: str = "") -> LoginResult:
    """Verify a password and open a new browser session (a fresh token at every sign-in).

    The attempt is counted (and committed) before the password is verified, so concurrent
    guesses cannot overshoot the limits (``_reserve``, ``_admit``); no transaction is open
    while argon2 runs. Raises TooManyRequests (429) when the account or the address is
    throttled, LoginFailed (401) for a wrong email or password (the same message and cost for
    both), Forbidden (403) for a disabled account with the right password.
    """
    attempt = await _reserve(db, settings, email, client_address)
    await _admit(db, settings, attempt)
    user = await repo.get_user_by_email(db, email)
    await db.commit()
    ok = await verify_password_off_loop(user.password_hash if user else None, password)
    if not ok or user is None:
        failed = LoginFailed("Wrong email or password. Check both and try again.",
                             code="invalid_credentials")
        failed.user_id = user.id if user is not None else None
        raise failed
    # A hash made with other argon2 parameters is upgraded now that the password is known;
    # hashed before the transaction below opens, like the verification.
    rehashed = (await hash_password_off_loop(password)
                if user.password_hash and not user.disabled and needs_rehash(user.password_hash)
                else None)
    await repo.delete_failures(db, attempt.ids)
    if user.disabled:
        await db.commit()
        raise Forbidden("This account is disabled. Ask an organization admin to re-enable it.",
                        code="account_disabled")
    assert attempt.pair is not None
    await repo.clear_failures(db, attempt.account, attempt.pair)
    if rehashed is not None:
        user.password_hash = rehashed  # same password: password_changed_at stays
    return await open_session(db, settings, user, user_agent=user_agent)


async def open_session(db: AsyncSession, settings: Settings, user: User, *,
                       user_agent: str = "") -> LoginResult:
    token = new_token()
    now = utcnow()
    session = AuthSession(token_digest=token_digest(token), user_id=user.id, created_at=now,
                          last_seen_at=now, user_agent=user_agent[:300],
                          expires_at=now + timedelta(hours=settings.session_absolute_hours))
    db.add(session)
    await db.flush()
    return LoginResult(token=token, session=session, user=user)


async def logout(db: AsyncSession, principal: UserPrincipal) -> None:
    await repo.delete_session(db, principal.session_id)


class WrongCurrentPassword(ValidationFailed):
    """The current password did not match. The request boundary commits the recorded failure.

    It counts as a failed sign-in of the account: a stolen session cookie must not become an
    unthrottled way to guess the password.
    """


async def change_password(db: AsyncSession, settings: Settings, principal: UserPrincipal, *,
                          current_password: str, new_password: str,
                          user_agent: str = "") -> LoginResult:
    """Replace the password, revoke every session of the user, and open a fresh one.

    Raises TooManyRequests (429) while the account is throttled, WrongCurrentPassword (422)
    for a wrong current password (counted like a failed sign-in, before it is verified, as in
    ``login``; committed), ValidationFailed (422) when the new password breaks the policy.
    """
    attempt = await _reserve(db, settings, principal.email, None)
    await _admit(db, settings, attempt)
    user = await repo.get_user(db, principal.user_id)
    await db.commit()
    if user is None or not await verify_password_off_loop(user.password_hash, current_password):
        raise WrongCurrentPassword("current_password: this is not your current password.",
                                   details={"field": "current_password"})
    await repo.delete_failures(db, attempt.ids)
    await db.commit()  # the right password is no failure, even if the new one is refused
    check_password_policy(new_password, email=user.email, field="new_password")
    user.password_hash = await hash_password_off_loop(new_password)
    user.password_changed_at = utcnow()
    await repo.clear_failures(db, attempt.account)
    await repo.delete_user_sessions(db, user.id)
    return await open_session(db, settings, user, user_agent=user_agent)


# --- request authentication ------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("The Authorization header must be 'Bearer enx_...'.")
    return value.strip()


def parse_api_key(token: str, prefix: str = API_KEY_PREFIX) -> uuid.UUID | None:
    """The organization id embedded in an API key (or, with ``prefix`` SCIM_TOKEN_PREFIX, a
    SCIM token), or None if the token is malformed."""
    if not token.startswith(prefix):
        return None
    org_hex, _, secret = token[len(prefix):].partition("_")
    if len(secret) < 20:
        return None
    return hex_uuid_or_none(org_hex)


@dataclass(frozen=True)
class OrgAccess:
    """The organization a tenant route names, as the principal may reach it."""

    org_id: uuid.UUID
    slug: str
    status: str
    role: Role | None  # None: not a member (for API keys: the key belongs to another org)
    # The organization requires SSO and this principal neither signed in through its SSO nor
    # is exempt (platform admin, break-glass admin): the guard answers 403 sso_required.
    sso_required: bool = False


def _parent_alive(found: repo.KeyForAuth, now: datetime) -> bool:
    if not found.parent_found:
        return False
    expires_at = found.parent_expires_at
    return found.parent_revoked_at is None and (expires_at is None or expires_at > now)


async def _authenticate_api_key(db: AsyncSession, token: str, slug: str | None = None, *,
                                writes: bool = True) -> tuple[ApiKeyPrincipal, OrgAccess]:
    """Checks an API key: one statement (key, parent key, creator's membership, organization)
    after binding ``db`` to the organization the key names, in the same transaction.

    Raises Unauthenticated for a malformed, unknown, revoked or expired key, a key whose
    parent key was revoked or expired, and a key whose creator left or was disabled. The
    OrgAccess role is None when ``slug`` names another organization than the key's."""
    tenant_id = parse_api_key(token)
    if tenant_id is None:
        raise Unauthenticated("This API key is malformed. Copy the whole key, starting 'enx_'.")
    await set_tenant(db, tenant_id)
    found = await repo.get_api_key_for_auth(db, tenant_id, token_digest(token))
    now = utcnow()
    if found is None or found.revoked_at is not None:
        raise Unauthenticated("This API key is not valid (wrong, revoked or deleted). "
                              "Create a new key in the organization's settings.")
    if found.expires_at is not None and found.expires_at <= now:
        raise Unauthenticated("This API key has expired. Create a new key.", code="key_expired")
    # Revocation cascades to descendants and a child's expiry is capped at its parent's when
    # they are written, so the key's own columns already say it all. Defence in depth for
    # keys made by keys only: the parent's state comes with the key (never an ancestor walk).
    if found.parent_key_id is not None and not _parent_alive(found, now):
        raise Unauthenticated("The API key that created this key was revoked or has expired, "
                              "so this key stopped working too. Create a new key.",
                              code="key_parent_gone")
    # A key never outlives its creator's access: removed or disabled creator -> the key stops
    # working; a demoted creator -> the key is capped at the creator's current role.
    if found.creator_role is None or found.creator_disabled:
        raise Unauthenticated("The person who created this API key no longer has access to "
                              "this organization, so the key stopped working. Ask an admin "
                              "for a new key.", code="key_creator_gone")
    creator = Role(found.creator_role)
    role = Role(found.role) if can_grant(creator, Role(found.role)) else creator
    if writes and (found.last_used_at is None or now - found.last_used_at > TOUCH_INTERVAL):
        await repo.touch_api_key(db, tenant_id, found.key_id, now)
    principal = ApiKeyPrincipal(key_id=found.key_id, tenant_id=tenant_id, role=role,
                                created_by=found.created_by)
    same_org = slug is None or slug.lower() == found.org_slug
    return principal, OrgAccess(tenant_id, found.org_slug, found.org_status,
                                role if same_org else None)


SCIM_TOKEN_INVALID = ("This SCIM token is not valid (wrong, revoked or for another "  # noqa: S105
                      "organization). An org admin creates one at "
                      "POST /api/v1/orgs/{org}/scim/tokens.")


async def authenticate_scim_token(request: Request, db: AsyncSession, slug: str
                                  ) -> tuple[ScimTokenPrincipal, OrgAccess | None]:
    """The SCIM bearer token of ``request``, checked in one statement after binding ``db`` to
    the organization the token names. Raises Unauthenticated for a missing, malformed,
    unknown or revoked token (API keys and cookies are not accepted on SCIM routes). The
    OrgAccess is None when ``slug`` names another organization than the token's."""
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Send the organization's SCIM token: 'Authorization: Bearer "
                              "scim_...'.")
    tenant_id = parse_api_key(token, SCIM_TOKEN_PREFIX)
    if tenant_id is None:
        raise Unauthenticated(SCIM_TOKEN_INVALID)
    await set_tenant(db, tenant_id)
    found = await repo.get_scim_token_for_auth(db, tenant_id, token_digest(token))
    if found is None or found.revoked_at is not None:
        raise Unauthenticated(SCIM_TOKEN_INVALID)
    now = utcnow()
    if found.last_used_at is None or now - found.last_used_at > TOUCH_INTERVAL:
        await repo.touch_scim_token(db, tenant_id, found.token_id, now)
    principal = ScimTokenPrincipal(token_id=found.token_id, tenant_id=tenant_id)
    request.state.principal = principal
    if slug.lower() != found.org_slug:
        return principal, None
    return principal, OrgAccess(tenant_id, found.org_slug, found.org_status, Role.ADMIN)


def _check_csrf(request: Request, settings: Settings, expected: str) -> None:
    if request.method in SAFE_METHODS:
        return
    if origin_names_another_site(request, settings.base_url):
        raise Forbidden("Cross-site request refused: the Origin header does not match this "
                        "site (ENGINEX_BASE_URL).", code="csrf_failed")
    sent = request.headers.get("x-csrf-token") or getattr(request.state, "form_csrf", None) or ""
    if not hmac.compare_digest(sent, expected):
        raise Forbidden("Missing or wrong CSRF token: send the 'X-CSRF-Token' header with the "
                        "value from GET /api/v1/me (browsers: reload the page).",
                        code="csrf_failed")


async def _session_principal(request: Request, db: AsyncSession, *, session_id: uuid.UUID,
                             expires_at: datetime, last_seen_at: datetime, user_id: uuid.UUID,
                             email: str, is_platform_admin: bool,
                             disabled: bool, writes: bool = True) -> UserPrincipal:
    """Checks a browser session (expiry, idle time, disabled user, CSRF) and touches it
    (with ``writes``: also deletes it when it has ended)."""
    settings: Settings = request.app.state.settings
    keys: AuthKeys = request.app.state.auth_keys
    now = utcnow()
    idle = timedelta(minutes=settings.session_idle_minutes)
    if expires_at <= now or last_seen_at + idle <= now or disabled:
        if writes:
            await repo.delete_session(db, session_id)
        raise Unauthenticated("Your session has ended. Sign in again.", code="session_expired")
    csrf = keys.csrf_token(session_id)
    _check_csrf(request, settings, csrf)
    if writes and now - last_seen_at > TOUCH_INTERVAL:
        await repo.touch_session(db, session_id, now)
    return UserPrincipal(user_id=user_id, email=email, is_platform_admin=is_platform_admin,
                         session_id=session_id, csrf_token=csrf)


def _session_cookie(request: Request) -> str:
    cookie = request.cookies.get(request.app.state.settings.session_cookie_name)
    if not cookie:
        raise Unauthenticated()
    return cookie


SESSION_ENDED = "Your session has ended. Sign in again."


async def authenticate(request: Request, db: AsyncSession, *,
                       allow_api_key: bool = True) -> Principal:
    """The principal of this request, cached on ``request.state``; raises 401 without one.

    Dashboard pages pass ``allow_api_key=False``: they only ever use the session cookie.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    principal: Principal
    bearer = _bearer(request) if allow_api_key else None
    if bearer is not None:
        principal, _ = await _authenticate_api_key(db, bearer)
    else:
        found = await repo.get_session_with_user(db, token_digest(_session_cookie(request)))
        if found is None:
            raise Unauthenticated(SESSION_ENDED, code="session_expired")
        session, user = found
        principal = await _session_principal(
            request, db, session_id=session.id, expires_at=session.expires_at,
            last_seen_at=session.last_seen_at, user_id=user.id, email=user.email,
            is_platform_admin=user.is_platform_admin, disabled=user.disabled)
    request.state.principal = principal
    return principal


async def authenticate_for_org(request: Request, db: AsyncSession, slug: str, *,
                               allow_api_key: bool = True, writes: bool = True
                               ) -> tuple[Principal, OrgAccess | None]:
    """``authenticate`` fused with the lookup of organization ``slug`` and the principal's
    role in it: one statement for a cookie (plus binding the tenant), one for a key. The
    tenant guard uses it; OrgAccess is None when no organization has that slug.
    ``writes=False`` only reads (a re-check in a read-only session): the key or session is
    not touched and an ended session is refused without being deleted."""
    if not _SLUG.match(slug):
        slug = ""  # no organization has it: the caller answers 404 after authenticating
    bearer = _bearer(request) if allow_api_key else None
    if bearer is not None:
        principal, access = await _authenticate_api_key(db, bearer, slug, writes=writes)
        request.state.principal = principal
        return principal, access
    row = await platform.session_for_org(db, token_digest(_session_cookie(request)), slug)
    if row is None:
        raise Unauthenticated(SESSION_ENDED, code="session_expired")
    user_principal = await _session_principal(
        request, db, session_id=row.session_id, expires_at=row.expires_at,
        last_seen_at=row.last_seen_at, user_id=row.user_id, email=row.email,
        is_platform_admin=row.is_platform_admin, disabled=row.disabled, writes=writes)
    request.state.principal = user_principal
    if row.org_id is None or row.org_slug is None or row.org_status is None:
        return user_principal, None
    sso_required = bool(row.org_require_sso) and not row.is_platform_admin \
        and row.user_id != row.org_break_glass_user_id and row.session_sso_org_id != row.org_id
    return user_principal, OrgAccess(row.org_id, row.org_slug, row.org_status,
                                     Role(row.role) if row.role else None,
                                     sso_required=sso_required)


# --- API keys --------------------------------------------------------------------------------


async def create_api_key(db: AsyncSession, ctx: TenantContext, *, name: str, role: Role,
                         expires_at: datetime | None, actor: Principal) -> tuple[str, ApiKey]:
    """Create a key for ``ctx``'s organization; the token is returned once, never stored.

    Raises Forbidden (``role_escalation``) when ``role`` carries more than the caller's role
    in ``ctx`` (for a key: the key's own role, already capped at its creator's current role).
    A key created with an API key records that key as ``parent_key_id`` and the parent's
    person as ``created_by``, and expires no later than the parent (``expires_at`` is capped;
    None means the parent's expiry). The parent is re-read under a row lock, so a concurrent
    revocation either sees the child (and revokes it) or is seen here (Unauthenticated).
    Audited.
    """
    if not can_grant(ctx.role, role):
        raise Forbidden(f"You cannot create a key with role '{role}': it is above your own "
                        f"role '{ctx.role}'.", code="role_escalation")
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at: must be in the future.",
                               details={"field": "expires_at"})
    keys = repo.ApiKeyRepository(db, ctx)
    parent: ApiKey | None = None
    if isinstance(actor, ApiKeyPrincipal):
        parent = await keys.access_for_update(actor.key_id)
        if parent.revoked_at is not None or (parent.expires_at is not None
                                             and parent.expires_at <= now):
            raise Unauthenticated("This API key was revoked or has expired. Create a new key.")
        if parent.expires_at is not None and (expires_at is None
                                              or expires_at > parent.expires_at):
            expires_at = parent.expires_at
    token = f"{API_KEY_PREFIX}{ctx.org_id.hex}_{new_token()}"
    key = keys.add(ApiKey(
        token_digest=token_digest(token), hint=token[-4:], name=name, role=str(role),
        created_by=acting_user_id(actor), expires_at=expires_at,
        parent_key_id=parent.id if parent is not None else None,
    ))
    await db.flush()
    details: dict[str, str] = {"name": name, "role": str(role)}
    if parent is not None:
        details["parent_key_id"] = str(parent.id)
    await record(db, ctx, "api_key.created", target_kind="api_key", target_id=key.id,
                 details=details)
    return token, key


async def list_api_keys(db: AsyncSession, ctx: TenantContext) -> list[ApiKey]:
    return await repo.ApiKeyRepository(db, ctx).list()


async def page_api_keys(db: AsyncSession, ctx: TenantContext, *, limit: int,
                        cursor: str | None) -> Page[ApiKey]:
    """A page of keys, newest first; ``next_cursor`` continues (ValidationFailed for a cursor
    that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await repo.ApiKeyRepository(db, ctx).list(limit + 1, before)
    return page_of(rows, limit, lambda k: (k.created_at, k.id))


async def get_api_key(db: AsyncSession, ctx: TenantContext, key_id: uuid.UUID) -> ApiKey:
    """One key of ``ctx``'s organization (NotFound for another org's id)."""
    return await repo.ApiKeyRepository(db, ctx).access(key_id)


async def revoke_api_key(db: AsyncSession, ctx: TenantContext, key_id: uuid.UUID, *,
                         actor: Principal) -> list[ApiKey]:
    """Revoke a key of ``ctx``'s organization and every key descended from it, in this
    transaction (NotFound for another org's id). Returns the keys revoked now (empty when
    all were already revoked).

    Audited: one ``api_key.revoked`` entry per key revoked; a descendant's entry carries
    ``details.revoked_with`` (the key whose revocation took it along). Each level of
    descendants is read under row locks after the level above was updated, so a key being
    created by one of them concurrently is either seen here or refused there.
    """
    keys = repo.ApiKeyRepository(db, ctx)
    root = await keys.access_for_update(key_id)
    now = utcnow()
    revoked: list[ApiKey] = []
    level = [root]
    seen = {root.id}
    while level:
        for key in level:
            if key.revoked_at is None:
                key.revoked_at = now
                revoked.append(key)
                await record(db, ctx, "api_key.revoked", target_kind="api_key",
                             target_id=key.id,
                             details=None if key is root else {"revoked_with": str(root.id)})
        await db.flush()
        children = await keys.children_for_update([k.id for k in level])
        level = [k for k in children if k.id not in seen]
        seen.update(k.id for k in level)
    return revoked

"""Erasure of a person: requests from the person, confirmation or refusal by a platform
admin, and the erasure itself (docs/DATA_LIFECYCLE.md "Erasure of a person").

The erasure works through every organization in id order, ONE transaction per organization
(a database session is bound to one tenant): it deletes the person's membership, the API keys
they created, their SSO links, pending invitations to their address and cached API answers of
their requests; it removes their account id from the rows that stay with the organization
(sessions they started, approvals they decided, credentials, agent versions, exports); where
anything was found it appends ``user.erased`` to that organization's audit chain. The same
transaction advances ``user_erasures.last_org_id``, so an erasure interrupted by a crash
resumes after the last finished organization and never records an organization twice (run it
again: API, page or CLI). The last transaction deletes the account (browser sessions and reset
links cascade), its outbox mail and failed sign-ins, and clears the address from the erasure
row.

The audit chains are not rewritten: entries name people by account id only (never an address
or a name), and once the account is deleted that id is a pseudonym nothing maps back to a
person. Every chain therefore still verifies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.passwords import verify_password_off_loop
from enginex.auth.service import account_failure_key
from enginex.db import set_tenant
from enginex.erasure import repository as repo
from enginex.erasure.models import ErasureStatus, UserErasure
from enginex.kit.errors import Conflict, Forbidden, NotFound, ValidationFailed
from enginex.kit.time import utcnow
from enginex.orgs.repository import get_org
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import system_context

ERASED_ACTION = "user.erased"
ORG_BATCH = 100


@dataclass(frozen=True)
class Actor:
    """Who decides: a platform admin (``platform_admin`` and their id) or the CLI."""

    kind: str
    id: uuid.UUID | None = None


@dataclass
class ErasureResult:
    erasure_id: uuid.UUID
    user_id: uuid.UUID
    orgs_affected: int = 0
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # org id -> counts


# --- requests by the person --------------------------------------------------------------------


async def request_erasure(db: AsyncSession, user_id: uuid.UUID, *, password: str | None,
                          reason: str) -> UserErasure:
    """The person asks for their own erasure. An account with a password must confirm it
    (ValidationFailed ``password``); an SSO-only account is trusted by its session. Conflict
    when a request is already open. The caller commits."""
    user = await auth_repo.get_user(db, user_id)
    if user is None:
        raise NotFound()
    if user.password_hash is not None:
        if not password or not await verify_password_off_loop(user.password_hash, password):
            raise ValidationFailed("password: enter your current password to confirm that you "
                                   "ask for the erasure of your account.",
                                   details={"field": "password"})
    if await repo.get_open(db, user_id) is not None:
        raise Conflict("You already asked for the erasure of your account; a platform admin "
                       "will confirm or decline it. Withdraw it first to ask again.",
                       code="erasure_requested")
    erasure = UserErasure(user_id=user_id, status=ErasureStatus.REQUESTED, self_requested=True,
                          reason=reason.strip()[:500], requested_at=utcnow())
    db.add(erasure)
    await db.flush()
    return erasure


async def withdraw_request(db: AsyncSession, user_id: uuid.UUID) -> UserErasure:
    """The person withdraws their pending request. NotFound when none is pending; Conflict
    once a platform admin has started the erasure."""
    erasure = await repo.get_open(db, user_id, for_update=True)
    if erasure is None:
        raise NotFound.with_message("You have no pending erasure request to withdraw.")
    if erasure.status != ErasureStatus.REQUESTED:
        raise Conflict("The erasure of your account has already started and cannot be "
                       "withdrawn.", code="erasure_started")
    erasure.status = ErasureStatus.WITHDRAWN
    erasure.finished_at = utcnow()
    return erasure


async def decline_request(db: AsyncSession, user_id: uuid.UUID, *, actor: Actor,
                          reason: str) -> UserErasure:
    """A platform admin declines a pending request (the reason is shown to the person).
    NotFound when the account has no pending request; Conflict once the erasure started."""
    erasure = await repo.get_open(db, user_id, for_update=True)
    if erasure is None:
        raise NotFound.with_message("This account has no pending erasure request.")
    if erasure.status != ErasureStatus.REQUESTED:
        raise Conflict("This erasure has already started; run it again to finish it.",
                       code="erasure_started")
    if not reason.strip():
        raise ValidationFailed("reason: say why the request is declined (the person sees it).",
                               details={"field": "reason"})
    erasure.status = ErasureStatus.DECLINED
    erasure.decided_by, erasure.decided_by_kind = actor.id, actor.kind
    erasure.decided_at = erasure.finished_at = utcnow()
    erasure.decline_reason = reason.strip()[:500]
    return erasure


# --- the erasure -----------------------------------------------------------------------------


async def begin_erasure(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, *,
                 actor: Actor, confirm_email: str | None) -> tuple[uuid.UUID, str]:
    """First transaction: the erasure row (new, confirmed request, or the one to resume), the
    account disabled and signed out everywhere. Returns (erasure id, address)."""
    async with sessions() as db, db.begin():
        erasure = await repo.get_open(db, user_id, for_update=True)
        if erasure is not None and erasure.status == ErasureStatus.ERASING:
            assert erasure.email is not None
            return erasure.id, erasure.email  # resume: confirmed when it started
        user = await auth_repo.get_user(db, user_id)
        if user is None:
            raise NotFound.with_message("There is no account with this id (an erased account "
                                        "is gone for good).")
        if actor.id == user.id:
            raise Conflict("You cannot erase your own account: ask another platform admin.",
                           code="own_account")
        if confirm_email is not None and \
                confirm_email.strip().lower() != user.email.strip().lower():
            raise ValidationFailed("confirm_email: type the account's e-mail address exactly "
                                   "to confirm its erasure.", details={"field": "confirm_email"})
        now = utcnow()
        if erasure is None:
            erasure = UserErasure(user_id=user_id, self_requested=False, requested_at=now)
            db.add(erasure)
        erasure.status = ErasureStatus.ERASING
        erasure.decided_by, erasure.decided_by_kind, erasure.decided_at = actor.id, actor.kind, now
        erasure.email = user.email
        user.disabled = True
        await auth_repo.delete_user_sessions(db, user_id)
        await db.flush()
        return erasure.id, user.email


async def erase_in_org(sessions: async_sessionmaker[AsyncSession], erasure_id: uuid.UUID,
                        org_id: uuid.UUID, user_id: uuid.UUID, email: str,
                        actor: Actor, storage: ArtifactStorage | None = None
                        ) -> dict[str, int] | None:
    """One organization, one transaction. None when another run already did it. With
    ``storage``, the files of the export archives it withdrew are deleted after the commit
    (a file left by a crash is unreachable: its export is ``expired``; the expiry job deletes
    it)."""
    withdrawn: list[uuid.UUID] = []
    counts = await _erase_in_org_transaction(sessions, erasure_id, org_id, user_id, email,
                                             actor, withdrawn)
    if storage is not None:
        from enginex.lifecycle.service import archive_path
        for export_id in withdrawn:
            archive_path(storage, org_id, export_id).unlink(missing_ok=True)
    return counts


async def _erase_in_org_transaction(sessions: async_sessionmaker[AsyncSession],
                                    erasure_id: uuid.UUID, org_id: uuid.UUID,
                                    user_id: uuid.UUID, email: str, actor: Actor,
                                    withdrawn: list[uuid.UUID]) -> dict[str, int] | None:
    async with sessions() as db, db.begin():
        await set_tenant(db, org_id)
        erasure = await db.get(UserErasure, erasure_id, with_for_update=True)
        if erasure is None or erasure.status != ErasureStatus.ERASING or (
                erasure.last_org_id is not None and erasure.last_org_id >= org_id):
            return None
        counts = await repo.remove_from_org(db, org_id, user_id, email, withdrawn)
        if counts:
            org = await get_org(db, org_id)
            await record(db, system_context(org_id, org.slug if org else ""), ERASED_ACTION,
                         target_kind="user", target_id=user_id, details={"removed": counts},
                         actor_kind=actor.kind, actor_id=actor.id)
        erasure.last_org_id = org_id
        erasure.orgs_done += 1
        erasure.orgs_affected += 1 if counts else 0
        return counts


async def erase_user(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, *,
                     actor: Actor, confirm_email: str | None,
                     storage: ArtifactStorage | None = None) -> ErasureResult:
    """Erase the account ``user_id`` everywhere (module docstring), or finish an interrupted
    erasure of it. Commits as it goes (one transaction per organization).

    ``confirm_email`` must be the account's address (ValidationFailed otherwise; None skips
    the check, for the CLI which looked the account up by address). ``storage``: where the
    withdrawn export archives' files are deleted (see ``erase_in_org``). NotFound for an unknown
    or already erased account; Conflict for the acting admin's own account. A pending request
    of the person is confirmed by this call.
    """
    erasure_id, email = await begin_erasure(sessions, user_id, actor=actor,
                                            confirm_email=confirm_email)
    result = ErasureResult(erasure_id, user_id)
    async with sessions() as db:
        erasure = await db.get(UserErasure, erasure_id)
        after = erasure.last_org_id if erasure else None
    while True:
        async with sessions() as db:
            org_ids = await repo.org_ids_after(db, after, ORG_BATCH)
        for org_id in org_ids:
            counts = await erase_in_org(sessions, erasure_id, org_id, user_id, email, actor,
                                        storage)
            if counts:
                result.removed[str(org_id)] = counts
        if len(org_ids) < ORG_BATCH:
            break
        after = org_ids[-1]
    async with sessions() as db, db.begin():
        erasure = await db.get(UserErasure, erasure_id, with_for_update=True)
        if erasure is not None and erasure.status == ErasureStatus.ERASING:
            await repo.delete_account(db, user_id, email, account_failure_key(email))
            erasure.status = ErasureStatus.ERASED
            erasure.email = None
            erasure.finished_at = utcnow()
        result.orgs_affected = erasure.orgs_affected if erasure else 0
    return result


# --- reads ------------------------------------------------------------------------------------


async def list_erasures(db: AsyncSession, *, pending_only: bool = False) -> list[UserErasure]:
    statuses = [ErasureStatus.REQUESTED, ErasureStatus.ERASING] if pending_only else None
    return list(await repo.list_erasures(db, statuses=statuses))


async def latest_request(db: AsyncSession, user_id: uuid.UUID) -> UserErasure | None:
    return await repo.latest_for(db, user_id)


def refuse_api_keys(principal: Any) -> None:
    """Erasure requests and subject access are the person's own: not through an API key."""
    from enginex.tenancy.principal import UserPrincipal
    if not isinstance(principal, UserPrincipal):
        raise Forbidden("Sign in as the person: an API key belongs to an organization, not to "
                        "a person.")

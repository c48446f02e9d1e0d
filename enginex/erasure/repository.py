"""Queries of an erasure: the ``user_erasures`` rows (platform table) and, bound to one
organization, the person's rows and links in that organization's tables."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.models import AgentVersion
from enginex.approvals.models import Approval
from enginex.auth.models import ApiKey, LoginFailure, User
from enginex.credentials.models import Credential
from enginex.erasure.models import OPEN_STATUSES, ErasureStatus, UserErasure
from enginex.idempotency.models import IdempotencyRecord
from enginex.lifecycle.models import ExportStatus, TenantExport
from enginex.mail.models import OutboxMessage
from enginex.orgs.models import Invitation, Membership, Organization
from enginex.runs.models import Run
from enginex.sso.models import SsoIdentity


async def get_open(db: AsyncSession, user_id: uuid.UUID, *,
                   for_update: bool = False) -> UserErasure | None:
    stmt = select(UserErasure).where(UserErasure.user_id == user_id,
                                     UserErasure.status.in_([str(s) for s in OPEN_STATUSES]))
    if for_update:
        stmt = stmt.with_for_update()
    return (await db.execute(stmt)).scalar_one_or_none()


async def latest_for(db: AsyncSession, user_id: uuid.UUID) -> UserErasure | None:
    stmt = (select(UserErasure).where(UserErasure.user_id == user_id)
            .order_by(UserErasure.requested_at.desc()).limit(1))
    return (await db.execute(stmt)).scalar_one_or_none()


async def list_erasures(db: AsyncSession, *, statuses: Sequence[str] | None = None,
                        limit: int = 200) -> Sequence[UserErasure]:
    stmt = select(UserErasure)
    if statuses:
        stmt = stmt.where(UserErasure.status.in_(list(statuses)))
    return (await db.execute(stmt.order_by(UserErasure.requested_at.desc())
                             .limit(limit))).scalars().all()


async def org_ids_after(db: AsyncSession, after: uuid.UUID | None,
                        limit: int) -> list[uuid.UUID]:
    """Organization ids in id order after ``after`` (every organization, any status)."""
    stmt = select(Organization.id).order_by(Organization.id).limit(limit)
    if after is not None:
        stmt = stmt.where(Organization.id > after)
    return list((await db.execute(stmt)).scalars().all())


# --- bound to one organization ---------------------------------------------------------------


async def _count(db: AsyncSession, stmt: Any) -> int:
    result = await db.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


async def remove_from_org(db: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID,
                          email: str, withdrawn_ids: list[uuid.UUID]) -> dict[str, int]:
    """Delete the person's rows and unlink their id from the rows that stay, in the bound
    organization; returns how many rows each step touched (zero counts left out). Finished
    export archives of an organization the person was a member of are withdrawn (status
    ``expired``, link cleared); their ids are appended to ``withdrawn_ids`` so the caller
    deletes the files after the commit."""
    lowered = email.strip().lower()
    counts = {
        # API keys they created (their child keys go with them: FK cascade).
        "api_keys": await _count(db, delete(ApiKey).where(ApiKey.created_by == user_id)),
        "sso_identities": await _count(db, delete(SsoIdentity).where(
            SsoIdentity.user_id == user_id)),
        "invitations": await _count(db, delete(Invitation).where(
            func.lower(Invitation.email) == lowered)),
        "invitations_unlinked": await _count(db, update(Invitation).where(
            Invitation.invited_by == user_id).values(invited_by=None)),
        # The memberships (SCIM user and group rows cascade with it).
        "memberships": await _count(db, delete(Membership).where(
            Membership.user_id == user_id)),
        "sessions_unlinked": await _count(db, update(Run).where(
            Run.created_by == user_id).values(created_by=None)),
        "approvals_unlinked": await _count(db, update(Approval).where(
            Approval.decided_by == user_id).values(decided_by=None)),
        "credentials_unlinked": await _count(db, update(Credential).where(
            Credential.created_by == user_id).values(created_by=None)),
        "agent_versions_unlinked": await _count(db, update(AgentVersion).where(
            AgentVersion.deployed_by == user_id).values(deployed_by=None)),
        "exports_unlinked": await _count(db, update(TenantExport).where(
            TenantExport.requested_by == user_id).values(requested_by=None)),
        # Cached API answers of their requests (they may hold their address).
        "idempotency_keys": await _count(db, delete(IdempotencyRecord).where(
            IdempotencyRecord.principal == f"user:{user_id}")),
    }
    if counts["memberships"]:
        # Finished archives list the members' addresses (members.jsonl): withdraw them.
        withdrawn = list((await db.execute(select(TenantExport.id).where(
            TenantExport.status == ExportStatus.SUCCEEDED))).scalars().all())
        if withdrawn:
            await _count(db, update(TenantExport).where(TenantExport.id.in_(withdrawn)).values(
                status=ExportStatus.EXPIRED, link_digest=None, link_expires_at=None))
        counts["exports_withdrawn"] = len(withdrawn)
        withdrawn_ids.extend(withdrawn)
    org = await db.get(Organization, org_id)
    if org is not None and org.sso_break_glass_user_id == user_id:
        org.sso_break_glass_user_id = None
        counts["break_glass_unlinked"] = 1
    return {k: v for k, v in counts.items() if v}


# --- platform rows ----------------------------------------------------------------------------


async def delete_account(db: AsyncSession, user_id: uuid.UUID, email: str,
                         account_key: str) -> dict[str, int]:
    """Delete the account (its browser sessions and reset links cascade), its mail in the
    outbox and its failed sign-ins."""
    lowered = email.strip().lower()
    return {
        "outbox_messages": await _count(db, delete(OutboxMessage).where(
            func.lower(OutboxMessage.recipient) == lowered)),
        "login_failures": await _count(db, delete(LoginFailure).where(
            LoginFailure.key == account_key)),
        "account": await _count(db, delete(User).where(User.id == user_id)),
    }


async def mark(db: AsyncSession, erasure_id: uuid.UUID, **values: object) -> None:
    await db.execute(update(UserErasure).where(UserErasure.id == erasure_id).values(**values))


def is_open(status: str) -> bool:
    return status in {str(s) for s in OPEN_STATUSES}


__all__ = ["ErasureStatus", "delete_account", "get_open", "is_open", "latest_for",
           "list_erasures", "mark", "org_ids_after", "remove_from_org"]

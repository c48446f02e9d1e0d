"""SCIM tokens, and SCIM Users and Groups over EngineX's own tables.

What maps to what (docs/SCIM.md):

* A SCIM **User** of organization O is a membership of O. ``id`` is the account's user id;
  ``active`` is the membership's state (``false`` = disabled: the member loses O at once, see
  ``orgs.service.set_member_disabled``); ``userName``, ``externalId`` and every other
  attribute are stored per organization in ``scim_users`` and never shown to another
  organization. DELETE removes the membership (the account stays).
* **Accounts are global and found by email**: POST links the account that already has the
  user's email (primary ``emails`` value, else the first, else an email-shaped ``userName``)
  instead of creating a second one; with no account, one is created without a password (the
  person signs in through SSO). With no email at all, the account gets a unique placeholder
  ``scim-<random>@scim.invalid`` (never deliverable, never used to sign in). SCIM never
  changes an account's email, name or password afterwards: the account may belong to other
  organizations.
* A SCIM **Group** is stored per organization with its members (members of the same
  organization only). Its ``displayName`` feeds role mapping: when the organization has
  role-mapping rules (enginex/sso), each SCIM-managed member's role is
  ``role_for_groups(their group names, default viewer)``, re-computed whenever their groups
  change (never demoting the last enabled admin). Without rules, groups change no role.

Every change is audited in the organization's log with the SCIM token as actor.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from scim2_models import Context, PatchOp, SCIMException
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.models import User
from enginex.auth.service import SCIM_TOKEN_PREFIX
from enginex.kit.errors import Conflict
from enginex.kit.ids import new_id, new_token, token_digest
from enginex.kit.time import utcnow
from enginex.orgs import repository as org_repo
from enginex.orgs import service as orgs
from enginex.orgs.models import Membership
from enginex.scim.models import ScimGroup, ScimToken, ScimUser
from enginex.scim.protocol import (
    MAX_GROUP_MEMBERS_PER_REQUEST,
    EqFilter,
    GroupModel,
    PageRequest,
    ScimError,
    UserModel,
)
from enginex.scim.repository import (
    ScimGroupRepository,
    ScimTokenRepository,
    ScimUserRepository,
    UserRow,
)
from enginex.sso.role_mapping import has_rules, role_for_groups
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import acting_user_id
from enginex.tenancy.scopes import Role

log = logging.getLogger("enginex.scim")

DEFAULT_ROLE = Role.VIEWER
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Attributes that come from columns and tables, never from the stored document.
_USER_COLUMNS = ("id", "meta", "userName", "externalId", "active", "groups", "password")
_GROUP_COLUMNS = ("id", "meta", "displayName", "externalId", "members")


# --- tokens ------------------------------------------------------------------------------------


async def create_token(db: AsyncSession, ctx: TenantContext, *, name: str
                       ) -> tuple[str, ScimToken]:
    """A new SCIM token of ``ctx``'s organization; the plaintext is returned once and only
    its SHA-256 digest is stored. Audited (``scim_token.created``)."""
    token = f"{SCIM_TOKEN_PREFIX}{ctx.org_id.hex}_{new_token()}"
    row = ScimTokenRepository(db, ctx).add(ScimToken(
        token_digest=token_digest(token), hint=token[-4:], name=name,
        created_by=acting_user_id(ctx.principal)))
    await db.flush()
    await record(db, ctx, "scim_token.created", target_kind="scim_token", target_id=row.id,
                 details={"name": name})
    return token, row


async def list_tokens(db: AsyncSession, ctx: TenantContext) -> list[ScimToken]:
    return await ScimTokenRepository(db, ctx).list()


async def revoke_token(db: AsyncSession, ctx: TenantContext, token_id: uuid.UUID) -> ScimToken:
    """Revoke a token (NotFound for another organization's id); it fails on its next request.
    Idempotent; audited once (``scim_token.revoked``)."""
    row = await ScimTokenRepository(db, ctx).access(token_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await record(db, ctx, "scim_token.revoked", target_kind="scim_token", target_id=row.id)
    return row


# --- documents ---------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def user_document(row: UserRow, base: str, groups: Sequence[tuple[uuid.UUID, str]] = ()
                  ) -> dict[str, Any]:
    """The SCIM User of a member, as served."""
    scim = row.scim
    if scim is not None:
        doc: dict[str, Any] = dict(scim.document)
        user_name = scim.user_name
        created, modified = scim.created_at, scim.updated_at
    else:
        doc = {"schemas": [CORE_USER], "emails": [{"value": row.email, "primary": True}]}
        if row.display_name:
            doc["displayName"] = row.display_name
        user_name = row.email
        created = modified = row.joined_at
    doc["id"] = str(row.user_id)
    doc["userName"] = user_name
    if scim is not None and scim.external_id is not None:
        doc["externalId"] = scim.external_id
    doc["active"] = row.disabled_at is None
    if groups:
        doc["groups"] = [{"value": str(gid), "$ref": f"{base}/Groups/{gid}", "display": name,
                          "type": "direct"} for gid, name in groups]
    doc["meta"] = {"resourceType": "User", "created": _iso(created),
                   "lastModified": _iso(max(modified, row.disabled_at or modified)),
                   "location": f"{base}/Users/{row.user_id}"}
    return doc


def _stored(resource: Any, columns: Sequence[str]) -> dict[str, Any]:
    dumped = resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    return {k: v for k, v in dumped.items() if k not in columns}


# Schemas some identity providers list without sending any attribute of them (Entra lists
# its own group schema in every group it creates): ignored when no attribute uses them.
_IGNORED_SCHEMAS = frozenset({
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"})


def _parse(model: type[Any], body: dict[str, Any], context: Context, what: str) -> Any:
    listed = body.get("schemas")
    if isinstance(listed, list):
        body = {**body, "schemas": [s for s in listed
                                    if s not in _IGNORED_SCHEMAS or s in body]}
    try:
        return model.model_validate(body, scim_ctx=context)
    except ValidationError as exc:
        raise ScimError.from_validation(exc, what) from exc


def _remove_by_value(body: dict[str, Any]) -> dict[str, Any]:
    """Entra's removal of group members, ``{"op": "Remove", "path": "members", "value":
    [{"value": "<id>"}]}``, written as RFC 7644 has it: one remove per value with the filter
    ``members[value eq "<id>"]``. Other operations are kept as they are."""
    operations = body.get("Operations")
    if not isinstance(operations, list):
        return body
    rewritten: list[Any] = []
    for op in operations:
        values = op.get("value") if isinstance(op, dict) else None
        if (isinstance(op, dict) and str(op.get("op", "")).lower() == "remove"
                and isinstance(op.get("path"), str) and "[" not in op["path"]
                and isinstance(values, list) and values
                and all(isinstance(v, dict) and isinstance(v.get("value"), str)
                        for v in values)):
            for v in values:
                quoted = json.dumps(v["value"])
                rewritten.append({"op": "remove", "path": f"{op['path']}[value eq {quoted}]"})
        else:
            rewritten.append(op)
    return {**body, "Operations": rewritten}


def _apply_patch(model: type[Any], resource: Any, body: dict[str, Any]) -> None:
    body = _remove_by_value(body)
    try:
        patch = PatchOp[model].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST)
    except ValidationError as exc:
        raise ScimError.from_validation(exc, "PATCH request") from exc
    try:
        patch.patch(resource)
    except SCIMException as exc:
        raise ScimError(exc.status, f"PATCH refused: {exc.detail}", exc.scim_type or None
                        ) from exc
    except (ValidationError, ValueError, TypeError) as exc:
        raise ScimError(400, f"PATCH refused: {exc}", "invalidValue") from exc


def _email_of(resource: Any) -> str | None:
    emails = [e for e in (resource.emails or []) if e.value]
    primary = next((e for e in emails if e.primary), emails[0] if emails else None)
    if primary is not None and _EMAIL.match(str(primary.value)):
        return str(primary.value).strip()
    if resource.user_name and _EMAIL.match(resource.user_name.strip()):
        return str(resource.user_name).strip()
    return None


def _display_name_of(resource: Any) -> str:
    if resource.display_name:
        return str(resource.display_name)[:200]
    name = resource.name
    if name is not None:
        parts = [p for p in (name.given_name, name.family_name) if p]
        return (name.formatted or " ".join(parts))[:200]
    return ""


def _uniqueness(detail: str) -> ScimError:
    return ScimError(409, detail, "uniqueness")


def _not_found(resource: str) -> ScimError:
    return ScimError(404, f"No such {resource} in this organization. List them with GET "
                          f"/{resource}s to find its id.")


# --- users -------------------------------------------------------------------------------------


async def list_users(db: AsyncSession, ctx: TenantContext, base: str, page: PageRequest,
                     where: EqFilter | None) -> tuple[list[dict[str, Any]], int]:
    users = ScimUserRepository(db, ctx)
    if where is None:
        total = await users.count()
        rows = await users.page(page.start_index - 1, page.count)
    else:
        found = (await users.by_user_name(where.value) if where.attribute == "userName"
                 else await users.by_external_id(where.value))
        total = len(found)
        rows = found[page.start_index - 1:page.start_index - 1 + page.count]
    groups = await users.groups_of([r.user_id for r in rows])
    return [user_document(r, base, groups.get(r.user_id, ())) for r in rows], total


async def get_user(db: AsyncSession, ctx: TenantContext, base: str,
                   user_id: uuid.UUID) -> dict[str, Any]:
    users = ScimUserRepository(db, ctx)
    row = await users.get_row(user_id)
    if row is None:
        raise _not_found("User")
    groups = await users.groups_of([user_id])
    return user_document(row, base, groups.get(user_id, ()))


async def create_user(db: AsyncSession, ctx: TenantContext, base: str,
                      body: dict[str, Any]) -> dict[str, Any]:
    """POST /Users: link or create the account, add (or adopt) the membership, store the SCIM
    record. 409 uniqueness when the userName or externalId is taken in this organization or
    the person is already a SCIM user here."""
    resource = _parse(UserModel, body, Context.RESOURCE_CREATION_REQUEST, "User")
    if not resource.user_name or not str(resource.user_name).strip():
        raise ScimError(400, "userName is required.", "invalidValue")
    users = ScimUserRepository(db, ctx)
    await org_repo.lock_org(db, ctx.org_id)
    await _check_unique(users, resource, None)
    email = _email_of(resource) or f"scim-{uuid.uuid4().hex}@scim.invalid"
    account = await auth_repo.get_user_by_email(db, email)
    account_created = account is None
    if account is None:
        account = User(email=email, display_name=_display_name_of(resource), password_hash=None)
        db.add(account)
        try:
            await db.flush()
        except IntegrityError as exc:
            raise _uniqueness("An account with this email was created at the same time; "
                              "retry the request.") from exc
    membership = await org_repo.get_membership_for_guard(db, ctx.org_id, account.id)
    if membership is not None and await users.get_record(account.id) is not None:
        raise _uniqueness(f"The person with email {email} is already a SCIM user of this "
                          f"organization (id {account.id}); update that user instead.")
    if membership is None:
        membership = await orgs.add_member(db, ctx, account, DEFAULT_ROLE)
    users.add(ScimUser(user_id=account.id, user_name=str(resource.user_name).strip(),
                       user_name_key=str(resource.user_name).strip().lower(),
                       external_id=resource.external_id,
                       document=_stored(resource, _USER_COLUMNS)))
    await db.flush()
    await record(db, ctx, "scim.user_provisioned", target_kind="user", target_id=account.id,
                 details={"account_created": account_created})
    if resource.active is False:
        await orgs.set_member_disabled(db, ctx, account.id, True)
    return await get_user(db, ctx, base, account.id)


async def _check_unique(users: ScimUserRepository, resource: Any,
                        user_id: uuid.UUID | None) -> None:
    key = str(resource.user_name).strip().lower()
    if await users.taken(user_name_key=key, other_than=user_id):
        raise _uniqueness(f"userName {resource.user_name!r} is already used by another user of "
                          "this organization.")
    if resource.external_id is not None and await users.taken(
            external_id=resource.external_id, other_than=user_id):
        raise _uniqueness(f"externalId {resource.external_id!r} is already used by another "
                          "user of this organization.")


async def replace_user(db: AsyncSession, ctx: TenantContext, base: str, user_id: uuid.UUID,
                       body: dict[str, Any]) -> dict[str, Any]:
    """PUT /Users/{id}: replace the SCIM record (and ``active``)."""
    resource = _parse(UserModel, body, Context.RESOURCE_REPLACEMENT_REQUEST, "User")
    row = await ScimUserRepository(db, ctx).get_row(user_id)
    if row is None:
        raise _not_found("User")
    await _store_user(db, ctx, row, resource, "scim.user_replaced")
    return await get_user(db, ctx, base, user_id)


async def patch_user(db: AsyncSession, ctx: TenantContext, base: str, user_id: uuid.UUID,
                     body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /Users/{id}: add/remove/replace (RFC 7644 §3.5.2) with Entra's capitalised ops
    and string booleans, and Okta's path-less ``{"op":"replace","value":{"active":false}}``."""
    users = ScimUserRepository(db, ctx)
    row = await users.get_row(user_id)
    if row is None:
        raise _not_found("User")
    current = user_document(row, base)
    current.pop("meta", None)
    try:
        resource = UserModel.model_validate(current)
    except ValidationError as exc:
        raise ScimError(400, f"The stored user cannot be patched: {exc}", "invalidValue"
                        ) from exc
    _apply_patch(UserModel, resource, body)
    await _store_user(db, ctx, row, resource, "scim.user_patched")
    return await get_user(db, ctx, base, user_id)


async def _store_user(db: AsyncSession, ctx: TenantContext, row: UserRow, resource: Any,
                      action: str) -> None:
    if not resource.user_name or not str(resource.user_name).strip():
        raise ScimError(400, "userName is required.", "invalidValue")
    users = ScimUserRepository(db, ctx)
    await org_repo.lock_org(db, ctx.org_id)
    await _check_unique(users, resource, row.user_id)
    user_name = str(resource.user_name).strip()
    scim = await users.get_record(row.user_id)
    if scim is None:  # a member the identity provider now manages (adopted)
        scim = users.add(ScimUser(user_id=row.user_id, user_name=user_name,
                                  user_name_key=user_name.lower(), document={}))
    scim.user_name = user_name
    scim.user_name_key = user_name.lower()
    scim.external_id = resource.external_id
    scim.document = _stored(resource, _USER_COLUMNS)
    scim.updated_at = utcnow()
    await db.flush()
    await record(db, ctx, action, target_kind="user", target_id=row.user_id)
    if resource.active is not None and resource.active != (row.disabled_at is None):
        await orgs.set_member_disabled(db, ctx, row.user_id, not resource.active)


async def delete_user(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID) -> None:
    """DELETE /Users/{id}: remove the membership (its SCIM record and group memberships go
    with it); the account stays. 409 for the organization's last enabled admin."""
    if await ScimUserRepository(db, ctx).get_row(user_id) is None:
        raise _not_found("User")
    await orgs.remove_member(db, ctx, user_id)


# --- groups ------------------------------------------------------------------------------------


def group_document(group: ScimGroup, members: Sequence[Any], base: str) -> dict[str, Any]:
    doc: dict[str, Any] = dict(group.document)
    doc["id"] = str(group.id)
    doc["displayName"] = group.display_name
    if group.external_id is not None:
        doc["externalId"] = group.external_id
    if members:
        doc["members"] = [{"value": str(m.user_id), "$ref": f"{base}/Users/{m.user_id}",
                           "type": "User", **({"display": m.display} if m.display else {})}
                          for m in members]
    doc["meta"] = {"resourceType": "Group", "created": _iso(group.created_at),
                   "lastModified": _iso(group.updated_at),
                   "location": f"{base}/Groups/{group.id}"}
    return doc


async def list_groups(db: AsyncSession, ctx: TenantContext, base: str, page: PageRequest,
                      where: EqFilter | None) -> tuple[list[dict[str, Any]], int]:
    groups = ScimGroupRepository(db, ctx)
    if where is None:
        total = await groups.count()
        rows = await groups.page(page.start_index - 1, page.count)
    else:
        found = (await groups.find(display_name_key=where.value.strip().lower())
                 if where.attribute == "displayName" else
                 await groups.find(external_id=where.value))
        total = len(found)
        rows = found[page.start_index - 1:page.start_index - 1 + page.count]
    members = await groups.members_of([g.id for g in rows])
    return [group_document(g, members.get(g.id, []), base) for g in rows], total


async def _access_group(groups: ScimGroupRepository, group_id: uuid.UUID) -> ScimGroup:
    group = await groups.get(group_id)
    if group is None:
        raise _not_found("Group")
    return group


async def get_group(db: AsyncSession, ctx: TenantContext, base: str,
                    group_id: uuid.UUID) -> dict[str, Any]:
    groups = ScimGroupRepository(db, ctx)
    group = await _access_group(groups, group_id)
    members = await groups.members_of([group.id])
    return group_document(group, members.get(group.id, []), base)


async def create_group(db: AsyncSession, ctx: TenantContext, base: str,
                       body: dict[str, Any]) -> dict[str, Any]:
    resource = _parse(GroupModel, body, Context.RESOURCE_CREATION_REQUEST, "Group")
    await org_repo.lock_org(db, ctx.org_id)
    group = ScimGroup(id=new_id(), display_name="", display_name_key="", document={},
                      created_at=utcnow())
    await _store_group(db, ctx, group, resource, "scim.group_created", new=True)
    return await get_group(db, ctx, base, group.id)


async def replace_group(db: AsyncSession, ctx: TenantContext, base: str, group_id: uuid.UUID,
                        body: dict[str, Any]) -> dict[str, Any]:
    resource = _parse(GroupModel, body, Context.RESOURCE_REPLACEMENT_REQUEST, "Group")
    group = await _access_group(ScimGroupRepository(db, ctx), group_id)
    await org_repo.lock_org(db, ctx.org_id)
    await _store_group(db, ctx, group, resource, "scim.group_replaced")
    return await get_group(db, ctx, base, group_id)


async def patch_group(db: AsyncSession, ctx: TenantContext, base: str, group_id: uuid.UUID,
                      body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /Groups/{id}, e.g. Entra's ``{"op":"Add","path":"members","value":[...]}`` and
    ``{"op":"Remove","path":"members[value eq \\"<id>\\"]"}``, Okta's replace of members."""
    groups = ScimGroupRepository(db, ctx)
    group = await _access_group(groups, group_id)
    await org_repo.lock_org(db, ctx.org_id)
    current = group_document(group, (await groups.members_of([group.id])).get(group.id, []),
                             base)
    current.pop("meta", None)
    resource = GroupModel.model_validate(current)
    _apply_patch(GroupModel, resource, body)
    await _store_group(db, ctx, group, resource, "scim.group_patched")
    return await get_group(db, ctx, base, group_id)


async def _store_group(db: AsyncSession, ctx: TenantContext, group: ScimGroup, resource: Any,
                       action: str, *, new: bool = False) -> None:
    groups = ScimGroupRepository(db, ctx)
    name = str(resource.display_name or "").strip()
    if not name:
        raise ScimError(400, "displayName is required.", "invalidValue")
    if len(name) > 256:
        raise ScimError(400, "displayName is longer than 256 characters.", "invalidValue")
    key = name.lower()
    if any(g.id != group.id for g in await groups.find(display_name_key=key)):
        raise _uniqueness(f"A group named {name!r} already exists in this organization.")
    if resource.external_id is not None and any(
            g.id != group.id for g in await groups.find(external_id=resource.external_id)):
        raise _uniqueness(f"externalId {resource.external_id!r} is already used by another "
                          "group of this organization.")
    wanted = _wanted_members(resource)
    known = await groups.existing_members(list(wanted))
    unknown = [str(u) for u in wanted if u not in known]
    if unknown:
        raise ScimError(400, f"members: {', '.join(unknown[:5])} "
                             f"{'is' if len(unknown) == 1 else 'are'} not a user of this "
                             "organization. Provision the user first (POST /Users).",
                        "invalidValue")
    before = set() if new else {m.user_id for m in
                                (await groups.members_of([group.id])).get(group.id, [])}
    if new:
        groups.add(group)
    group.display_name = name
    group.display_name_key = key
    group.external_id = resource.external_id
    group.document = _stored(resource, _GROUP_COLUMNS)
    group.updated_at = utcnow()
    await db.flush()
    await groups.set_members(group.id, list(wanted.items()))
    await record(db, ctx, action, target_kind="scim_group", target_id=group.id,
                 details={"members": len(wanted)})
    await _sync_roles(db, ctx, before ^ set(wanted))


def _wanted_members(resource: Any) -> dict[uuid.UUID, str | None]:
    members = resource.members or []
    if len(members) > MAX_GROUP_MEMBERS_PER_REQUEST:
        raise ScimError(400, f"A group holds at most {MAX_GROUP_MEMBERS_PER_REQUEST} members "
                             "per request; add the rest with PATCH.", "tooMany")
    wanted: dict[uuid.UUID, str | None] = {}
    for member in members:
        if member.type is not None and str(member.type) == "Group":
            raise ScimError(400, "Nested groups are not supported: members are users.",
                            "invalidValue")
        user_id = _uuid_or_none(member.value)
        if user_id is None:
            raise ScimError(400, f"members: {member.value!r} is not a user id of this "
                                 "organization.", "invalidValue")
        wanted[user_id] = (str(member.display)[:256] if member.display else None)
    return wanted


async def delete_group(db: AsyncSession, ctx: TenantContext, group_id: uuid.UUID) -> None:
    groups = ScimGroupRepository(db, ctx)
    group = await _access_group(groups, group_id)
    await org_repo.lock_org(db, ctx.org_id)
    former = {m.user_id for m in (await groups.members_of([group.id])).get(group.id, [])}
    await groups.delete(group)
    await db.flush()
    await record(db, ctx, "scim.group_deleted", target_kind="scim_group", target_id=group_id)
    await _sync_roles(db, ctx, former)


# --- roles from groups -------------------------------------------------------------------------


async def _sync_roles(db: AsyncSession, ctx: TenantContext, user_ids: set[uuid.UUID]) -> None:
    """Give each SCIM-managed member in ``user_ids`` the role their groups map to (see the
    module docstring). The last enabled admin is never demoted (logged and skipped)."""
    if not user_ids or not await has_rules(db, ctx.org_id):
        return
    users = ScimUserRepository(db, ctx)
    names = await ScimGroupRepository(db, ctx).group_names_of(list(user_ids))
    for user_id in sorted(user_ids):
        if await users.get_record(user_id) is None:
            continue  # not managed by the identity provider: its role is the admins' call
        membership: Membership | None = await org_repo.get_membership_for_guard(
            db, ctx.org_id, user_id)
        if membership is None:
            continue
        role = await role_for_groups(db, ctx.org_id, names.get(user_id, []), DEFAULT_ROLE)
        if role == membership.role:
            continue
        try:  # change_role refuses (Conflict) before it changes anything
            await orgs.change_role(db, ctx, user_id, role)
        except Conflict as exc:
            log.warning("SCIM group role not applied (%s) tenant_id=%s user_id=%s",
                        exc.code, ctx.org_id, user_id)

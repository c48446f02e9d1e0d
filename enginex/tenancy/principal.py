"""Who is calling: a signed-in user (cookie), an org-scoped API key (bearer token), or an
organization's identity provider with a SCIM token (bearer token on the SCIM routes only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from enginex.tenancy.scopes import Role


@dataclass(frozen=True, slots=True)
class UserPrincipal:
    user_id: uuid.UUID
    email: str
    is_platform_admin: bool
    session_id: uuid.UUID
    csrf_token: str

    @property
    def kind(self) -> str:
        return "user"

    @property
    def actor_id(self) -> uuid.UUID:
        return self.user_id


@dataclass(frozen=True, slots=True)
class ApiKeyPrincipal:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role
    created_by: uuid.UUID | None

    @property
    def kind(self) -> str:
        return "api_key"

    @property
    def actor_id(self) -> uuid.UUID:
        return self.key_id

    @property
    def is_platform_admin(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class ScimTokenPrincipal:
    """An organization's identity provider, calling its SCIM endpoint with a SCIM token. It
    reaches only the SCIM routes (``ScimClient``) of that one organization."""

    token_id: uuid.UUID
    tenant_id: uuid.UUID

    @property
    def kind(self) -> str:
        return "scim_token"

    @property
    def actor_id(self) -> uuid.UUID:
        return self.token_id

    @property
    def is_platform_admin(self) -> bool:
        return False


Principal = UserPrincipal | ApiKeyPrincipal | ScimTokenPrincipal


def acting_user_id(principal: Principal | None) -> uuid.UUID | None:
    """The person behind a principal: the user, or the creator of an API key (None for a SCIM
    token: the identity provider is no person)."""
    if principal is None or isinstance(principal, ScimTokenPrincipal):
        return None
    return principal.user_id if isinstance(principal, UserPrincipal) else principal.created_by

"""Request and response bodies of sign-in, the current principal and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from enginex.kit.schemas import Email, Password, RequestBody, ResponseBody

RoleName = Literal["admin", "builder", "operator", "viewer"]


class LoginRequest(RequestBody):
    email: Email
    password: Password


class PasswordChange(RequestBody):
    current_password: Password
    new_password: Password


class PasswordResetRequest(RequestBody):
    email: Email


class PasswordResetRequested(ResponseBody):
    message: str


class PasswordResetConfirm(RequestBody):
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The code after '#' in the link of the reset email (pwr_...).")
    new_password: Password


class OrgMembershipOut(ResponseBody):
    id: uuid.UUID
    slug: str
    name: str
    status: str
    role: str


class MeOut(ResponseBody):
    kind: Literal["user", "api_key"]
    user_id: uuid.UUID | None = None
    email: str | None = None
    is_platform_admin: bool = False
    api_key_id: uuid.UUID | None = None
    organizations: list[OrgMembershipOut]
    csrf_token: str | None = Field(
        default=None, description="Send as the X-CSRF-Token header on unsafe cookie requests.")


class ApiKeyCreate(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: RoleName = "viewer"
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = 90


class ApiKeyOut(ResponseBody):
    id: uuid.UUID
    name: str
    role: str
    hint: str = Field(description="Last 4 characters of the key, to recognise it.")
    created_by: uuid.UUID | None = Field(
        description="The person who created the key (directly, or through parent_key_id).")
    parent_key_id: uuid.UUID | None = Field(
        description="The API key that created this key; null when a person created it. "
                    "Revoking a key revokes the keys it created, and theirs.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    token: str = Field(description="The key itself. Shown once; store it now.")

"""Bodies of the member and invitation routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.auth.schemas import RoleName
from enginex.kit.schemas import Email, Password, RequestBody, ResponseBody


class MemberOut(ResponseBody):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: str
    joined_at: datetime
    disabled_at: datetime | None = Field(
        None, description="Set while the membership is disabled (no access to the organization).")


class MemberUpdate(RequestBody):
    role: RoleName


class InvitationCreate(RequestBody):
    email: Email
    role: RoleName = "viewer"


class InvitationOut(ResponseBody):
    id: uuid.UUID
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


class InvitationCreated(InvitationOut):
    token: str = Field(description="Shown once. Send it to the invitee.")
    accept_url: str


class InvitationAccept(RequestBody):
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    password: Password | None = None
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""


class InvitationAccepted(ResponseBody):
    user_id: uuid.UUID
    org_slug: str
    new_account: bool

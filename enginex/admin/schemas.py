"""Bodies of the platform admin API: tenant metadata and counts only, never content."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import StringConstraints

from enginex.kit.schemas import Email, Name, RequestBody, ResponseBody, Slug


class TenantCreate(RequestBody):
    slug: Slug
    name: Name
    admin_email: Email
    region: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,40}$")] = "default"


class TenantOut(ResponseBody):
    id: uuid.UUID
    slug: str
    name: str
    status: str
    region: str
    created_at: datetime
    member_count: int


class TenantCreated(TenantOut):
    admin_user_id: uuid.UUID | None
    invitation_token: str | None
    invitation_url: str | None


class TenantStatusUpdate(RequestBody):
    status: Literal["active", "suspended"]

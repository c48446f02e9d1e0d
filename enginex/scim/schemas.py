"""Bodies of the SCIM token routes (the SCIM protocol's own bodies are scim2-models)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody


class ScimTokenCreate(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "SCIM"


class ScimTokenOut(ResponseBody):
    id: uuid.UUID
    name: str
    hint: str = Field(description="The token's last four characters.")
    created_by: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ScimTokenCreated(ScimTokenOut):
    token: str = Field(description="Shown once. Paste it into the identity provider as the "
                                   "SCIM bearer token (secret token / API token).")
    scim_base_url: str = Field(description="The SCIM base URL (tenant URL) of the organization.")

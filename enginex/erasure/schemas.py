"""Bodies of the erasure and subject-access routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody

Reason = Annotated[str, StringConstraints(max_length=500)]


class ErasureRequestCreate(RequestBody):
    password: Annotated[str | None, StringConstraints(max_length=1024)] = Field(
        default=None, description="Your current password (required when your account has "
                                  "one): it confirms that you, not a borrowed session, ask.")
    reason: Reason = ""


class ErasureConfirm(RequestBody):
    confirm_email: Annotated[str, StringConstraints(min_length=1, max_length=254)] = Field(
        description="The account's e-mail address, typed again: erasure cannot be undone.")


class ErasureDecline(RequestBody):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Why the request is declined; the person sees it.")


class ErasureOut(ResponseBody):
    id: uuid.UUID
    user_id: uuid.UUID = Field(description="The account id; once erased, a pseudonym that "
                                           "nothing maps back to a person.")
    email: str | None = Field(default=None, description="The account's address while the "
                                                        "account exists (platform admin only).")
    status: str = Field(description="requested, declined, withdrawn, erasing or erased")
    self_requested: bool
    reason: str
    requested_at: datetime
    decided_at: datetime | None
    decided_by_kind: str | None
    decline_reason: str
    orgs_done: int
    orgs_affected: int
    finished_at: datetime | None


class ErasureResultOut(ResponseBody):
    erasure: ErasureOut
    removed: dict[str, dict[str, int]] = Field(
        description="Per organization id: what was deleted or unlinked there in this call.")

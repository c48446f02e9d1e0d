"""``Idempotency-Key`` for creating requests that cost money (starting and forking sessions).

Contract (documented in docs/ARCHITECTURE.md, "Idempotent starts"):

* A client sends ``Idempotency-Key: <1-255 visible ASCII characters>``, unique per attempt
  of one logical request, and the same key on every retry of it.
* The first request reserves the key in its own transaction (a row keyed by
  ``(tenant_id, key)``) before it creates anything, and stores its answer in the same
  transaction as what it created. A concurrent duplicate waits on that row (PostgreSQL's
  unique index; SQLite's single writer) and then answers from it: at most one creation per
  key, whatever the timing, including an API process killed after its commit.
* A retry with the same key, the same operation, the same body and the same principal gets
  the stored status and body with ``Idempotent-Replayed: true``. The same key with another
  body, operation or principal is refused (409 ``idempotency_key_reused``).
* Keys are kept for 24 hours, per organization: the same key in another organization is
  another key. Error answers are not stored (the transaction rolled back): retrying after a
  4xx runs the request again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.idempotency.models import IdempotencyRecord
from enginex.idempotency.repository import IdempotencyRepository
from enginex.kit.errors import Conflict, ValidationFailed
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_TTL = timedelta(hours=24)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def parse_key(value: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header, or None when absent. Raises
    ValidationFailed for an empty, over-long or non-ASCII key."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise ValidationFailed(
            "The Idempotency-Key header must be 1 to 255 visible ASCII characters (no "
            "spaces); send a fresh random value such as a UUID for each new request and the "
            "same value when retrying it.", details={"header": HEADER})
    return value


def _principal_ref(ctx: TenantContext) -> str:
    return f"{ctx.principal.kind}:{ctx.principal.actor_id}"


def _fingerprint(operation: str, body: BaseModel) -> str:
    canonical = json.dumps([operation, body.model_dump(mode="json")], sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(record: IdempotencyRecord, operation: str, principal: str,
            fingerprint: str) -> JSONResponse:
    if (record.operation, record.principal, record.request_sha256) != (operation, principal,
                                                                       fingerprint):
        raise Conflict(
            "This Idempotency-Key was already used for a different request (another body, "
            "route or caller). Send a new unique key for a new request; reuse a key only to "
            "retry exactly the same request.", code="idempotency_key_reused",
            details={"header": HEADER})
    return JSONResponse(record.response, status_code=record.status_code or 200,
                        headers={REPLAYED_HEADER: "true"})


async def _reserve(db: AsyncSession, ctx: TenantContext, key: str, operation: str,
                   principal: str, fingerprint: str) -> IdempotencyRecord | JSONResponse:
    repo = IdempotencyRepository(db, ctx)
    now = utcnow()
    existing = await repo.get_by_key(key)
    if existing is not None and existing.expires_at > now:
        return _replay(existing, operation, principal, fingerprint)
    await repo.delete_expired(now)
    record = repo.add(IdempotencyRecord(key=key, operation=operation, principal=principal,
                                        request_sha256=fingerprint, status_code=None,
                                        response=None, created_at=now,
                                        expires_at=now + KEY_TTL))
    await db.flush()  # a concurrent holder of the key makes this wait, then fail
    return record


async def create_once(db: AsyncSession, ctx: TenantContext, key: str | None, *,
                      operation: str, body: BaseModel,
                      create: Callable[[], Awaitable[BaseModel]],
                      status_code: int = 201) -> BaseModel | JSONResponse:
    """Run ``create`` at most once per ``key`` in ``ctx``'s organization.

    Without a key, ``create`` simply runs. With one, the answer of the first request that
    committed is returned again (as a JSONResponse) for every retry; see the module
    docstring. Raises ValidationFailed for a malformed key and Conflict for a key reused
    with a different request."""
    if key is None:
        return await create()
    principal, fingerprint = _principal_ref(ctx), _fingerprint(operation, body)
    try:
        reserved = await _reserve(db, ctx, key, operation, principal, fingerprint)
    except IntegrityError:
        # Another request with this key committed first: answer as it did.
        await db.rollback()
        reserved = await _reserve(db, ctx, key, operation, principal, fingerprint)
    if isinstance(reserved, JSONResponse):
        return reserved
    result = await create()
    reserved.status_code = status_code
    reserved.response = jsonable_encoder(result)
    return result

"""Per-tenant API rate limits: fixed one-minute windows per key.

Keys: ``org:<org id>:<principal>`` for tenant routes (limit: the organization's
``api_requests_per_minute``), ``user:<id>`` for signed-in routes outside a tenant and
``addr:<address>`` for anonymous routes (limits from the settings). Counts live in the
database (``rate_windows``, upserted in the request's own transaction where it has one) or,
when ``ENGINEX_REDIS_URL`` is set, in Redis (INCR + EXPIRE in one round trip).

Why not pyrate-limiter (4.5.1): its SQLite and PostgreSQL buckets are synchronous (sqlite3 and
psycopg_pool, blocking the event loop), keep one table per bucket and one row per request
(sliding log), and do not expose the remaining count and reset needed for the RateLimit
headers. A fixed window costs one upsert (or one Redis round trip) per request.

Headers (IETF draft "RateLimit header fields for HTTP"): ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds) on every limited response, and
``Retry-After`` on a 429.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enginex.db import SessionFactory
from enginex.kit.errors import TooManyRequests
from enginex.usage.apimeter import ApiRequestMeter
from enginex.usage.models import RateWindow

WINDOW_SECONDS = 60
STATE_KEY = "rate_limit"


@dataclass(frozen=True)
class RateDecision:
    limit: int
    count: int
    reset_seconds: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_seconds)}


class RateStore(Protocol):
    async def hit(self, db: AsyncSession | None, key: str, org_id: uuid.UUID | None,
                  window: int, amount: int = 1) -> int:
        """Add ``amount`` requests of ``key`` to ``window``; returns the window's count."""
        ...


class DatabaseRateStore:
    """Counts in ``rate_windows``: in the caller's transaction, or a short one of its own."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions

    async def hit(self, db: AsyncSession | None, key: str, org_id: uuid.UUID | None,
                  window: int, amount: int = 1) -> int:
        if db is None:
            async with self.sessions() as own:
                count = await self._hit(own, key, org_id, window, amount)
                await own.commit()
                return count
        return await self._hit(db, key, org_id, window, amount)

    @staticmethod
    async def _hit(db: AsyncSession, key: str, org_id: uuid.UUID | None, window: int,
                   amount: int) -> int:
        insert = (pg_insert if db.get_bind().dialect.name == "postgresql"
                  else sqlite_insert)(RateWindow)
        stmt = insert.values(key=key, window_start=window, count=amount, org_id=org_id)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key", "window_start"],
            set_={"count": RateWindow.count + amount}).returning(RateWindow.count)
        return int((await db.execute(stmt)).scalar_one())


class RedisRateStore:
    """Counts in Redis (``ENGINEX_REDIS_URL``): one pipelined INCR + EXPIRE per request."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # only deployments with Redis import it

        self.client: Any = redis.Redis.from_url(url)

    async def hit(self, db: AsyncSession | None, key: str, org_id: uuid.UUID | None,
                  window: int, amount: int = 1) -> int:
        name = f"enginex:rl:{key}:{window}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(name, amount)
            pipe.expire(name, WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
        return int(count)

    async def aclose(self) -> None:
        await self.client.aclose()


# A process takes request numbers from the shared counter in blocks of limit / BLOCK_DIVISOR
# (at least 1: small limits are counted exactly, one write per request), so a busy key costs
# one write per block. A process may hold up to one block of unused numbers per key: the
# limit is then reached up to (processes x block) requests early, never late.
BLOCK_DIVISOR = 50


class RateLimiter:
    """Decides and records; raises TooManyRequests (429, with Retry-After) over the limit."""

    def __init__(self, store: RateStore, *, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock
        # (key, window) -> [next number to hand out, last number reserved]
        self._blocks: dict[tuple[str, int], list[int]] = {}
        self._window = 0

    async def _number(self, db: AsyncSession | None, key: str, org_id: uuid.UUID | None,
                      window: int, limit: int) -> int:
        """This request's number in ``key``'s window (1 = the first request)."""
        if window != self._window:  # a new minute: the old blocks are worthless
            self._blocks.clear()
            self._window = window
        block = self._blocks.get((key, window))
        if block is not None and block[1] > limit and block[0] > limit:
            # Over the limit for the rest of this window: refusing needs no counter write,
            # so a flood of refused requests costs the shared store (and its write lock)
            # nothing.
            block[0] += 1
            return block[0] - 1
        if block is not None and block[0] <= block[1]:
            block[0] += 1
            return block[0] - 1
        size = max(limit // BLOCK_DIVISOR, 1)
        last = await self.store.hit(db, key, org_id, window, size)
        self._blocks[(key, window)] = [last - size + 2, last]
        return last - size + 1

    async def check(self, db: AsyncSession | None, key: str, limit: int | None, *,
                    org_id: uuid.UUID | None = None) -> RateDecision | None:
        if limit is None:
            return None
        now = self.clock()
        window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        reset = max(int(window + WINDOW_SECONDS - now), 1)
        count = await self._number(db, key, org_id, window, limit)
        decision = RateDecision(limit=limit, count=count, reset_seconds=reset)
        if not decision.allowed:
            raise TooManyRequests(
                f"Too many requests: the limit is {limit} per minute. Wait {reset} seconds "
                "(Retry-After), or ask the platform operator for a larger plan.",
                code="rate_limited",
                details={"limit": "api_requests_per_minute", "unit": "requests",
                         "limit_value": limit, "usage": count, "reset_seconds": reset,
                         "what_to_do": f"Retry after {reset} seconds."},
                headers={**decision.headers(), "Retry-After": str(reset)})
        return decision


class RateLimitHeaders:
    """ASGI middleware: adds the RateLimit-* headers of the request's decision (set by the
    access rule in ``scope['state']``) to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = scope.get("state", {}).get(STATE_KEY)
                if isinstance(decision, RateDecision):
                    names = {k.lower() for k, _ in message.get("headers", [])}
                    extra = [(k.lower().encode(), v.encode())
                             for k, v in decision.headers().items()
                             if k.lower().encode() not in names]
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ApiRateLimits:
    """The app's rate-limit hook (``tenancy.guards.limit_rate``): picks the key and limit
    for the request's access rule and records the decision for the headers."""

    EXEMPT = ("/healthz", "/readyz")  # load balancer probes

    def __init__(self, limiter: RateLimiter, *, anonymous_per_minute: int,
                 user_per_minute: int, meter: ApiRequestMeter | None = None) -> None:
        self.limiter = limiter
        self.anonymous, self.user = anonymous_per_minute, user_per_minute
        self.meter = meter  # tenant requests into the usage ledger, per minute (apimeter.py)

    async def __call__(self, request: Any, db: AsyncSession | None, principal: Any,
                       org_id: uuid.UUID | None) -> None:
        from enginex.usage.service import org_limits

        if org_id is not None and db is not None:
            key = f"org:{org_id}:{principal.kind}:{principal.actor_id}"
            limit = (await org_limits(db, org_id)).get("api_requests_per_minute")
        elif principal is not None:
            key, limit = f"user:{principal.actor_id}", self.user
        else:
            if request.url.path in self.EXEMPT:
                return
            client = request.client.host if request.client else "unknown"
            key, limit = f"addr:{client}", self.anonymous
        decision = await self.limiter.check(db, key, limit, org_id=org_id)
        if decision is not None:
            request.state.rate_limit = decision
        if org_id is not None and self.meter is not None:
            self.meter.count(org_id)

"""create_app(): builds the ASGI application and mounts the feature routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from enginex.admin.api import router as admin_router
from enginex.admin.web import router as admin_web_router
from enginex.agents.api import router as agents_router
from enginex.agents.web import router as agents_web_router
from enginex.approvals.api import router as approvals_router
from enginex.approvals.web import router as approvals_web_router
from enginex.audit.api import router as audit_router
from enginex.audit.web import router as audit_web_router
from enginex.auth.api import router as auth_router
from enginex.auth.service import AuthKeys
from enginex.auth.web import router as auth_web_router
from enginex.config import Settings, get_settings
from enginex.credentials.api import router as credentials_router
from enginex.credentials.web import router as credentials_web_router
from enginex.db import Database
from enginex.erasure.api import router as erasure_router
from enginex.erasure.web import router as erasure_web_router
from enginex.health.api import router as health_router
from enginex.kit.crypto import derive_key, load_master_key
from enginex.kit.logs import configure_logging
from enginex.kit.process import protect_process
from enginex.lifecycle.api import router as lifecycle_router
from enginex.lifecycle.web import router as lifecycle_web_router
from enginex.llm.api import router as llm_router
from enginex.llm.web import router as llm_web_router
from enginex.mcp.api import router as mcp_router
from enginex.mcp.web import router as mcp_web_router
from enginex.orgs.api import router as orgs_router
from enginex.orgs.web import router as orgs_web_router
from enginex.reports.api import router as reports_router
from enginex.reports.web import router as reports_web_router
from enginex.runs.api import router as runs_router
from enginex.runs.runtime import build_engine, build_worker
from enginex.runs.web import router as runs_web_router
from enginex.scim.api import install_scim_errors, scim_router
from enginex.scim.api import router as scim_tokens_router
from enginex.skills.api import router as skills_router
from enginex.skills.web import router as skills_web_router
from enginex.sso.api import router as sso_router
from enginex.sso.oidc import OidcCache
from enginex.sso.saml_web import router as saml_web_router
from enginex.sso.service import DnsTxtResolver
from enginex.sso.signin import FlowSealer
from enginex.sso.web import router as sso_web_router
from enginex.usage.api import router as usage_router
from enginex.usage.apimeter import ApiRequestMeter
from enginex.usage.metrics import router as metrics_router
from enginex.usage.ratelimit import (
    ApiRateLimits,
    DatabaseRateStore,
    RateLimiter,
    RateLimitHeaders,
    RateStore,
    RedisRateStore,
)
from enginex.usage.web import router as usage_web_router
from enginex.web.errors import install_error_handlers
from enginex.web.invitations import router as invitations_web_router
from enginex.web.middleware import SecurityMiddleware
from enginex.web.pages import router as pages_router

ROUTERS = (health_router, auth_router, orgs_router, admin_router, runs_router,
           agents_router, approvals_router, reports_router, llm_router, credentials_router,
           audit_router, mcp_router, skills_router, lifecycle_router, erasure_router, sso_router,
           scim_tokens_router, scim_router, usage_router, metrics_router, pages_router)
# Dashboard pages (HTML), one router per feature: enginex/<feature>/web.py
WEB_ROUTERS = (orgs_web_router, runs_web_router, approvals_web_router, reports_web_router,
               agents_web_router, llm_web_router, admin_web_router, invitations_web_router,
               audit_web_router, credentials_web_router, mcp_web_router, skills_web_router,
               auth_web_router, lifecycle_web_router, erasure_web_router, sso_web_router,
               saml_web_router, usage_web_router)


def create_served_app() -> FastAPI:
    """The app of one of ``enginex serve --workers N``'s processes: a process of its own, whose
    logging is configured here (its parent's configuration does not cross the spawn)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_safe()
    master = load_master_key(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        protect_process()  # stdio MCP servers must not read this process's environ/memory
        task = None
        stop_metering = asyncio.Event()
        metering = asyncio.create_task(app.state.api_meter.run(stop_metering),
                                       name="api-request-metering")
        if settings.embedded_worker:
            app.state.worker = build_worker(settings, app.state.db, app.state.engine)
            task = asyncio.create_task(app.state.worker.run(), name="embedded-worker")
        try:
            yield
        finally:
            if task is not None:
                app.state.worker.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            stop_metering.set()  # the last minute's API request counts are written
            with contextlib.suppress(asyncio.CancelledError):
                await metering
            await app.state.db.dispose()

    # Swagger UI / ReDoc load scripts from a CDN, which the CSP (and closed networks) refuse:
    # the schema is served at /openapi.json for any OpenAPI viewer.
    app = FastAPI(title="EngineX", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Multi-tenant platform for AI-agent workflows. Tenant routes live "
                              "under /api/v1/orgs/{org}/ and need a session cookie (plus "
                              "X-CSRF-Token on unsafe methods) or an org API key.")
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.master_key = master
    app.state.auth_keys = AuthKeys(csrf=derive_key(master, "csrf"))
    app.state.engine = build_engine(settings, app.state.db, master)
    app.state.storage = app.state.engine.storage
    # SSO: IdP discovery/JWKS cache, the DNS TXT resolver for domain verification (tests
    # replace it with their own), and the key sealing the sign-in flow cookie.
    app.state.oidc_cache = OidcCache()
    app.state.dns_resolver = DnsTxtResolver()
    app.state.sso_flow_sealer = FlowSealer(master)
    # Per-tenant API rate limits (usage/ratelimit.py), called by every API access rule.
    store: RateStore = (RedisRateStore(settings.redis_url) if settings.redis_url
                        else DatabaseRateStore(app.state.db.sessions))
    app.state.api_meter = ApiRequestMeter(app.state.db.sessions)
    app.state.rate_limit = ApiRateLimits(
        RateLimiter(store), anonymous_per_minute=settings.rate_limit_anonymous_per_minute,
        user_per_minute=settings.rate_limit_user_per_minute, meter=app.state.api_meter)
    install_error_handlers(app)
    install_scim_errors(app)  # SCIM clients read SCIM's error format under /scim/
    for router in (*ROUTERS, *WEB_ROUTERS):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "web" / "static"),
              name="static")
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(SecurityMiddleware, max_body=settings.max_body_bytes,
                       max_upload=settings.max_upload_bytes,
                       hsts=settings.base_url.startswith("https://"))
    if settings.trusted_proxy_list:
        # Outermost: the client address (sign-in throttling, logs) and scheme are taken from
        # X-Forwarded-For / -Proto only when the connection comes from a trusted proxy, and
        # then the rightmost address that is not itself a trusted proxy.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    return app

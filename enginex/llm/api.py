"""LLM settings of one organization: read, replace, and test the connection.

Admins (settings:write) change them; builders (settings:read) read them; the API key is
write-only. Another organization's slug answers 404 like a missing one (tenant guard).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Request

from enginex.audit.service import record
from enginex.kit.crypto import load_master_key
from enginex.llm import service
from enginex.llm.base import CompletionRequest, LLMError, Message
from enginex.llm.models import LLMSettings
from enginex.llm.schemas import LLMSettingsOut, LLMSettingsUpdate, LLMTestResult
from enginex.llm.service import LLMKeyBox
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["llm settings"])

TEST_NODE = "settings-test"
TEST_TIMEOUT_SECONDS = 20.0


def key_box(request: Request) -> LLMKeyBox:
    """The process's LLMKeyBox, built once from the master key ``create_app`` loaded
    (``app.state.master_key``) and kept on ``app.state``."""
    box = getattr(request.app.state, "llm_key_box", None)
    if box is None:
        master = getattr(request.app.state, "master_key", None)
        box = LLMKeyBox(master or load_master_key(request.app.state.settings))
        request.app.state.llm_key_box = box
    return box


def allow_private_network(request: Request) -> bool:
    """Whether the deployment lets tenants reach private addresses
    (ENGINEX_ALLOW_PRIVATE_NETWORK)."""
    return bool(getattr(request.app.state.settings, "allow_private_network", False))


def _out(row: LLMSettings | None) -> LLMSettingsOut:
    if row is None:
        return LLMSettingsOut(provider="scripted", base_url=None, default_model="scripted",
                              temperature=None, max_tokens=None, has_api_key=False,
                              updated_at=None)
    return LLMSettingsOut(provider=row.provider, base_url=row.base_url,
                          default_model=row.default_model, temperature=row.temperature,
                          max_tokens=row.max_tokens,
                          has_api_key=row.api_key_ciphertext is not None,
                          updated_at=row.updated_at)


@router.get("/orgs/{org}/settings/llm", response_model=LLMSettingsOut)
async def get_llm_settings(db: DB, ctx: Annotated[TenantContext, Require(Scope.SETTINGS_READ)]
                           ) -> LLMSettingsOut:
    """The organization's LLM provider settings (scripted until saved). Never the API key."""
    return _out(await service.get_llm_settings(db, ctx))


@router.put("/orgs/{org}/settings/llm", response_model=LLMSettingsOut)
async def put_llm_settings(body: LLMSettingsUpdate, request: Request, db: DB,
                           ctx: Annotated[TenantContext, Require(Scope.SETTINGS_WRITE)]
                           ) -> LLMSettingsOut:
    """Replace the LLM settings. ``api_key`` omitted keeps the stored key, "" clears it.
    422 when the base URL is refused by the egress guard. Audited."""
    row = await service.update_llm_settings(
        db, ctx, provider=body.provider, base_url=body.base_url,
        default_model=body.default_model, api_key=body.api_key, temperature=body.temperature,
        max_tokens=body.max_tokens, actor=ctx.principal, key_box=key_box(request),
        allow_private_network=allow_private_network(request))
    return _out(row)


@router.post("/orgs/{org}/settings/llm/test", response_model=LLMTestResult)
async def test_llm_settings(request: Request, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.SETTINGS_WRITE)]
                            ) -> LLMTestResult:
    """Send one tiny completion with the saved settings; answers 200 with ``ok`` false and the
    provider's error (never the key) when it fails. Audited as ``llm_settings.tested``."""
    row = await service.get_llm_settings(db, ctx)
    provider_name = row.provider if row else "scripted"
    model = row.default_model if row else "scripted"
    started = time.perf_counter()
    try:
        provider = await service.provider_from_settings(
            ctx, row, scripted_replies={TEST_NODE: ["ok"]},
            allow_private_network=allow_private_network(request), key_box=key_box(request),
            request_timeout=TEST_TIMEOUT_SECONDS)
    except LLMError as exc:
        ok, message = False, str(exc)
    else:
        # Release the database connection while waiting for the remote model.
        await db.commit()
        try:
            response = await provider.complete(CompletionRequest(
                messages=(Message(role="user", content="Reply with the single word: ok"),),
                tools=(), model=model, max_tokens=16, node_id=TEST_NODE))
            ok, message = True, f"The model answered: {response.text[:200]!r}"
            model = response.model or model
        except LLMError as exc:
            ok, message = False, str(exc)
        finally:
            await service.close_provider(provider)
    latency_ms = int((time.perf_counter() - started) * 1000)
    await record(db, ctx, "llm_settings.tested", target_kind="llm_settings",
                 target_id=ctx.org_id, details={"ok": ok, "provider": provider_name,
                                                "model": model, "latency_ms": latency_ms})
    return LLMTestResult(ok=ok, message=message, provider=provider_name, model=model,
                         latency_ms=latency_ms)

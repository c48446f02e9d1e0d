"""LLM configuration of one organization: the quick setup (``/settings/llm``: read, replace,
test), named providers (``/llm/providers``) and model aliases (``/llm/aliases``).

Admins (settings:write) change them; builders (settings:read) read them. Keys are write-only
(quick setup) or live in org credentials referenced by name (providers): no route returns one.
Another organization's slug, provider id or alias answers 404 like a missing one.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import Query, Request, Response, status

from enginex.audit.service import record
from enginex.kit.crypto import load_master_key
from enginex.kit.errors import ValidationFailed
from enginex.llm import service
from enginex.llm.base import CompletionRequest, LLMError, Message
from enginex.llm.models import LLMProviderConfig, LLMSettings, ModelAlias
from enginex.llm.schemas import (
    AliasOut,
    AliasSet,
    LLMSettingsOut,
    LLMSettingsUpdate,
    LLMTestResult,
    ProviderCreate,
    ProviderOut,
    ProviderUpdate,
)
from enginex.llm.service import LLMKeyBox, Resolution
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["llm settings"])
Reader = Annotated[TenantContext, Require(Scope.SETTINGS_READ)]
Manager = Annotated[TenantContext, Require(Scope.SETTINGS_WRITE)]

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


# --- providers ---------------------------------------------------------------------------------


def _provider_out(provider: LLMProviderConfig, aliases: list[str]) -> ProviderOut:
    return ProviderOut(id=provider.id, name=provider.name, kind=provider.kind,
                       base_url=provider.base_url, credential_name=provider.credential_name,
                       allowed_models=list(provider.allowed_models), aliases=aliases,
                       created_at=provider.created_at, updated_at=provider.updated_at)


def _alias_out(alias: ModelAlias, provider: LLMProviderConfig) -> AliasOut:
    return AliasOut(name=alias.name, provider=provider.name, provider_id=provider.id,
                    model=alias.model, temperature=alias.temperature,
                    max_tokens=alias.max_tokens, updated_at=alias.updated_at)


@router.get("/orgs/{org}/llm/providers", response_model=list[ProviderOut])
async def list_providers(db: DB, ctx: Reader) -> list[ProviderOut]:
    """The organization's LLM providers by name, with the aliases that use each."""
    aliases = await service.alias_names_by_provider(db, ctx)
    return [_provider_out(p, aliases.get(p.id, []))
            for p in await service.list_providers(db, ctx)]


@router.post("/orgs/{org}/llm/providers", response_model=ProviderOut,
             status_code=status.HTTP_201_CREATED)
async def create_provider(body: ProviderCreate, request: Request, db: DB,
                          ctx: Manager) -> ProviderOut:
    """Add a provider. 409 if the name is taken; 422 for a missing base URL (openai_compatible)
    or credential (anthropic), a base URL refused by the egress guard (``egress_refused``), or
    a credential that does not exist or cannot hold a key. Audited."""
    provider = await service.create_provider(
        db, ctx, name=body.name, kind=body.kind, base_url=body.base_url,
        credential_name=body.credential_name, allowed_models=list(body.allowed_models),
        actor=ctx.principal, allow_private_network=allow_private_network(request))
    return _provider_out(provider, [])


@router.get("/orgs/{org}/llm/providers/{provider_id}", response_model=ProviderOut)
async def get_provider(provider_id: uuid.UUID, db: DB, ctx: Reader) -> ProviderOut:
    """One provider; 404 for a missing id and another organization's alike."""
    provider = await service.access_provider(db, ctx, provider_id)
    aliases = await service.alias_names_by_provider(db, ctx)
    return _provider_out(provider, aliases.get(provider.id, []))


@router.patch("/orgs/{org}/llm/providers/{provider_id}", response_model=ProviderOut)
async def update_provider(provider_id: uuid.UUID, body: ProviderUpdate, request: Request,
                          db: DB, ctx: Manager) -> ProviderOut:
    """Change a provider. Omitted fields are kept; ``null`` clears base_url and
    credential_name. 409 for a taken name; 422 as for create, and when the new allowed models
    leave out a model an alias uses. Audited."""
    given = body.model_fields_set
    changes: dict[str, object] = {}
    for field in ("name", "kind", "allowed_models"):
        if field in given:
            if getattr(body, field) is None:
                raise ValidationFailed(f"{field}: cannot be null; omit it to keep it.",
                                       details={"field": field})
            changes[field] = getattr(body, field)
    for field in ("base_url", "credential_name"):
        if field in given:
            changes[field] = getattr(body, field)
    provider = await service.update_provider(
        db, ctx, provider_id, actor=ctx.principal,
        allow_private_network=allow_private_network(request), **changes)  # type: ignore[arg-type]
    aliases = await service.alias_names_by_provider(db, ctx)
    return _provider_out(provider, aliases.get(provider.id, []))


@router.delete("/orgs/{org}/llm/providers/{provider_id}",
               status_code=status.HTTP_204_NO_CONTENT)
async def delete_provider(provider_id: uuid.UUID, db: DB, ctx: Manager) -> Response:
    """Delete a provider; 409 naming the aliases that still use it. Audited."""
    await service.delete_provider(db, ctx, provider_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _test_model(db: DB, ctx: TenantContext, provider: LLMProviderConfig,
                      model: str | None) -> str:
    if model:
        if provider.allowed_models and model not in provider.allowed_models:
            raise ValidationFailed(
                f"model: '{model}' is not among the allowed models of '{provider.name}' "
                f"({', '.join(provider.allowed_models)}).", details={"field": "model"})
        return model
    if provider.allowed_models:
        return str(provider.allowed_models[0])
    for alias, target in await service.list_aliases(db, ctx):
        if target.id == provider.id:
            return alias.model
    if provider.kind == "scripted":
        return "scripted"
    raise ValidationFailed(f"model: name the model to test, as ?model=<name>: the provider "
                           f"'{provider.name}' has no allowed models and no alias to take one "
                           "from.", details={"field": "model"})


@router.post("/orgs/{org}/llm/providers/{provider_id}/test", response_model=LLMTestResult)
async def test_provider(provider_id: uuid.UUID, request: Request, db: DB, ctx: Manager,
                        model: Annotated[str | None, Query(
                            max_length=200, description="The model to ask (default: the first "
                            "allowed model, else the model of an alias using the provider)"
                        )] = None) -> LLMTestResult:
    """Send one tiny completion through the provider. Answers 200 with ``ok`` false and the
    provider's error (never the key) when it fails; 404 for another organization's provider;
    422 when no model can be chosen. Reading the key is audited as ``credential.used``
    (purpose ``llm_provider.test``), the test as ``llm_provider.tested``."""
    provider = await service.access_provider(db, ctx, provider_id)
    chosen = await _test_model(db, ctx, provider, model)
    resolution = Resolution(requested=chosen, provider_id=provider.id, provider=provider.name,
                            kind=provider.kind, base_url=provider.base_url,
                            credential_name=provider.credential_name, model=chosen)
    started = time.perf_counter()
    try:
        client = await service.provider_from_resolution(
            db, ctx, resolution, scripted_replies={TEST_NODE: ["ok"]}, secrets=None,
            keyring=key_box(request).keyring,
            allow_private_network=allow_private_network(request),
            request_timeout=TEST_TIMEOUT_SECONDS, purpose="llm_provider.test")
    except LLMError as exc:
        ok, message = False, str(exc)
    else:
        # Commit the credential.used entry and release the connection while the model works.
        await db.commit()
        try:
            response = await client.complete(CompletionRequest(
                messages=(Message(role="user", content="Reply with the single word: ok"),),
                tools=(), model=chosen, max_tokens=16, node_id=TEST_NODE))
            ok, message = True, f"The model answered: {response.text[:200]!r}"
        except LLMError as exc:
            ok, message = False, str(exc)
        finally:
            await service.close_provider(client)
    latency_ms = int((time.perf_counter() - started) * 1000)
    await record(db, ctx, "llm_provider.tested", target_kind="llm_provider",
                 target_id=resolution.provider_id,
                 details={"ok": ok, "provider": resolution.provider, "model": chosen,
                          "latency_ms": latency_ms})
    return LLMTestResult(ok=ok, message=message, provider=resolution.provider, model=chosen,
                         latency_ms=latency_ms)


# --- model aliases -----------------------------------------------------------------------------


@router.get("/orgs/{org}/llm/aliases", response_model=list[AliasOut])
async def list_aliases(db: DB, ctx: Reader) -> list[AliasOut]:
    """The organization's model aliases by name, with their providers and models."""
    return [_alias_out(a, p) for a, p in await service.list_aliases(db, ctx)]


@router.put("/orgs/{org}/llm/aliases/{alias}", response_model=AliasOut)
async def set_alias(alias: str, body: AliasSet, response: Response, db: DB,
                    ctx: Manager) -> AliasOut:
    """Create (201) or replace (200) the alias. 422 for an invalid alias name, an unknown
    provider, or a model outside the provider's non-empty allowed models. Audited."""
    row, provider, created = await service.set_alias(
        db, ctx, alias, provider=body.provider, model=body.model,
        temperature=body.temperature, max_tokens=body.max_tokens, actor=ctx.principal)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return _alias_out(row, provider)


@router.delete("/orgs/{org}/llm/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alias(alias: str, db: DB, ctx: Manager) -> Response:
    """Delete an alias; 404 if this organization has none of that name. Audited."""
    await service.delete_alias(db, ctx, alias, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

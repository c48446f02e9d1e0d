"""SCIM 2.0 for one organization: the token routes (org admins, ``scim:write``) and the SCIM
protocol at ``{ENGINEX_BASE_URL}/scim/v2/{org}`` (the organization's SCIM token only).

Every SCIM protocol route answers errors in SCIM's format (RFC 7644 §3.12), the guard's
included: no or bad token 401, another organization's token or an unknown organization 404
(the same body), suspended organization 403. Bodies are limited to
``protocol.MAX_BODY_BYTES``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRouter

from enginex.kit.errors import AppError
from enginex.scim import service
from enginex.scim.protocol import (
    RESOURCE_MODELS,
    ScimError,
    app_error_as_scim,
    list_response,
    page_request,
    parse_filter,
    project,
    projection,
    read_json,
    resource_types,
    schemas,
    scim_error_response,
    scim_response,
    service_provider_config,
)
from enginex.scim.schemas import ScimTokenCreate, ScimTokenCreated, ScimTokenOut
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, GuardedRoute, Public, Require, ScimClient, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["scim"])


def scim_base_url(request: Request, org_slug: str) -> str:
    return f"{request.app.state.settings.base_url.rstrip('/')}/scim/v2/{org_slug}"


# --- tokens (org admins) -----------------------------------------------------------------------


@router.post("/orgs/{org}/scim/tokens", response_model=ScimTokenCreated,
             status_code=status.HTTP_201_CREATED)
async def create_scim_token(body: ScimTokenCreate, request: Request, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.SCIM_WRITE)]
                            ) -> ScimTokenCreated:
    """Create a SCIM bearer token; the response holds it (field ``token``) once."""
    token, row = await service.create_token(db, ctx, name=body.name)
    return ScimTokenCreated.model_validate({
        **ScimTokenOut.model_validate(row).model_dump(), "token": token,
        "scim_base_url": scim_base_url(request, ctx.org_slug)})


@router.get("/orgs/{org}/scim/tokens", response_model=list[ScimTokenOut])
async def list_scim_tokens(db: DB, ctx: Annotated[TenantContext, Require(Scope.SCIM_WRITE)]
                           ) -> list[ScimTokenOut]:
    """The organization's SCIM tokens (never their values)."""
    return [ScimTokenOut.model_validate(t) for t in await service.list_tokens(db, ctx)]


@router.delete("/orgs/{org}/scim/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_scim_token(token_id: uuid.UUID, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.SCIM_WRITE)]
                            ) -> Response:
    """Revoke a SCIM token: the identity provider's next request with it gets 401."""
    await service.revoke_token(db, ctx, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- the SCIM protocol -------------------------------------------------------------------------


class ScimRoute(GuardedRoute):
    """A guarded route whose errors (its guard's too) are SCIM error responses."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def scim_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ScimError as exc:
                return scim_error_response(exc.status, exc.detail, exc.scim_type)
            except AppError as exc:
                return app_error_as_scim(exc)
            except RequestValidationError as exc:
                fields = ", ".join(".".join(str(p) for p in e.get("loc", ()))
                                   for e in exc.errors()[:5])
                return scim_error_response(400, f"Invalid request parameters: {fields}.",
                                           "invalidValue")

        return scim_handler


scim_router = APIRouter(prefix="/scim/v2", tags=["scim"], route_class=ScimRoute)
Scim = Annotated[TenantContext, ScimClient()]


def _base(request: Request, ctx: TenantContext) -> str:
    return scim_base_url(request, ctx.org_slug)


def _resource_id(raw: str, resource: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise ScimError(404, f"No such {resource[:-1]} in this organization. List them with "
                             f"GET /{resource} to find its id.") from exc


def _created(body: dict[str, Any]) -> Response:
    return scim_response(body, 201, headers={"Location": body["meta"]["location"]})


@scim_router.get("/{org}/ServiceProviderConfig")
async def scim_service_provider_config(request: Request, ctx: Scim) -> Response:
    """What this SCIM server supports (RFC 7644 §5)."""
    return scim_response(service_provider_config(_base(request, ctx)))


@scim_router.get("/{org}/Schemas")
async def scim_schemas(request: Request, ctx: Scim) -> Response:
    found = schemas(_base(request, ctx))
    return scim_response(list_response(found, len(found), page_request(request)))


@scim_router.get("/{org}/Schemas/{schema_id}")
async def scim_schema(schema_id: str, request: Request, ctx: Scim) -> Response:
    for schema in schemas(_base(request, ctx)):
        if schema["id"] == schema_id:
            return scim_response(schema)
    raise ScimError(404, f"No schema {schema_id!r}. GET /Schemas lists them.")


@scim_router.get("/{org}/ResourceTypes")
async def scim_resource_types(request: Request, ctx: Scim) -> Response:
    found = resource_types(_base(request, ctx))
    return scim_response(list_response(found, len(found), page_request(request)))


@scim_router.get("/{org}/ResourceTypes/{type_id}")
async def scim_resource_type(type_id: str, request: Request, ctx: Scim) -> Response:
    for resource_type in resource_types(_base(request, ctx)):
        if resource_type["id"] == type_id:
            return scim_response(resource_type)
    raise ScimError(404, f"No resource type {type_id!r}. GET /ResourceTypes lists them.")


@scim_router.get("/{org}/Users")
async def scim_list_users(request: Request, db: DB, ctx: Scim) -> Response:
    """Users of the organization; ``filter`` on userName / externalId (``eq``),
    startIndex/count pagination."""
    page = page_request(request)
    where = parse_filter("Users", request.query_params.get("filter"))
    found, total = await service.list_users(db, ctx, _base(request, ctx), page, where)
    wanted = projection(request)
    found = [project(RESOURCE_MODELS["Users"], doc, wanted) for doc in found]
    return scim_response(list_response(found, total, page))


@scim_router.post("/{org}/Users")
async def scim_create_user(request: Request, db: DB, ctx: Scim) -> Response:
    """Provision a user: links the account that has the email, or creates one."""
    body = await read_json(request)
    return _created(await service.create_user(db, ctx, _base(request, ctx), body))


@scim_router.get("/{org}/Users/{user_id}")
async def scim_get_user(user_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    doc = await service.get_user(db, ctx, _base(request, ctx), _resource_id(user_id, "Users"))
    return scim_response(project(RESOURCE_MODELS["Users"], doc, projection(request)))


@scim_router.put("/{org}/Users/{user_id}")
async def scim_replace_user(user_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    body = await read_json(request)
    return scim_response(await service.replace_user(
        db, ctx, _base(request, ctx), _resource_id(user_id, "Users"), body))


@scim_router.patch("/{org}/Users/{user_id}")
async def scim_patch_user(user_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    """``active: false`` disables the membership at once (session, API keys, streams)."""
    body = await read_json(request)
    return scim_response(await service.patch_user(
        db, ctx, _base(request, ctx), _resource_id(user_id, "Users"), body))


@scim_router.delete("/{org}/Users/{user_id}")
async def scim_delete_user(user_id: str, db: DB, ctx: Scim) -> Response:
    """Remove the membership; the account stays (it may belong to other organizations)."""
    await service.delete_user(db, ctx, _resource_id(user_id, "Users"))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@scim_router.get("/{org}/Groups")
async def scim_list_groups(request: Request, db: DB, ctx: Scim) -> Response:
    page = page_request(request)
    where = parse_filter("Groups", request.query_params.get("filter"))
    found, total = await service.list_groups(db, ctx, _base(request, ctx), page, where)
    wanted = projection(request)
    found = [project(RESOURCE_MODELS["Groups"], doc, wanted) for doc in found]
    return scim_response(list_response(found, total, page))


@scim_router.post("/{org}/Groups")
async def scim_create_group(request: Request, db: DB, ctx: Scim) -> Response:
    body = await read_json(request)
    return _created(await service.create_group(db, ctx, _base(request, ctx), body))


@scim_router.get("/{org}/Groups/{group_id}")
async def scim_get_group(group_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    doc = await service.get_group(db, ctx, _base(request, ctx),
                                  _resource_id(group_id, "Groups"))
    return scim_response(project(RESOURCE_MODELS["Groups"], doc, projection(request)))


@scim_router.put("/{org}/Groups/{group_id}")
async def scim_replace_group(group_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    body = await read_json(request)
    return scim_response(await service.replace_group(
        db, ctx, _base(request, ctx), _resource_id(group_id, "Groups"), body))


@scim_router.patch("/{org}/Groups/{group_id}")
async def scim_patch_group(group_id: str, request: Request, db: DB, ctx: Scim) -> Response:
    body = await read_json(request)
    return scim_response(await service.patch_group(
        db, ctx, _base(request, ctx), _resource_id(group_id, "Groups"), body))


@scim_router.delete("/{org}/Groups/{group_id}")
async def scim_delete_group(group_id: str, db: DB, ctx: Scim) -> Response:
    await service.delete_group(db, ctx, _resource_id(group_id, "Groups"))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_READ_ONLY = {"ServiceProviderConfig", "Schemas", "ResourceTypes"}


@scim_router.api_route("/{org}/{rest:path}",
                       methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def scim_other(rest: str, request: Request, _: Annotated[None, Public()]) -> Response:
    """Anything else under the SCIM base URL: 405 for a method a discovery endpoint does not
    have, 501 for POST /.search (not supported), 404 otherwise -- as SCIM errors.

    Public: it only ever answers these errors, the same for every organization slug, known or
    not (no data, no existence oracle); an undeclared method gets its 405 before any token
    check, as HTTP has it."""
    first = rest.strip("/").split("/", 1)[0]
    if first in _READ_ONLY or (first in RESOURCE_MODELS and request.method != "GET"):
        from enginex.web.errors import allowed_methods

        return scim_error_response(405, f"{request.method} is not allowed on /{rest}.",
                                   headers={"Allow": allowed_methods(request) or "GET"})
    if rest.strip("/").endswith(".search"):
        raise ScimError(501, "POST /.search is not supported; use GET with filter.")
    raise ScimError(404, f"No SCIM endpoint /{rest}. The endpoints are /Users, /Groups, "
                         "/ServiceProviderConfig, /Schemas and /ResourceTypes.")

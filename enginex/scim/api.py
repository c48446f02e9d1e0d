"""SCIM 2.0 for one organization: the token routes (org admins, ``scim:write``) and the SCIM
protocol at ``{ENGINEX_BASE_URL}/scim/v2/{org}`` (the organization's SCIM token only).

Every SCIM protocol route answers errors in SCIM's format (RFC 7644 §3.12), the guard's
included: no or bad token 401, another organization's token or an unknown organization 404
(the same body), suspended organization 403. Bodies are limited to
``protocol.MAX_BODY_BYTES``.
"""

# No ``from __future__ import annotations``: the handlers of _mount annotate their id with a
# type built per resource (its path parameter's name), which FastAPI must see as an object.

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRouter
from pydantic import ValidationError
from scim2_models import SearchRequest
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.convertors import StringConvertor, register_url_convertor

from enginex.kit.errors import AppError
from enginex.scim import service
from enginex.scim.protocol import (
    FILTERABLE,
    RESOURCE_MODELS,
    SEARCH_SCHEMA,
    EqFilter,
    PageRequest,
    Projection,
    ScimError,
    app_error_as_scim,
    clamp_page,
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
from enginex.web.errors import allowed_methods, register_error_renderer

router = make_router(prefix="/api/v1", tags=["scim"])


def install_scim_errors(app: FastAPI) -> None:
    """Framework errors under ``/scim/`` (an unknown path, 405, validation, 503) are SCIM
    errors too: identity providers read only SCIM's format there."""
    register_error_renderer(app, SCIM_PATH_PREFIX, scim_error_response)


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


SCIM_PATH_PREFIX = "/scim/"
scim_router = APIRouter(prefix="/scim/v2", tags=["scim"], route_class=ScimRoute)
Scim = Annotated[TenantContext, ScimClient()]


def _base(request: Request, ctx: TenantContext) -> str:
    return scim_base_url(request, ctx.org_slug)


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


# --- Users and Groups: one set of handlers, mounted once per resource ------------------------


@dataclass(frozen=True)
class ScimResource:
    """One SCIM resource type (``Users``, ``Groups``) and the service functions behind it. The
    handlers below are the same for every resource; only these functions differ."""

    name: str
    id_param: str  # the path parameter of one resource: /Users/{user_id}, /Groups/{group_id}
    model: type[Any]
    list: Callable[[AsyncSession, TenantContext, str, PageRequest, EqFilter | None],
                   Awaitable[tuple[list[dict[str, Any]], int]]]
    get: Callable[[AsyncSession, TenantContext, str, uuid.UUID], Awaitable[dict[str, Any]]]
    create: Callable[[AsyncSession, TenantContext, str, dict[str, Any]],
                     Awaitable[dict[str, Any]]]
    replace: Callable[[AsyncSession, TenantContext, str, uuid.UUID, dict[str, Any]],
                      Awaitable[dict[str, Any]]]
    patch: Callable[[AsyncSession, TenantContext, str, uuid.UUID, dict[str, Any]],
                    Awaitable[dict[str, Any]]]
    delete: Callable[[AsyncSession, TenantContext, uuid.UUID], Awaitable[None]]
    summary: dict[str, str]

    def resource_id(self, raw: str) -> uuid.UUID:
        try:
            return uuid.UUID(raw)
        except ValueError as exc:
            raise ScimError(404, f"No such {self.name[:-1]} in this organization. List them "
                                 f"with GET /{self.name} to find its id.") from exc

    async def query(self, db: AsyncSession, ctx: TenantContext, base: str, page: PageRequest,
                    where: EqFilter | None, wanted: Projection
                    ) -> tuple[list[dict[str, Any]], int]:
        found, total = await self.list(db, ctx, base, page, where)
        return [project(self.model, doc, wanted) for doc in found], total


RESOURCES: tuple[ScimResource, ...] = (
    ScimResource(
        "Users", "user_id", RESOURCE_MODELS["Users"], service.list_users, service.get_user,
        service.create_user, service.replace_user, service.patch_user, service.delete_user,
        summary={"list": "Users of the organization; filter on userName / externalId (eq), "
                         "startIndex/count pagination.",
                 "create": "Provision a user: links the account that has the email, or "
                           "creates one.",
                 "patch": "active: false disables the membership at once (session, API "
                          "keys, streams).",
                 "delete": "Remove the membership; the account stays (it may belong to other "
                           "organizations)."}),
    ScimResource(
        "Groups", "group_id", RESOURCE_MODELS["Groups"], service.list_groups, service.get_group,
        service.create_group, service.replace_group, service.patch_group,
        service.delete_group,
        summary={"list": "Groups of the organization; filter on displayName / externalId "
                         "(eq), startIndex/count pagination.",
                 "create": "Create a group; its members' roles follow the role-mapping "
                           "rules.",
                 "patch": "Add, remove or replace members or the name; members' roles follow "
                          "the role-mapping rules.",
                 "delete": "Delete the group; its members' roles follow the rules again."}),
)


def _search_request(body: dict[str, Any]) -> SearchRequest:
    """The body of ``POST .../.search`` (RFC 7644 §3.4.3): ScimError 400 when it is not a
    SearchRequest."""
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or SEARCH_SCHEMA not in schemas:
        raise ScimError(400, f"A search body must have \"schemas\": [\"{SEARCH_SCHEMA}\"].",
                        "invalidSyntax")
    try:
        return SearchRequest.model_validate(body)
    except ValidationError as exc:
        raise ScimError.from_validation(exc, "search request") from exc


def _search_parameters(search: SearchRequest) -> tuple[PageRequest, Projection]:
    if search.sort_by is not None:
        raise ScimError(400, "Sorting is not supported (ServiceProviderConfig sort.supported "
                             "is false); remove sortBy.", "invalidValue")
    page = clamp_page(search.start_index, search.count)
    return page, Projection([str(a) for a in search.attributes or []] or None,
                            [str(a) for a in search.excluded_attributes or []] or None)


def _mount(resource: ScimResource) -> None:
    """Registers the SCIM routes of one resource type under ``/scim/v2/{org}/<name>``. The id
    of one resource is the path parameter ``resource.id_param``; its converter ``scimid``
    never matches ``.search``, so another method on ``<name>/.search`` reaches the catch-all
    (405 naming POST) instead of the routes of one resource."""
    name = resource.name
    path = f"/{{org}}/{name}"
    key = name.lower()
    ResourceId = Annotated[str, Path(alias=resource.id_param)]

    async def list_resources(request: Request, db: DB, ctx: Scim) -> Response:
        page = page_request(request)
        where = parse_filter(name, request.query_params.get("filter"))
        found, total = await resource.query(db, ctx, _base(request, ctx), page, where,
                                            projection(request))
        return scim_response(list_response(found, total, page))

    async def search_resources(request: Request, db: DB, ctx: Scim) -> Response:
        search = _search_request(await read_json(request))
        page, wanted = _search_parameters(search)
        where = parse_filter(name, search.filter)
        found, total = await resource.query(db, ctx, _base(request, ctx), page, where, wanted)
        return scim_response(list_response(found, total, page))

    async def create_resource(request: Request, db: DB, ctx: Scim) -> Response:
        body = await read_json(request)
        created = await resource.create(db, ctx, _base(request, ctx), body)
        return scim_response(created, 201, headers={"Location": created["meta"]["location"]})

    async def get_resource(resource_id: ResourceId, request: Request, db: DB, ctx: Scim
                           ) -> Response:
        doc = await resource.get(db, ctx, _base(request, ctx), resource.resource_id(resource_id))
        return scim_response(project(resource.model, doc, projection(request)))

    async def replace_resource(resource_id: ResourceId, request: Request, db: DB, ctx: Scim
                               ) -> Response:
        body = await read_json(request)
        return scim_response(await resource.replace(
            db, ctx, _base(request, ctx), resource.resource_id(resource_id), body))

    async def patch_resource(resource_id: ResourceId, request: Request, db: DB, ctx: Scim
                             ) -> Response:
        body = await read_json(request)
        return scim_response(await resource.patch(
            db, ctx, _base(request, ctx), resource.resource_id(resource_id), body))

    async def delete_resource(resource_id: ResourceId, db: DB, ctx: Scim) -> Response:
        await resource.delete(db, ctx, resource.resource_id(resource_id))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    one = f"{path}/{{{resource.id_param}:scimid}}"
    for route_path, endpoint, method, verb, summary in (
        (path, list_resources, "GET", "list", resource.summary["list"]),
        (f"{path}/.search", search_resources, "POST", "search",
         f"Search {name} with a SearchRequest body (RFC 7644 §3.4.3)."),
        (path, create_resource, "POST", "create", resource.summary["create"]),
        (one, get_resource, "GET", "get", f"One of the organization's {name}."),
        (one, replace_resource, "PUT", "replace", f"Replace one of the organization's {name}."),
        (one, patch_resource, "PATCH", "patch", resource.summary["patch"]),
        (one, delete_resource, "DELETE", "delete", resource.summary["delete"]),
    ):
        scim_router.add_api_route(route_path, endpoint, methods=[method],
                                  name=f"scim_{verb}_{key}", description=summary)


class ScimIdConvertor(StringConvertor):
    """A SCIM resource id in a path: any segment but ``.search`` (RFC 7644 §3.4.3)."""

    regex = r"(?!\.search(?:/|$))[^/]+"


register_url_convertor("scimid", ScimIdConvertor())


for _resource in RESOURCES:
    _mount(_resource)


@scim_router.post("/{org}/.search")
async def scim_search(request: Request, db: DB, ctx: Scim) -> Response:
    """Search every resource type at once (RFC 7644 §3.4.3): Users first, then Groups, paged
    together. A filter applies to the types that have its attribute; the others contribute
    nothing (``userName eq ...`` finds no group)."""
    search = _search_request(await read_json(request))
    page, wanted = _search_parameters(search)
    base = _base(request, ctx)
    wheres: dict[str, EqFilter | None] = {}
    refused: ScimError | None = None
    for resource in RESOURCES:
        try:
            wheres[resource.name] = parse_filter(resource.name, search.filter)
        except ScimError as exc:
            refused = refused or exc
    if refused is not None and not wheres:
        raise ScimError(400, f"Unsupported filter {search.filter!r}. A search of every type "
                             "filters with '<attribute> eq \"<value>\"' on "
                             + "; ".join(f"{name}: {', '.join(attrs)}"
                                         for name, attrs in FILTERABLE.items()) + ".",
                        "invalidFilter")
    found: list[dict[str, Any]] = []
    total = 0
    skip = page.start_index - 1  # results before the page, across the types in order
    for resource in RESOURCES:
        if resource.name not in wheres:
            continue
        local = PageRequest(max(0, skip - total) + 1, page.count - len(found))
        docs, count = await resource.query(db, ctx, base, local, wheres[resource.name],
                                           wanted)
        found.extend(docs)
        total += count
    return scim_response(list_response(found, total, page))


_READ_ONLY = {"ServiceProviderConfig", "Schemas", "ResourceTypes"}
_SEARCHES = {".search", *(f"{name}/.search" for name in RESOURCE_MODELS)}


@scim_router.api_route("/{org}/{rest:path}",
                       methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def scim_other(rest: str, request: Request, _: Annotated[None, Public()]) -> Response:
    """Anything else under the SCIM base URL: 405 for a method a discovery endpoint does not
    have, 404 otherwise -- as SCIM errors.

    Public: it only ever answers these errors, the same for every organization slug, known or
    not (no data, no existence oracle); an undeclared method gets its 405 before any token
    check, as HTTP has it."""
    first = rest.strip("/").split("/", 1)[0]
    if (first in _READ_ONLY or rest.strip("/") in _SEARCHES
            or (first in RESOURCE_MODELS and request.method != "GET")):
        allow = allowed_methods(request) or "GET"
        return scim_error_response(405, f"{request.method} is not allowed on /{rest}; this "
                                        f"address answers {allow}.", headers={"Allow": allow})
    raise ScimError(404, f"No SCIM endpoint /{rest}. The endpoints are /Users, /Groups, "
                         "/ServiceProviderConfig, /Schemas and /ResourceTypes.")

"""The SCIM 2.0 wire format (RFC 7643/7644) on top of scim2-models: resource models, the
discovery documents, SCIM errors, filters, pagination and body reading.

Nothing here touches the database. ``ScimError`` is the one error type the SCIM routes raise;
``scim_error_response`` renders it (and any EngineX AppError raised by the guard) in SCIM's
error format: ``{"schemas": [...Error], "status": "404", "scimType": ..., "detail": ...}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Patch,
    ResourceType,
    ServiceProviderConfig,
    Sort,
    User,
)

from enginex.kit.errors import AppError

SCIM_MEDIA_TYPE = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
MAX_BODY_BYTES = 256 * 1024  # advertised as bulk.maxPayloadSize; larger bodies -> 413
MAX_RESULTS = 200  # filter.maxResults: count above it is lowered to it
DEFAULT_COUNT = 100
MAX_START_INDEX = 1_000_000_000  # startIndex above it reads as it (an empty page)
MAX_GROUP_MEMBERS_PER_REQUEST = 1000

UserModel = User[EnterpriseUser]
GroupModel = Group
RESOURCE_MODELS: dict[str, type[Any]] = {"Users": UserModel, "Groups": GroupModel}


class ScimError(Exception):
    """A SCIM error response (RFC 7644 §3.12). ``detail`` says what was wrong and how to fix
    it, like every EngineX error."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    @classmethod
    def from_validation(cls, exc: ValidationError, what: str) -> ScimError:
        problems = []
        scim_type = "invalidValue"
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "Operations")
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
            ctx = error.get("ctx") or {}
            if ctx.get("scim_type"):
                scim_type = str(ctx["scim_type"])
        return cls(400, f"The {what} is not valid SCIM: {'; '.join(problems)}.", scim_type)


def scim_error_response(status: int, detail: str, scim_type: str | None = None,
                        headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return JSONResponse(body, status_code=status, media_type=SCIM_MEDIA_TYPE, headers=headers)


def app_error_as_scim(exc: AppError) -> JSONResponse:
    """The guard's errors (401/403/404) in SCIM's format, with the same messages."""
    headers = dict(exc.headers)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="SCIM"'
    return scim_error_response(exc.status_code, exc.message, None, headers or None)


def scim_response(body: Any, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=SCIM_MEDIA_TYPE,
                        headers=headers)


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, at most MAX_BODY_BYTES. ScimError 413 when larger, 400
    invalidSyntax when it is not a JSON object."""
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise ScimError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes. Send "
                                 "fewer attributes or fewer group members per request.")
    try:
        body = json.loads(received)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScimError(400, f"The request body is not valid JSON ({exc}).",
                        "invalidSyntax") from exc
    if not isinstance(body, dict):
        raise ScimError(400, "The request body must be a JSON object.", "invalidSyntax")
    return body


# --- filters and pagination ------------------------------------------------------------------

FILTERABLE: dict[str, tuple[str, ...]] = {"Users": ("userName", "externalId"),
                                          "Groups": ("displayName", "externalId")}
_CORE_URN = {"Users": "urn:ietf:params:scim:schemas:core:2.0:user:",
             "Groups": "urn:ietf:params:scim:schemas:core:2.0:group:"}
_EQ = re.compile(r'^\s*([A-Za-z0-9:._-]+)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)


@dataclass(frozen=True)
class EqFilter:
    attribute: str  # as spelled in FILTERABLE
    value: str


def parse_filter(resource: str, text: str | None) -> EqFilter | None:
    """``attr eq "value"`` for the attributes in FILTERABLE (names case-insensitive, with or
    without the core schema URN). Anything else: ScimError 400 invalidFilter naming what is
    supported."""
    if text is None or not text.strip():
        return None
    supported = FILTERABLE[resource]
    refused = ScimError(400, f"Unsupported filter {text!r}. This server filters {resource} with "
                             f"'<attribute> eq \"<value>\"' on {', '.join(supported)} only.",
                        "invalidFilter")
    match = _EQ.match(text)
    if match is None:
        raise refused
    name = match.group(1).lower().removeprefix(_CORE_URN[resource])
    attribute = next((a for a in supported if a.lower() == name), None)
    if attribute is None:
        raise refused
    try:
        value = json.loads(f'"{match.group(2)}"')
    except ValueError as exc:
        raise refused from exc
    return EqFilter(attribute, value)


def _positive_int(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ScimError(400, f"{name} must be an integer, got {raw!r}.", "invalidValue") from exc


@dataclass(frozen=True)
class PageRequest:
    start_index: int  # 1-based, as in SCIM
    count: int


def page_request(request: Request) -> PageRequest:
    """startIndex (< 1 is read as 1) and count (negative is read as 0, above MAX_RESULTS is
    lowered to it), per RFC 7644 §3.4.2.4."""
    return clamp_page(_positive_int(request.query_params.get("startIndex"), "startIndex", 1),
                      _positive_int(request.query_params.get("count"), "count", DEFAULT_COUNT))


def clamp_page(start_index: int | None, count: int | None) -> PageRequest:
    """The page asked for (from the query string or a SearchRequest body), with the bounds of
    RFC 7644 §3.4.2.4 applied; None means the default."""
    # Capped: an OFFSET beyond a 64-bit integer is an error in the database, not an empty page.
    start = 1 if start_index is None else min(max(1, start_index), MAX_START_INDEX)
    wanted = DEFAULT_COUNT if count is None else count
    return PageRequest(start, min(max(0, wanted), MAX_RESULTS))


def list_response(resources: list[dict[str, Any]], total: int,
                  page: PageRequest) -> dict[str, Any]:
    return {"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": page.start_index,
            "itemsPerPage": len(resources), "Resources": resources}


# --- attributes / excludedAttributes -----------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    attributes: list[str] | None
    excluded: list[str] | None

    @property
    def whole(self) -> bool:
        return not self.attributes and not self.excluded


def projection(request: Request) -> Projection:
    def split(name: str) -> list[str] | None:
        raw = request.query_params.get(name)
        return [a.strip() for a in raw.split(",") if a.strip()] if raw else None

    return Projection(split("attributes"), split("excludedAttributes"))


def project(model: type[Any], document: dict[str, Any], wanted: Projection) -> dict[str, Any]:
    """``document`` reduced to the requested attributes (RFC 7644 §3.4.2.5), through
    scim2-models so that 'returned: always' attributes stay. ScimError 400 for an unknown
    attribute."""
    if wanted.whole:
        return document
    from scim2_models import ResponseParameters

    try:
        parameters = ResponseParameters.model_validate(
            {"attributes": wanted.attributes, "excludedAttributes": wanted.excluded})
        resource = model.model_validate(document, scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        return dict(resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE,
                                        response_parameters=parameters))
    except (ValidationError, ValueError) as exc:
        raise ScimError(400, f"attributes/excludedAttributes: {exc}", "invalidValue") from exc


# --- discovery ---------------------------------------------------------------------------------


def service_provider_config(base: str) -> dict[str, Any]:
    config = ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=MAX_BODY_BYTES),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[AuthenticationScheme(
            type="oauthbearertoken", name="OAuth Bearer Token",
            description="A SCIM token of this organization: 'Authorization: Bearer scim_...' "
                        "(created by an org admin at POST /api/v1/orgs/{org}/scim/tokens).",
            primary=True)],
    )
    body = config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    body["meta"] = {"resourceType": "ServiceProviderConfig",
                    "location": f"{base}/ServiceProviderConfig"}
    return dict(body)


def schemas(base: str) -> list[dict[str, Any]]:
    found = []
    for model in (User, EnterpriseUser, Group):
        schema = model.to_schema().model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        schema["meta"] = {"resourceType": "Schema", "location": f"{base}/Schemas/{schema['id']}"}
        found.append(dict(schema))
    return found


def resource_types(base: str) -> list[dict[str, Any]]:
    found = []
    for model in (UserModel, GroupModel):
        resource_type = ResourceType.from_resource(model).model_dump(
            scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        resource_type["meta"] = {"resourceType": "ResourceType",
                                 "location": f"{base}/ResourceTypes/{resource_type['id']}"}
        found.append(dict(resource_type))
    return found

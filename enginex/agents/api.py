"""The agent catalog of one organization: deploy packages, list, show, diff, deprecate.

Builders (``agents:write``) deploy and deprecate; every member (``agents:read``) reads. An
agent of another organization answers 404 exactly like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response, status
from starlette.datastructures import UploadFile

from enginex.agents import service
from enginex.agents.models import AgentVersion
from enginex.agents.package import DEFAULT_LIMITS, PackageInvalid
from enginex.agents.schemas import (
    AgentDetail,
    AgentDiff,
    AgentOut,
    AgentVersionDetail,
    AgentVersionOut,
    ChangedItem,
    FieldChange,
    PackageFileOut,
    SetDiff,
)
from enginex.kit.errors import AppError, ValidationFailed
from enginex.kit.pagination import next_link
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["agents"])

UPLOAD_FIELD = "package"
RAW_ARCHIVE_TYPES = frozenset({"application/zip", "application/x-zip-compressed",
                               "application/gzip", "application/x-gzip",
                               "application/x-tar+gzip", "application/octet-stream"})
UPLOAD_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": [UPLOAD_FIELD],
        "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                      "description": "The package as .zip or .tar.gz"}}}},
    "application/zip": {"schema": {"type": "string", "format": "binary"}},
    "application/gzip": {"schema": {"type": "string", "format": "binary"}},
}}}


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"


HOW_TO_UPLOAD = (f"Send the package as multipart/form-data in the field '{UPLOAD_FIELD}' (for "
                 "example: curl -F package=@agent.zip), or as a raw application/zip or "
                 "application/gzip body.")


async def _read_upload(request: Request) -> bytes:
    """The uploaded archive's bytes, refusing more than the package size limit."""
    limit = DEFAULT_LIMITS.max_compressed_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=10) as form:
            extra = sorted(k for k in form if k != UPLOAD_FIELD)
            if extra:
                raise ValidationFailed(
                    f"Unknown form field '{extra[0]}'. {HOW_TO_UPLOAD}",
                    details={"errors": [{"path": k, "message": "unknown field; remove it"}
                                        for k in extra]})
            upload = form.get(UPLOAD_FIELD)
            if not isinstance(upload, UploadFile):
                raise ValidationFailed(
                    f"The form has no file in the field '{UPLOAD_FIELD}'. {HOW_TO_UPLOAD}",
                    details={"errors": [{"path": UPLOAD_FIELD,
                                         "message": "required file is missing"}]})
            data = await upload.read(limit + 1)
    elif content_type in RAW_ARCHIVE_TYPES:
        data = await request.body()
    else:
        raise UnsupportedMediaType(HOW_TO_UPLOAD)
    if len(data) > limit:
        raise PayloadTooLarge(f"The package is larger than {limit} bytes. Remove files it does "
                              "not need.")
    if not data:
        raise ValidationFailed(f"The uploaded package is empty. {HOW_TO_UPLOAD}",
                               details={"errors": [{"path": UPLOAD_FIELD,
                                                    "message": "the file is empty"}]})
    return data


def _version_out(agent_key: str, version: AgentVersion) -> AgentVersionOut:
    info = version.manifest.get("agent", {})
    return AgentVersionOut(
        id=version.id, agent_key=agent_key, version=version.version,
        name=info.get("name", ""), description=info.get("description", ""),
        content_hash=version.content_hash, size_bytes=version.size_bytes,
        deployed_by=version.deployed_by, deployed_at=version.deployed_at,
        deprecated=version.deprecated_at is not None, deprecated_at=version.deprecated_at)


def _version_detail(agent_key: str, version: AgentVersion) -> AgentVersionDetail:
    files = [PackageFileOut(path=path, size_bytes=len(text.encode()))
             for path, text in sorted((version.files or {}).items())]
    return AgentVersionDetail(**_version_out(agent_key, version).model_dump(),
                              manifest=version.manifest, files=files)


def _agent_out(summary: service.AgentSummary) -> dict[str, Any]:
    agent = summary.agent
    return {"id": agent.id, "key": agent.key, "name": agent.name,
            "description": agent.description, "latest_version": summary.latest_version,
            "deprecated": summary.deprecated, "version_count": summary.version_count,
            "created_at": agent.created_at, "updated_at": agent.updated_at}


def _set_diff(change: service.SetChange) -> SetDiff:
    return SetDiff(added=change.added, removed=change.removed,
                   changed=[ChangedItem(id=key, fields=fields) for key, fields in change.changed])


@router.post("/orgs/{org}/agents", response_model=AgentVersionDetail,
             status_code=status.HTTP_201_CREATED, openapi_extra=UPLOAD_OPENAPI,
             responses={200: {"model": AgentVersionDetail,
                              "description": "Identical content was already deployed"},
                        409: {"description": "That version exists with different content"},
                        413: {"description": "The package is too large"},
                        422: {"description": "The package is not valid; "
                                             "details.errors lists every problem"}})
async def deploy_agent(request: Request, response: Response, db: DB,
                       ctx: Annotated[TenantContext, Require(Scope.AGENTS_WRITE)]
                       ) -> AgentVersionDetail:
    """Deploy an agent package (.zip or .tar.gz) as a new immutable version.

    201 with the new version; 200 with the existing one when identical content was deployed
    before; 409 when that agent id and version exist with different content; 422 listing every
    problem (``details.errors[].path``/``message``) when the package is invalid. Nothing is
    stored unless the whole package is valid.
    """
    data = await _read_upload(request)
    try:
        package = await service.load_package(data)
    except PackageInvalid as exc:
        count = len(exc.errors)
        first = exc.errors[0] if exc.errors else None
        raise ValidationFailed(
            f"The agent package is not valid ({count} problem{'s' if count != 1 else ''}"
            f"{f', first: {first}' if first else ''}). Fix every problem listed in "
            "details.errors and push again.", code="package_invalid",
            details={"errors": [e.as_dict() for e in exc.errors]}) from None
    version, created = await service.deploy_package(db, ctx, package, actor=ctx.principal)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _version_detail(package.manifest.agent.id, version)


@router.get("/orgs/{org}/agents", response_model=list[AgentOut])
async def list_agents(request: Request, response: Response, db: DB,
                      ctx: Annotated[TenantContext, Require(Scope.AGENTS_READ)],
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      cursor: Annotated[str | None, Query(max_length=200)] = None
                      ) -> list[AgentOut]:
    """The organization's agents with their latest version and deprecated flag, newest
    first. When more follow, the ``Link`` header names the next page (``rel="next"``, with
    ``cursor``)."""
    page = await service.page_agents(db, ctx, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [AgentOut.model_validate(_agent_out(s)) for s in page.items]


@router.get("/orgs/{org}/agents/{agent_key}", response_model=AgentDetail)
async def get_agent(agent_key: str, db: DB,
                    ctx: Annotated[TenantContext, Require(Scope.AGENTS_READ)]) -> AgentDetail:
    """One agent with all its versions (oldest deploy first)."""
    summary, versions = await service.get_agent(db, ctx, agent_key)
    return AgentDetail.model_validate({
        **_agent_out(summary),
        "versions": [_version_out(summary.agent.key, v) for v in versions]})


@router.get("/orgs/{org}/agents/{agent_key}/versions/{version}",
            response_model=AgentVersionDetail)
async def get_version(agent_key: str, version: str, db: DB,
                      ctx: Annotated[TenantContext, Require(Scope.AGENTS_READ)]
                      ) -> AgentVersionDetail:
    """One version: its manifest, files, content hash and who deployed it when."""
    agent, found = await service.access_version(db, ctx, agent_key, version)
    return _version_detail(agent.key, found)


@router.get("/orgs/{org}/agents/{agent_key}/diff", response_model=AgentDiff)
async def diff_versions(agent_key: str, db: DB,
                        ctx: Annotated[TenantContext, Require(Scope.AGENTS_READ)],
                        from_version: Annotated[str, Query(alias="from", max_length=64)],
                        to_version: Annotated[str, Query(alias="to", max_length=64)],
                        ) -> AgentDiff:
    """What changed between two versions: fields, nodes, edges, inputs, tools and files."""
    diff = await service.diff_versions(db, ctx, agent_key, from_version, to_version)
    return AgentDiff(
        agent_key=diff.agent_key, from_version=diff.from_version, to_version=diff.to_version,
        identical=diff.identical,
        fields=[FieldChange.model_validate({"field": name, "from": old, "to": new})
                for name, old, new in diff.fields],
        nodes=_set_diff(diff.nodes), edges=_set_diff(diff.edges),
        inputs=_set_diff(diff.inputs), required_tools=_set_diff(diff.required_tools),
        files=_set_diff(diff.files))


@router.post("/orgs/{org}/agents/{agent_key}/versions/{version}/deprecate",
             response_model=AgentVersionOut)
async def deprecate_version(agent_key: str, version: str, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.AGENTS_WRITE)]
                            ) -> AgentVersionOut:
    """Deprecate a version (idempotent): new sessions no longer start it by default."""
    found = await service.deprecate_version(db, ctx, agent_key, version, actor=ctx.principal)
    return _version_out(agent_key, found)

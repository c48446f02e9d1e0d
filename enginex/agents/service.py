"""The per-organization agent catalog: deploy packages as immutable versions, read, diff,
deprecate.

Every function acts inside ``ctx``'s organization only: an agent key or version of another
organization raises NotFound exactly like one that does not exist. Deploys and deprecations
are audited in the caller's transaction (``agent.deployed``, ``agent.version_deprecated``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.models import Agent, AgentVersion
from enginex.agents.package import DEFAULT_LIMITS, LoadedPackage, PackageLimits, load_archive
from enginex.agents.repository import AgentRepository, AgentVersionRepository
from enginex.audit.service import record
from enginex.kit.errors import Conflict, NotFound
from enginex.kit.ids import new_id
from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal, acting_user_id
from enginex.tools.registry import builtin_tool_names
from enginex.usage.service import check_new_agent, check_storage, record_storage


def known_tool_names() -> set[str]:
    """Names of the built-in tools a package may reference (``mcp.<server>.<tool>`` names are
    checked separately, see enginex/agents/package.py)."""
    return builtin_tool_names()


# --- versions ----------------------------------------------------------------------------

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def version_key(version: str) -> tuple[Any, ...]:
    """Semantic-version ordering: 1.10.0 > 1.9.0 and 1.0.0 > 1.0.0-rc.1."""
    match = _SEMVER.match(version)
    if not match:
        return (-1, -1, -1, 0, ())
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, parts)


def _pick_latest(versions: list[AgentVersion]) -> AgentVersion | None:
    live = [v for v in versions if v.deprecated_at is None]
    pool = live or versions
    return max(pool, key=lambda v: version_key(v.version)) if pool else None


# --- reads -------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentSummary:
    agent: Agent
    latest_version: str | None
    deprecated: bool
    version_count: int


async def access_agent(db: AsyncSession, ctx: TenantContext, agent_key: str) -> Agent:
    """The agent with ``agent_key``; NotFound for missing and other organizations' agents."""
    agent = await AgentRepository(db, ctx).get_by_key(agent_key)
    if agent is None:
        raise NotFound()
    return agent


async def access_version(db: AsyncSession, ctx: TenantContext, agent_key: str,
                         version: str) -> tuple[Agent, AgentVersion]:
    """One version of an agent; NotFound when either does not exist in this organization."""
    agent = await access_agent(db, ctx, agent_key)
    found = await AgentVersionRepository(db, ctx).get_version(agent.id, version)
    if found is None:
        raise NotFound()
    return agent, found


async def list_agents(db: AsyncSession, ctx: TenantContext) -> list[AgentSummary]:
    """Every agent of the organization with its latest version and deprecated flag."""
    agents = await AgentRepository(db, ctx).list()
    per_agent: dict[uuid.UUID, list[tuple[uuid.UUID, str, bool]]] = {}
    for agent_id, version_id, version, deprecated in \
            await AgentVersionRepository(db, ctx).list_summaries():
        per_agent.setdefault(agent_id, []).append((version_id, version, deprecated))
    return [_summary(agent, per_agent.get(agent.id, [])) for agent in agents]


async def page_agents(db: AsyncSession, ctx: TenantContext, *, limit: int,
                      cursor: str | None) -> Page[AgentSummary]:
    """A page of agents, newest first, summarised as in ``list_agents``; ``next_cursor``
    continues (ValidationFailed for a cursor that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    page = page_of(await AgentRepository(db, ctx).page(limit + 1, before), limit,
                   lambda a: (a.created_at, a.id))
    per_agent: dict[uuid.UUID, list[tuple[uuid.UUID, str, bool]]] = {}
    if page.items:
        for agent_id, version_id, version, deprecated in \
                await AgentVersionRepository(db, ctx).list_summaries([a.id for a in page.items]):
            per_agent.setdefault(agent_id, []).append((version_id, version, deprecated))
    return Page([_summary(agent, per_agent.get(agent.id, [])) for agent in page.items],
                page.next_cursor)


def _summary(agent: Agent, versions: list[tuple[uuid.UUID, str, bool]]) -> AgentSummary:
    latest = next((v for i, v, _ in versions if i == agent.latest_version_id), None)
    deprecated = bool(versions) and all(d for _, _, d in versions)
    return AgentSummary(agent, latest, deprecated, len(versions))


async def get_agent(db: AsyncSession, ctx: TenantContext, agent_key: str
                    ) -> tuple[AgentSummary, list[AgentVersion]]:
    """An agent and its versions (oldest deploy first). NotFound as in ``access_agent``."""
    agent = await access_agent(db, ctx, agent_key)
    versions = await AgentVersionRepository(db, ctx).list_for(agent.id)
    summary = _summary(agent, [(v.id, v.version, v.deprecated_at is not None)
                               for v in versions])
    return summary, versions


# --- deploy ------------------------------------------------------------------------------

async def load_package(data: bytes, *, limits: PackageLimits = DEFAULT_LIMITS
                       ) -> LoadedPackage:
    """Validate an uploaded archive off the event loop. Raises PackageInvalid."""
    return await asyncio.to_thread(load_archive, data, known_tools=known_tool_names(),
                                   limits=limits)


async def deploy_package(db: AsyncSession, ctx: TenantContext, package: LoadedPackage, *,
                         actor: Principal | None) -> tuple[AgentVersion, bool]:
    """Store ``package`` as a new immutable version. Returns (version, created).

    Re-deploying identical content (same content hash) returns the existing version with
    ``created`` False and changes nothing. Conflict when that agent id and version already
    exist with different content. Audited as ``agent.deployed``.
    """
    info = package.manifest.agent
    agents = AgentRepository(db, ctx)
    versions = AgentVersionRepository(db, ctx)
    agent = await agents.get_by_key(info.id)
    if agent is not None:
        existing = await versions.get_version(agent.id, info.version)
        if existing is not None:
            if existing.content_hash == package.content_hash:
                return existing, False
            raise _version_conflict(info.id, info.version)
    # Usage quotas (issue 18): checked before anything is written; the package's bytes count
    # towards the organization's storage.
    if agent is None:
        await check_new_agent(db, ctx)
    await check_storage(db, ctx, package.size_bytes)
    now = utcnow()
    try:
        if agent is None:
            agent = agents.add(Agent(id=new_id(), key=info.id, name=info.name,
                                     description=info.description, created_at=now,
                                     updated_at=now))
            await db.flush()
        version = versions.add(AgentVersion(
            id=new_id(), agent_id=agent.id, version=info.version,
            content_hash=package.content_hash, manifest=package.manifest.model_dump(mode="json"),
            files=dict(package.files), size_bytes=package.size_bytes,
            deployed_by=acting_user_id(actor), deployed_at=now))
        await db.flush()
    except IntegrityError as exc:
        # A concurrent deploy of the same agent or version won the race; the request's
        # transaction is rolled back by its boundary.
        raise Conflict(f"Another deploy of '{info.id}' {info.version} finished at the same "
                       "time. Push again: identical content is then accepted.",
                       code="deploy_race") from exc
    await record_storage(db, ctx, f"agent_version:{version.id}", package.size_bytes)
    all_versions = await versions.list_for(agent.id)
    latest = _pick_latest(all_versions)
    agent.latest_version_id = latest.id if latest else version.id
    if latest is not None and latest.id == version.id:
        agent.name, agent.description = info.name, info.description
    agent.updated_at = now
    await record(db, ctx, "agent.deployed", target_kind="agent_version", target_id=version.id,
                 details={"agent": info.id, "version": info.version,
                          "content_hash": package.content_hash,
                          "size_bytes": package.size_bytes})
    return version, True


def _version_conflict(key: str, version: str) -> Conflict:
    return Conflict(f"Version {version} of '{key}' already exists with different content. "
                    "Versions are immutable: bump agent.version in agent.json and push again.",
                    code="version_exists", details={"agent": key, "version": version})


async def deprecate_version(db: AsyncSession, ctx: TenantContext, agent_key: str,
                            version: str, *, actor: Principal | None) -> AgentVersion:
    """Mark a version deprecated (idempotent): new sessions no longer start it by default.

    The agent's latest version becomes the highest version still live. Audited as
    ``agent.version_deprecated`` the first time. NotFound as in ``access_version``.
    """
    agent, found = await access_version(db, ctx, agent_key, version)
    if found.deprecated_at is not None:
        return found
    found.deprecated_at = utcnow()
    latest = _pick_latest(await AgentVersionRepository(db, ctx).list_for(agent.id))
    if latest is not None:
        agent.latest_version_id = latest.id
    agent.updated_at = found.deprecated_at
    await record(db, ctx, "agent.version_deprecated", target_kind="agent_version",
                 target_id=found.id, details={"agent": agent.key, "version": found.version})
    return found


# --- diff --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetChange:
    added: list[str]
    removed: list[str]
    changed: list[tuple[str, list[str]]]


@dataclass(frozen=True)
class VersionDiff:
    agent_key: str
    from_version: str
    to_version: str
    identical: bool
    fields: list[tuple[str, Any, Any]]
    nodes: SetChange
    edges: SetChange
    inputs: SetChange
    required_tools: SetChange
    files: SetChange


def _compare_maps(old: dict[str, Any], new: dict[str, Any]) -> SetChange:
    added = sorted(k for k in new if k not in old)
    removed = sorted(k for k in old if k not in new)
    changed: list[tuple[str, list[str]]] = []
    for key in sorted(k for k in new if k in old):
        before, after = old[key], new[key]
        if _canonical(before) == _canonical(after):
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            fields = sorted(f for f in before.keys() | after.keys()
                            if _canonical(before.get(f)) != _canonical(after.get(f)))
        else:
            fields = []
        changed.append((key, fields))
    return SetChange(added, removed, changed)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _edge_key(edge: dict[str, Any]) -> str:
    return f"{edge.get('source')} -> {edge.get('target')} ({edge.get('condition')})"


def _edges(manifest: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for edge in manifest["graph"].get("edges", []):
        key = _edge_key(edge)
        suffix, n = key, 2
        while suffix in found:  # parallel edges of the same kind: number them
            suffix, n = f"{key} #{n}", n + 1
        found[suffix] = edge
    return found


_FIELDS = (("agent.name", ("agent", "name")), ("agent.description", ("agent", "description")),
           ("agent.version", ("agent", "version")), ("goal", ("goal",)),
           ("graph.entry_node", ("graph", "entry_node")),
           ("graph.terminal_nodes", ("graph", "terminal_nodes")),
           ("graph.max_steps", ("graph", "max_steps")),
           ("scripted_replies", ("scripted_replies",)))


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


async def diff_versions(db: AsyncSession, ctx: TenantContext, agent_key: str,
                        from_version: str, to_version: str) -> VersionDiff:
    """What changed between two versions' manifests and files. NotFound for unknown ones."""
    _, old = await access_version(db, ctx, agent_key, from_version)
    _, new = await access_version(db, ctx, agent_key, to_version)
    a, b = old.manifest, new.manifest
    fields = [(name, _dig(a, path), _dig(b, path)) for name, path in _FIELDS
              if _canonical(_dig(a, path)) != _canonical(_dig(b, path))]
    if old.content_hash != new.content_hash:
        fields.append(("content_hash", old.content_hash, new.content_hash))
    nodes_a = {n["id"]: n for n in a["graph"]["nodes"]}
    nodes_b = {n["id"]: n for n in b["graph"]["nodes"]}
    tools_a = {t: True for t in a.get("required_tools", [])}
    tools_b = {t: True for t in b.get("required_tools", [])}
    return VersionDiff(
        agent_key=agent_key, from_version=old.version, to_version=new.version,
        identical=old.content_hash == new.content_hash, fields=fields,
        nodes=_compare_maps(nodes_a, nodes_b), edges=_compare_maps(_edges(a), _edges(b)),
        inputs=_compare_maps(a.get("inputs", {}), b.get("inputs", {})),
        required_tools=_compare_maps(tools_a, tools_b),
        files=_compare_maps(old.files or {}, new.files or {}))

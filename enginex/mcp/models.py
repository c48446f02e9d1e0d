"""Tables of the MCP feature.

* ``mcp_catalog`` (platform-wide, no tenant): the stdio MCP servers the platform admin has
  approved -- the only commands EngineX ever starts for a tenant -- with their bounds and
  whether they may use the network. Tenants see name, description and allowed_env, never
  command or args.
* ``mcp_servers`` (tenant-owned): an organization's MCP servers, remote (``http``: a URL and
  headers) or local (``stdio``: a catalog entry and environment variables). Header and
  environment values that are secret are references to the organization's credentials,
  resolved at the moment of use; ``tools`` caches the server's tool list (refreshed on
  request), with an ``enabled`` flag per tool set by the org admin.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow

TRANSPORTS = ("http", "stdio")


class McpCatalogEntry(Base):
    """A platform-approved stdio MCP server: the command line and its resource bounds."""

    __tablename__ = "mcp_catalog"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    command: Mapped[str] = mapped_column(String(1000))
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Names of the environment variables an organization may set (from its credentials).
    allowed_env: Mapped[list[str]] = mapped_column(JSON, default=list)
    timeout_seconds: Mapped[int] = mapped_column(default=60)
    memory_mb: Mapped[int] = mapped_column(default=512)
    # Off: the process runs in a network namespace of its own (no connection leaves it).
    network: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class McpServer(TenantOwned, Base):
    """An organization's MCP server.

    ``headers``: ``{"Header-Name": {"credential": NAME} | {"value": "literal"}}`` (http).
    ``env``: ``{"VAR": NAME}`` -- VAR among the catalog entry's ``allowed_env``, NAME a
    credential (stdio). ``tools``: ``[{name, description, input_schema, enabled}]``.
    """

    __tablename__ = "mcp_servers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    transport: Mapped[str] = mapped_column(String(10))
    url: Mapped[str | None] = mapped_column(String(2000))
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # RESTRICT: a catalog entry in use cannot disappear under an organization's server.
    catalog_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("mcp_catalog.id", ondelete="RESTRICT"))
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    tools: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    tools_refreshed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_mcp_servers_tenant_id_name", "tenant_id", "name", unique=True),
    )

"""The registry of what an export holds: one *kind* per JSON Lines file.

Each ``Kind`` names its model (one table), the order its rows are written in (a stable key, so
two exports of unchanged data are byte-identical), the columns it leaves out (secrets,
leases, this deployment's key material) and the columns holding user ids (re-mapped on import
to the accounts of the target deployment). A kind with extra needs (the members' e-mail
addresses, the MCP catalog entry's name, the report files) declares them here too; the
exporter and the importer have no per-table code of their own.

Adding a tenant table: add one ``Kind`` to ``KINDS`` (in import order: a row comes after the
rows it refers to), or name it in ``EXCLUDED`` with the reason.
tests/test_lifecycle_kinds.py fails while a table with ``tenant_id`` is in neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute

from enginex.agents.models import Agent, AgentVersion
from enginex.approvals.models import Approval
from enginex.audit.models import AuditEntry
from enginex.auth.models import User
from enginex.credentials.models import Credential
from enginex.db import Base
from enginex.llm.models import LLMProviderConfig, LLMSettings, ModelAlias
from enginex.mcp.models import McpCatalogEntry, McpServer
from enginex.orgs.models import Membership
from enginex.reports.models import Artifact
from enginex.runs.models import Checkpoint, Run, RunEvent
from enginex.skills.models import Skill
from enginex.sso.models import RoleMappingRule, SsoConnection
from enginex.usage.models import UsageEvent, UsageRollup

FORMAT = "enginex-tenant-export"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Kind:
    """One file of the archive: ``<name>.jsonl``, one JSON object per row of ``model``.

    ``order_by``: column names, a unique key. ``omit``: columns never written (the importer
    leaves them at their defaults or None). ``user_columns``: columns holding a user id.
    ``extra``: columns of other tables written with each row, ``{field name: column}``, read
    through ``join`` (an outer join: ``(entity, onclause)``). ``files``: each row has a file
    in the archive at ``files/<name>/<row id hex>`` (report bytes).
    """

    name: str
    model: type[Base]
    order_by: tuple[str, ...]
    omit: tuple[str, ...] = ()
    user_columns: tuple[str, ...] = ()
    extra: tuple[tuple[str, InstrumentedAttribute[Any]], ...] = ()
    join: tuple[Any, Any] | None = None
    files: bool = False
    description: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)

    def statement(self) -> Select[Any]:
        """Every row of the bound tenant, in export order (the ORM guard adds the tenant)."""
        columns = [getattr(self.model, c) for c in self.order_by]
        stmt = select(self.model, *(c.label(n) for n, c in self.extra))
        if self.join is not None:
            stmt = stmt.outerjoin(*self.join)
        return stmt.order_by(*columns)

    def exported_columns(self) -> list[str]:
        return [c.key for c in self.model.__table__.columns  # type: ignore[attr-defined]
                if c.key != "tenant_id" and c.key not in self.omit]


KINDS: tuple[Kind, ...] = (
    Kind("members", Membership, ("user_id",), user_columns=("user_id",),
         extra=(("email", User.email), ("display_name", User.display_name)),
         join=(User, User.id == Membership.user_id),
         description="members and their roles, with the e-mail address and display name of "
                     "each member (of no one else)"),
    Kind("agents", Agent, ("id",), description="the agent catalog"),
    Kind("agent_versions", AgentVersion, ("agent_id", "deployed_at", "id"),
         user_columns=("deployed_by",),
         description="every deployed version with its manifest and package files "
                     "(content hash unchanged)"),
    Kind("sessions", Run, ("created_at", "id"), omit=("lease_owner", "lease_expires_at"),
         user_columns=("created_by",), description="sessions (runs) with their inputs"),
    Kind("events", RunEvent, ("run_id", "seq"), description="every session's event timeline"),
    Kind("checkpoints", Checkpoint, ("run_id", "step"),
         description="every session's checkpoints (state after each step)"),
    Kind("approvals", Approval, ("created_at", "id"), user_columns=("decided_by",),
         description="approval requests and their decisions"),
    Kind("reports", Artifact, ("created_at", "id"), files=True,
         description="reports; each report's bytes are the file files/reports/<id hex>"),
    Kind("credentials", Credential, ("name",), omit=("ciphertext", "key_version", "hint"),
         user_columns=("created_by",),
         description="credentials' metadata only, never a value: imported as needing values"),
    Kind("llm_settings", LLMSettings, ("tenant_id",), omit=("api_key_ciphertext",),
         description="the LLM quick setup, without its API key"),
    Kind("llm_providers", LLMProviderConfig, ("name",), description="named LLM providers"),
    Kind("model_aliases", ModelAlias, ("name",), description="model aliases"),
    Kind("mcp_servers", McpServer, ("name",),
         extra=(("catalog_name", McpCatalogEntry.name),),
         join=(McpCatalogEntry, McpCatalogEntry.id == McpServer.catalog_id),
         description="MCP servers; a stdio server names its platform catalog entry"),
    Kind("skills", Skill, ("name",), description="skills (SKILL.md bundles)"),
    Kind("sso_connections", SsoConnection, ("name", "id"),
         description="single sign-on connections (OIDC/SAML settings; an OIDC client secret "
                     "is a credential, exported as metadata only)"),
    Kind("role_mapping_rules", RoleMappingRule, ("priority", "group_name", "id"),
         description="identity-provider group to role rules"),
    Kind("usage_events", UsageEvent, ("occurred_at", "id"),
         description="the usage ledger (metered events, with the price used)"),
    Kind("usage_rollups", UsageRollup,
         ("period", "period_start", "kind", "provider", "model", "agent_key"),
         description="hourly and daily usage totals kept with the ledger"),
    Kind("audit", AuditEntry, ("seq",),
         description="the complete audit chain, entries verbatim with their hashes"),
)

KINDS_BY_NAME = {k.name: k for k in KINDS}

# Tenant tables deliberately not exported, with the reason (docs/DATA_LIFECYCLE.md).
EXCLUDED: dict[str, str] = {
    "api_keys": "secrets (token digests): keys are issued again in the importing deployment",
    "invitations": "pending invitations hold e-mail addresses of people who are not members "
                   "and token digests; invite again",
    "tenant_keys": "data keys wrapped by this deployment's master key; the importing "
                   "deployment makes its own (crypto-shredding stays per deployment)",
    "audit_heads": "derived: the head is the last entry of the exported chain",
    "audit_anchors": "signed with this deployment's master key; an archive's chain starts at "
                     "its first entry's prev_hash (docs/DATA_LIFECYCLE.md \"Retention\")",
    "idempotency_keys": "a 24-hour replay cache of API answers, not data",
    "run_queue_state": "scheduler bookkeeping, rebuilt by the scheduler",
    "tenant_exports": "the exports themselves (an archive does not contain archives)",
    "email_domains": "a domain belongs to one organization per deployment: claim and verify it "
                     "again in the importing deployment",
    "sso_identities": "links of people to an identity provider's subjects; made again at each "
                      "person's first SSO sign-in through a verified domain",
    "saml_requests": "pending SAML sign-ins (10 minutes), not data",
    "saml_seen_assertions": "the SAML replay cache, not data",
    "scim_tokens": "secrets (token digests): the org admin issues a new SCIM token",
    "scim_users": "the identity provider's provisioning state; the IdP provisions again "
                  "through the importing deployment's SCIM endpoint (members are exported)",
    "scim_groups": "the identity provider's provisioning state (as scim_users)",
    "scim_group_members": "the identity provider's provisioning state (as scim_users)",
}

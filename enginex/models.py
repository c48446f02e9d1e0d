"""Imports every model module so that Base.metadata knows all tables (migrations, tests)."""

from enginex.agents import models as agent_models
from enginex.approvals import models as approval_models
from enginex.audit import models as audit_models
from enginex.auth import models as auth_models
from enginex.credentials import models as credential_models
from enginex.idempotency import models as idempotency_models
from enginex.llm import models as llm_models
from enginex.mcp import models as mcp_models
from enginex.orgs import models as org_models
from enginex.reports import models as report_models
from enginex.runs import models as run_models
from enginex.skills import models as skill_models
from enginex.usage import models as usage_models

__all__ = ["agent_models", "approval_models", "audit_models", "auth_models", "credential_models",
           "idempotency_models", "llm_models", "mcp_models", "org_models", "report_models",
           "run_models", "skill_models", "usage_models"]

"""Imports every model module so that Base.metadata knows all tables (migrations, tests)."""

from enginex.agents import models as agent_models
from enginex.approvals import models as approval_models
from enginex.audit import models as audit_models
from enginex.auth import models as auth_models
from enginex.credentials import models as credential_models
from enginex.erasure import models as erasure_models
from enginex.idempotency import models as idempotency_models
from enginex.lifecycle import models as lifecycle_models
from enginex.llm import models as llm_models
from enginex.mail import models as mail_models
from enginex.mcp import models as mcp_models
from enginex.orgs import models as org_models
from enginex.reports import models as report_models
from enginex.runs import models as run_models
from enginex.scim import models as scim_models
from enginex.skills import models as skill_models
from enginex.sso import models as sso_models
from enginex.sso import saml_state as saml_models
from enginex.usage import models as usage_models

__all__ = ["agent_models", "approval_models", "audit_models", "auth_models", "credential_models",
           "erasure_models",
           "idempotency_models", "lifecycle_models", "llm_models", "mail_models", "mcp_models",
           "org_models", "report_models", "run_models", "saml_models", "scim_models",
           "skill_models", "sso_models", "usage_models"]

"""Imports every model module so that Base.metadata knows all tables (migrations, tests)."""

from enginex.audit import models as audit_models
from enginex.auth import models as auth_models
from enginex.orgs import models as org_models

__all__ = ["audit_models", "auth_models", "org_models"]

"""TenantContext: the checked answer to "which organization, who, with which scopes"."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from enginex.kit.errors import Forbidden
from enginex.tenancy.principal import Principal
from enginex.tenancy.scopes import Role, Scope


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Built only by the tenant guard (requests) or ``system_context`` (jobs, CLI).

    Services take it as their second argument and never read an org id from anywhere else.
    """

    org_id: uuid.UUID
    org_slug: str
    principal: Principal | None
    role: Role
    scopes: frozenset[Scope]

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(
                f"Your role '{self.role}' in this organization lacks the '{scope}' permission. "
                "Ask an organization admin for a role that includes it.",
                details={"required_scope": str(scope), "role": str(self.role)},
            )

    @property
    def actor_id(self) -> uuid.UUID | None:
        return self.principal.actor_id if self.principal else None


def system_context(org_id: uuid.UUID, org_slug: str) -> TenantContext:
    """A context for trusted platform code (CLI, background jobs) acting inside one tenant."""
    from enginex.tenancy.scopes import ROLE_SCOPES

    return TenantContext(org_id=org_id, org_slug=org_slug, principal=None, role=Role.ADMIN,
                         scopes=ROLE_SCOPES[Role.ADMIN])

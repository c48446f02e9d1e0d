"""The one permission vocabulary: ``noun:verb`` scopes and the role -> scopes table."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    BUILDER = "builder"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Scope(StrEnum):
    ORG_READ = "org:read"
    ORG_WRITE = "org:write"
    MEMBERS_READ = "members:read"
    MEMBERS_WRITE = "members:write"
    APIKEYS_READ = "apikeys:read"
    APIKEYS_WRITE = "apikeys:write"
    AGENTS_READ = "agents:read"
    AGENTS_WRITE = "agents:write"
    RUNS_READ = "runs:read"
    RUNS_WRITE = "runs:write"
    APPROVALS_READ = "approvals:read"
    APPROVALS_DECIDE = "approvals:decide"
    REPORTS_READ = "reports:read"
    CREDENTIALS_READ = "credentials:read"
    CREDENTIALS_WRITE = "credentials:write"
    SETTINGS_READ = "settings:read"
    SETTINGS_WRITE = "settings:write"
    AUDIT_READ = "audit:read"
    # Org admins only: a full export holds every member's e-mail address and all content.
    DATA_EXPORT = "data:export"
    # Single sign-on: connections, domains, role-mapping rules, enforcement (admins only).
    SSO_READ = "sso:read"
    SSO_WRITE = "sso:write"
    SCIM_WRITE = "scim:write"  # manage the organization's SCIM tokens (admins only)
    USAGE_READ = "usage:read"  # usage, limits and exports of the organization (admins)


_VIEWER = frozenset({
    Scope.ORG_READ, Scope.MEMBERS_READ, Scope.AGENTS_READ, Scope.RUNS_READ,
    Scope.APPROVALS_READ, Scope.REPORTS_READ,
})
_OPERATOR = _VIEWER | {Scope.RUNS_WRITE, Scope.APPROVALS_DECIDE, Scope.CREDENTIALS_READ}
_BUILDER = _VIEWER | {Scope.AGENTS_WRITE, Scope.CREDENTIALS_READ, Scope.SETTINGS_READ}

ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.VIEWER: _VIEWER,
    Role.OPERATOR: frozenset(_OPERATOR),
    Role.BUILDER: frozenset(_BUILDER),
    Role.ADMIN: frozenset(Scope),
}

# Ordering used only to stop privilege escalation (an API key or invitation may not carry a
# role above its creator's). Access decisions always go through ROLE_SCOPES.
ROLE_RANK: dict[Role, int] = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.BUILDER: 1, Role.ADMIN: 2}


def scopes_for(role: Role) -> frozenset[Scope]:
    return ROLE_SCOPES[role]


def can_grant(granter: Role, role: Role) -> bool:
    """Whether a member with ``granter`` may hand out ``role`` (never more than they have)."""
    return granter == Role.ADMIN or ROLE_SCOPES[role] <= ROLE_SCOPES[granter]

"""Words for the audit log's vocabulary: actions, their areas, target kinds and actor kinds.

The log stores stable codes (``auth.login_succeeded``); the dashboard shows these words next to
them and offers them as filter choices. A code without an entry here is still shown, put into
words by ``action_label`` ("llm_provider.tested" -> "Llm provider: tested"), and
tests/test_audit_pages.py fails until every action the code records has its words here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Areas, in the order the action filter lists them: the prefix before the dot.
AREAS: dict[str, str] = {
    "auth": "Sign-in and passwords",
    "member": "Members",
    "invitation": "Invitations",
    "user": "Accounts",
    "api_key": "API keys",
    "session": "Sessions",
    "approval": "Approvals",
    "agent": "Agents",
    "credential": "Credentials",
    "llm_settings": "LLM settings",
    "llm_provider": "LLM providers",
    "model_alias": "Model aliases",
    "mcp_server": "MCP servers",
    "skill": "Skills",
    "sso": "Single sign-on",
    "scim": "SCIM provisioning",
    "scim_token": "SCIM tokens",
    "export": "Data exports",
    "retention": "Data retention",
    "org": "Organization",
    "usage": "Usage and plan",
    "vault": "Encryption keys",
}

ACTIONS: dict[str, str] = {
    "auth.login_succeeded": "Signed in",
    "auth.login_failed": "Sign-in failed",
    "auth.password_reset": "Password reset",
    "member.added": "Member added",
    "member.removed": "Member removed",
    "member.role_changed": "Member's role changed",
    "member.disabled": "Member disabled",
    "member.enabled": "Member enabled again",
    "invitation.created": "Invitation sent",
    "invitation.accepted": "Invitation accepted",
    "invitation.revoked": "Invitation revoked",
    "user.disabled": "Account disabled by the platform",
    "user.enabled": "Account enabled by the platform",
    "api_key.created": "API key created",
    "api_key.revoked": "API key revoked",
    "session.started": "Session started",
    "session.cancelled": "Session cancelled",
    "session.forked": "Session replayed from a checkpoint",
    "approval.decided": "Approval decided",
    "agent.deployed": "Agent version deployed",
    "agent.version_deprecated": "Agent version deprecated",
    "credential.created": "Credential created",
    "credential.updated": "Credential changed",
    "credential.deleted": "Credential deleted",
    "credential.used": "Credential used by a session",
    "credential.use_refused": "Credential use refused",
    "credential.refreshed": "Credential token refreshed",
    "credential.refresh_failed": "Credential token refresh failed",
    "llm_settings.updated": "LLM settings changed",
    "llm_settings.tested": "LLM settings tested",
    "llm_provider.created": "LLM provider added",
    "llm_provider.updated": "LLM provider changed",
    "llm_provider.deleted": "LLM provider deleted",
    "llm_provider.tested": "LLM provider tested",
    "model_alias.set": "Model alias set",
    "model_alias.deleted": "Model alias deleted",
    "mcp_server.created": "MCP server added",
    "mcp_server.updated": "MCP server changed",
    "mcp_server.deleted": "MCP server deleted",
    "mcp_server.tools_refreshed": "MCP server's tools refreshed",
    "skill.created": "Skill added",
    "skill.updated": "Skill changed",
    "skill.deleted": "Skill deleted",
    "sso.connection_created": "SSO connection added",
    "sso.connection_updated": "SSO connection changed",
    "sso.connection_deleted": "SSO connection deleted",
    "sso.connection_tested": "SSO connection tested",
    "sso.domain_claimed": "Email domain claimed",
    "sso.domain_verified": "Email domain verified",
    "sso.domain_deleted": "Email domain removed",
    "sso.role_rule_created": "Role mapping rule added",
    "sso.role_rule_deleted": "Role mapping rule deleted",
    "sso.enforcement_changed": "SSO enforcement changed",
    "sso.login_succeeded": "Signed in with SSO",
    "sso.login_failed": "SSO sign-in failed",
    "sso.user_provisioned": "Account created by SSO sign-in",
    "sso.identity_linked": "SSO identity linked to an account",
    "sso.role_changed": "Role changed by SSO rules",
    "scim.user_provisioned": "User provisioned by SCIM",
    "scim.user_replaced": "User replaced by SCIM",
    "scim.user_patched": "User updated by SCIM",
    "scim.group_created": "Group created by SCIM",
    "scim.group_replaced": "Group replaced by SCIM",
    "scim.group_patched": "Group updated by SCIM",
    "scim.group_deleted": "Group deleted by SCIM",
    "scim_token.created": "SCIM token created",
    "scim_token.revoked": "SCIM token revoked",
    "export.requested": "Export requested",
    "export.started": "Export started",
    "export.completed": "Export completed",
    "export.failed": "Export failed",
    "export.link_created": "Export download link created",
    "export.downloaded": "Export downloaded",
    "export.expired": "Export expired",
    "org.created": "Organization created",
    "org.imported": "Organization imported",
    "org.deletion_scheduled": "Organization deletion scheduled",
    "org.deletion_restored": "Organization restored from deletion",
    "retention.updated": "Retention policy changed",
    "retention.sessions_deleted": "Old sessions deleted by retention",
    "user.erased": "Person erased",
    "usage.plan_changed": "Plan changed",
    "usage.soft_threshold_reached": "Usage warning threshold reached",
    "vault.master_key_rotated": "Master key rotated",
    "vault.tenant_key_rotation_started": "Organization key rotation started",
    "vault.tenant_key_rotated": "Organization key rotated",
}

TARGET_KINDS: dict[str, str] = {
    "session": "Session",
    "approval": "Approval",
    "agent_version": "Agent version",
    "credential": "Credential",
    "user": "User",
    "invitation": "Invitation",
    "api_key": "API key",
    "llm_settings": "LLM settings",
    "llm_provider": "LLM provider",
    "model_alias": "Model alias",
    "mcp_server": "MCP server",
    "skill": "Skill",
    "sso_connection": "SSO connection",
    "email_domain": "Email domain",
    "role_mapping_rule": "Role mapping rule",
    "scim_token": "SCIM token",
    "scim_group": "SCIM group",
    "export": "Export",
    "organization": "Organization",
}

ACTOR_KINDS: dict[str, str] = {
    "user": "Member",
    "api_key": "API key",
    "scim_token": "SCIM token",
    "platform_admin": "Platform administrator",
    "cli": "Server command line",
    "system": "EngineX",
}


def _words(code: str) -> str:
    text = code.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def action_label(action: str) -> str:
    """The action in words; an unknown code as "Area: words"."""
    if action in ACTIONS:
        return ACTIONS[action]
    area, _, rest = action.partition(".")
    return f"{AREAS.get(area, _words(area))}: {rest.replace('_', ' ')}" if rest \
        else _words(action)


def target_label(kind: str) -> str:
    return TARGET_KINDS.get(kind, _words(kind))


def actor_kind_label(kind: str) -> str:
    return ACTOR_KINDS.get(kind, _words(kind))


@dataclass(frozen=True)
class ActionGroup:
    """One area of the action filter: its prefix choice ("member.") and its actions."""

    prefix: str
    label: str
    actions: list[tuple[str, str]]


def action_groups() -> list[ActionGroup]:
    """The action filter's choices, area by area, in the order of ``AREAS``."""
    groups = []
    for area, label in AREAS.items():
        actions = [(code, words) for code, words in ACTIONS.items()
                   if code.partition(".")[0] == area]
        if actions:
            groups.append(ActionGroup(f"{area}.", label, actions))
    return groups

"""Entra's group overage in an id_token: the groups are left out and only reachable through
Microsoft Graph, which EngineX does not call. Detection only (pure); the refusal at sign-in is
tested end to end with a real SAML IdP in tests/test_saml_signin.py."""

from __future__ import annotations

from enginex.sso.provisioning import oidc_groups_overage

GRAPH = {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}


def test_a_distributed_groups_claim_is_overage() -> None:
    claims = {"sub": "x", "_claim_names": {"groups": "src1"}, "_claim_sources": GRAPH}
    assert oidc_groups_overage(claims, "groups") is True


def test_hasgroups_without_groups_is_overage() -> None:
    assert oidc_groups_overage({"sub": "x", "hasgroups": True}, "groups") is True
    assert oidc_groups_overage({"sub": "x", "hasgroups": "true"}, "groups") is True


def test_groups_present_or_absent_without_a_hint_is_not_overage() -> None:
    assert oidc_groups_overage({"sub": "x", "groups": ["a"], "hasgroups": True}, "groups") is False
    assert oidc_groups_overage({"sub": "x"}, "groups") is False
    # a distributed claim of another name says nothing about the groups claim
    assert oidc_groups_overage({"_claim_names": {"roles": "src1"}}, "groups") is False
    # the connection's own claim name is what counts
    assert oidc_groups_overage({"_claim_names": {"wids": "src1"}}, "wids") is True

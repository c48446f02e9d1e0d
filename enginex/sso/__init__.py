"""Single sign-on per organization: connections (OIDC; SAML in saml.py), verified email
domains, SSO identities, group -> role mapping rules and SSO enforcement (docs/SSO.md)."""

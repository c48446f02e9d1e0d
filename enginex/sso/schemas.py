"""Bodies of the SSO routes (connections, domains, role-mapping rules, enforcement).

The client secret is write-only: accepted in ``client_secret`` (stored in the credential vault
as an org credential) and never returned; responses name the credential instead.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody

RoleName = Literal["admin", "builder", "operator", "viewer"]
ConnectionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Url = Annotated[str, StringConstraints(min_length=1, max_length=500)]
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=False)]
ClaimName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Scopes = Annotated[list[Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,100}$")]],
                   Field(min_length=1, max_length=20)]
Algorithms = Annotated[list[Annotated[str, StringConstraints(max_length=10)]],
                       Field(min_length=1, max_length=10)]

CLIENT_VALUE_HELP = ("The OIDC client secret. Write-only: stored in the credential vault "
                      "as the org credential 'sso-<connection name>' (created or replaced), "
                      "never returned.")
CREDENTIAL_HELP = ("Instead of client_secret: the name of an existing org credential whose "
                   "field 'client_secret' holds the secret.")


class OidcSettingsIn(RequestBody):
    issuer: Url = Field(description="The issuer exactly as the IdP publishes it, e.g. "
                                    "https://acme.okta.com or https://login.microsoftonline.com"
                                    "/<tenant id>/v2.0")
    client_id: ClientId
    scopes: Scopes | None = Field(default=None, description="Default: openid email profile. "
                                                            "Must include openid.")
    algorithms: Algorithms | None = Field(
        default=None, description="id_token signature algorithms accepted (default RS256). "
                                  "Asymmetric only: RS*, PS*, ES*, EdDSA.")


Pem = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class SamlSettingsIn(RequestBody):
    """The IdP of a SAML connection: its metadata (``metadata_xml`` uploaded, or
    ``metadata_url`` fetched), or the three values ``idp_entity_id``, ``sso_url`` and
    ``certificates`` by hand (docs/SSO_SAML.md)."""

    metadata_url: Url | None = Field(default=None, description="IdP metadata address, "
                                     "fetched now and at each test (1 MiB, 10 s).")
    metadata_xml: Annotated[str, StringConstraints(min_length=1, max_length=1_048_576)] | None \
        = Field(default=None, description="IdP metadata document (uploaded; not stored).")
    idp_entity_id: Url | None = None
    sso_url: Url | None = Field(default=None, description="SingleSignOnService, "
                                                          "HTTP-Redirect binding.")
    certificates: Annotated[list[Pem], Field(min_length=1, max_length=4)] | None = Field(
        default=None, description="IdP signing certificates (PEM); several during a rollover.")
    email_attribute: ClaimName | None = None
    name_attribute: ClaimName | None = None


class ConnectionCreate(RequestBody):
    name: ConnectionName
    kind: Literal["oidc", "saml"] = Field(description="'oidc' (with 'oidc' settings) or "
                                                      "'saml' (with 'saml' settings).")
    oidc: OidcSettingsIn | None = None
    saml: SamlSettingsIn | None = None
    client_secret: Secret | None = Field(default=None, description=CLIENT_VALUE_HELP)
    client_secret_credential: CredentialName | None = Field(default=None,
                                                            description=CREDENTIAL_HELP)
    enabled: bool = False
    default_role: RoleName = "viewer"
    groups_claim: ClaimName = "groups"


class ConnectionUpdate(RequestBody):
    """Fields left out are kept. ``oidc`` replaces the OIDC settings as a whole."""

    name: ConnectionName | None = None
    oidc: OidcSettingsIn | None = None
    saml: SamlSettingsIn | None = Field(default=None, description="Replaces the SAML "
                                                                  "settings as a whole.")
    client_secret: Secret | None = Field(default=None, description=CLIENT_VALUE_HELP)
    client_secret_credential: CredentialName | None = Field(default=None,
                                                            description=CREDENTIAL_HELP)
    enabled: bool | None = None
    default_role: RoleName | None = None
    groups_claim: ClaimName | None = None


class ConnectionOut(ResponseBody):
    id: uuid.UUID
    name: str
    kind: str
    enabled: bool
    default_role: str
    groups_claim: str
    settings: dict[str, Any] = Field(description="Non-secret settings; OIDC: issuer, "
                                                 "client_id, scopes, algorithms, "
                                                 "client_secret_credential (a name).")
    redirect_uri: str = Field(description="Paste into the IdP (OIDC).")
    saml_acs_url: str | None = Field(default=None, description="SAML: the ACS URL to paste "
                                                               "into the IdP.")
    saml_entity_id: str | None = Field(default=None, description="SAML: the SP entity id, "
                                                                 "also its metadata URL.")
    start_url: str = Field(description="SP-initiated sign-in for this organization.")
    created_at: datetime
    updated_at: datetime


class ConnectionTestOut(ResponseBody):
    ok: bool
    problems: list[str]
    discovery: dict[str, Any]
    keys: list[dict[str, Any]]


class DomainCreate(RequestBody):
    domain: Annotated[str, StringConstraints(min_length=3, max_length=253)]


class DomainOut(ResponseBody):
    id: uuid.UUID
    domain: str
    verified: bool
    verified_at: datetime | None
    txt_record_name: str
    txt_record_value: str
    created_at: datetime


class RuleCreate(RequestBody):
    group: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    role: RoleName
    priority: Annotated[int, Field(ge=0, le=10_000)] = 100


class RuleOut(ResponseBody):
    id: uuid.UUID
    group: str
    role: str
    priority: int
    created_at: datetime


class EnforcementIn(RequestBody):
    require_sso: bool
    break_glass_user_id: Annotated[uuid.UUID, Field(strict=False)] | None = Field(
        default=None, description="An admin of the organization who keeps password sign-in "
                                  "while SSO is required (break-glass). Platform admins "
                                  "always keep it.")


class EnforcementOut(ResponseBody):
    require_sso: bool
    break_glass_user_id: uuid.UUID | None

"""The OpenID Connect relying party: discovery, JWKS, the authorization request and the
id_token checks. Authlib runs the OAuth 2.0 flow (authorization URL with PKCE S256, the
code exchange with client_secret_basic, over httpx2 as Authlib 1.6 does); joserfc does the
JWT/JWK work.

Contracts:

* Discovery (``{issuer}/.well-known/openid-configuration``) is cached per issuer for
  ``METADATA_TTL_SECONDS``; its ``issuer`` must equal the configured issuer exactly (OpenID
  Connect Discovery 1.0, section 4.3), else nothing is trusted.
* JWKS are cached per ``jwks_uri`` for ``JWKS_TTL_SECONDS``. An id_token whose ``kid`` is not
  in the cached set triggers ONE refetch (key rotation at the IdP), at most once per
  ``min_refetch_seconds`` per ``jwks_uri``, so a stream of tokens with made-up key ids cannot
  make EngineX hammer the IdP.
* ``validate_id_token`` checks, in this order, and raises ``OidcError`` naming what failed:
  algorithm in the connection's allow-list (``none`` and HMAC are never accepted), the
  signature with the IdP's key, ``iss``, ``aud`` (and ``azp`` when there are several
  audiences), ``exp``/``iat``/``nbf`` with ``CLOCK_SKEW_SECONDS`` of leeway, ``sub``, and
  ``nonce`` equal to the one this browser's flow sent.
* Every request to the IdP goes through the egress guard (``enginex.tools.egress``): the
  issuer is chosen by a tenant, so it must not reach the platform's own network unless the
  deployment allows private networks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from enginex.kit.errors import AppError
from enginex.tools.egress import guarded_sdk_transport, guarded_transport

# Asymmetric algorithms only: 'none' is no signature, and HMAC (HS*) would make the client
# secret a verification key that the IdP's admins also hold.
SUPPORTED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                        "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256",)
DEFAULT_SCOPES = ("openid", "email", "profile")
CLOCK_SKEW_SECONDS = 60
METADATA_TTL_SECONDS = 3600
JWKS_TTL_SECONDS = 3600
JWKS_MIN_REFETCH_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 512 * 1024


class OidcError(AppError):
    """A sign-in or test step that failed at or because of the identity provider. The message
    says what failed and what an admin can check; it never contains a token."""

    status_code = 400
    code = "sso_failed"


@dataclass(frozen=True)
class OidcConfig:
    """The non-secret settings of one OIDC connection (``sso_connections.settings``)."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> OidcConfig:
        return cls(issuer=str(settings["issuer"]), client_id=str(settings["client_id"]),
                   scopes=tuple(settings.get("scopes") or DEFAULT_SCOPES),
                   algorithms=tuple(settings.get("algorithms") or DEFAULT_ALGORITHMS))


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _http(allow_private: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=guarded_transport(allow_private=allow_private),
                             timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False,
                             trust_env=False)


async def _get_json(url: str, *, allow_private: bool, what: str) -> dict[str, Any]:
    try:
        async with _http(allow_private) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise OidcError(f"Could not fetch the {what} from {url} ({type(exc).__name__}: "
                        f"{exc}). Check the issuer URL and that this server can reach it.",
                        code="sso_idp_unreachable") from None
    if response.status_code != 200:
        raise OidcError(f"The {what} at {url} answered HTTP {response.status_code}. Check the "
                        "issuer URL.", code="sso_idp_error")
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise OidcError(f"The {what} at {url} is larger than {MAX_DOCUMENT_BYTES} bytes.",
                        code="sso_idp_error")
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise OidcError(f"The {what} at {url} is not a JSON object.", code="sso_idp_error")
    return document


def _check_endpoint(metadata: dict[str, Any], name: str) -> str:
    value = metadata.get(name)
    if not isinstance(value, str) or urlsplit(value).scheme not in {"http", "https"}:
        raise OidcError(f"The identity provider's discovery document has no valid '{name}'.",
                        code="sso_idp_error")
    return value


@dataclass
class _Cached:
    value: Any
    fetched_at: float


@dataclass
class OidcCache:
    """Process-wide cache of discovery documents (by issuer) and key sets (by jwks_uri)."""

    min_refetch_seconds: float = JWKS_MIN_REFETCH_SECONDS
    metadata_ttl_seconds: float = METADATA_TTL_SECONDS
    jwks_ttl_seconds: float = JWKS_TTL_SECONDS
    _metadata: dict[str, _Cached] = field(default_factory=dict)
    _jwks: dict[str, _Cached] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    jwks_fetches: int = 0

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def metadata(self, issuer: str, *, allow_private: bool,
                       refresh: bool = False) -> dict[str, Any]:
        """The issuer's discovery document (cached); OidcError when it cannot be fetched or
        names another issuer."""
        async with self._lock("meta:" + issuer):
            cached = self._metadata.get(issuer)
            now = time.monotonic()
            if cached and not refresh and now - cached.fetched_at < self.metadata_ttl_seconds:
                return dict(cached.value)
            document = await _get_json(discovery_url(issuer), allow_private=allow_private,
                                       what="discovery document")
            if document.get("issuer") != issuer:
                raise OidcError(
                    f"The discovery document names the issuer '{document.get('issuer')}', not "
                    f"'{issuer}'. Enter the issuer exactly as the identity provider publishes "
                    "it (including any trailing '/').", code="sso_issuer_mismatch")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                _check_endpoint(document, name)
            self._metadata[issuer] = _Cached(document, now)
            return dict(document)

    async def keyset(self, jwks_uri: str, *, kid: str | None, allow_private: bool,
                     refresh: bool = False) -> KeySet:
        """The key set at ``jwks_uri``, refetched when stale, when ``refresh``, or (at most
        once per ``min_refetch_seconds``) when it lacks ``kid``."""
        async with self._lock("jwks:" + jwks_uri):
            cached = self._jwks.get(jwks_uri)
            now = time.monotonic()
            if cached and not refresh and now - cached.fetched_at < self.jwks_ttl_seconds:
                keyset: KeySet = cached.value
                if kid is None or _has_kid(keyset, kid):
                    return keyset
                if now - cached.fetched_at < self.min_refetch_seconds:
                    return keyset  # rotation refetch rate-limited: validation reports the kid
            document = await _get_json(jwks_uri, allow_private=allow_private, what="JWKS")
            try:
                keyset = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise OidcError(f"The identity provider's JWKS at {jwks_uri} could not be read "
                                f"({exc}).", code="sso_idp_error") from None
            self.jwks_fetches += 1
            self._jwks[jwks_uri] = _Cached(keyset, now)
            return keyset


def _has_kid(keyset: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keyset.keys)


def authorization_url(metadata: dict[str, Any], config: OidcConfig, *, redirect_uri: str,
                      state: str, nonce: str, code_verifier: str,
                      login_hint: str | None = None) -> str:
    """The IdP address the browser is sent to: Authorization Code flow with PKCE (S256),
    ``state`` and ``nonce``."""
    client = AsyncOAuth2Client(client_id=config.client_id, scope=" ".join(config.scopes),
                               redirect_uri=redirect_uri, code_challenge_method="S256")
    extra = {"login_hint": login_hint} if login_hint else {}
    url, _ = client.create_authorization_url(metadata["authorization_endpoint"], state=state,
                                             code_verifier=code_verifier, nonce=nonce, **extra)
    return str(url)


async def exchange_code(metadata: dict[str, Any], config: OidcConfig, *, client_secret: str,
                        redirect_uri: str, code: str, code_verifier: str,
                        allow_private: bool) -> str:
    """Trade the authorization code for tokens at the token endpoint; returns the id_token.
    OidcError when the IdP refuses (its error code and description are in the message)."""
    token_endpoint = metadata["token_endpoint"]
    try:
        async with AsyncOAuth2Client(
                client_id=config.client_id, client_secret=client_secret,
                token_endpoint_auth_method="client_secret_basic",  # noqa: S106 - a method name
                redirect_uri=redirect_uri,
                code_challenge_method="S256",
                transport=guarded_sdk_transport(allow_private=allow_private),
                timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
            token = await client.fetch_token(token_endpoint, grant_type="authorization_code",
                                             code=code, code_verifier=code_verifier)
    except OAuthError as exc:
        raise OidcError(f"The identity provider refused the authorization code "
                        f"({exc.error}: {exc.description or 'no description'}). Sign in again; "
                        "if it keeps failing, check the connection's client id and secret.",
                        code="sso_code_refused") from None
    except (httpx.HTTPError, httpx2.HTTPError) as exc:
        raise OidcError(f"Could not reach the identity provider's token endpoint "
                        f"({type(exc).__name__}).", code="sso_idp_unreachable") from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise OidcError("The identity provider returned no id_token. The connection's scopes "
                        "must include 'openid'.", code="sso_no_id_token")
    return id_token


KeyLoader = Callable[[str | None], Awaitable[KeySet]]


async def validate_id_token(id_token: str, *, config: OidcConfig, nonce: str,
                            load_keys: KeyLoader, now: int | None = None) -> dict[str, Any]:
    """The id_token's claims after every check in the module docstring; OidcError (code
    ``sso_invalid_id_token``) naming the first check that failed."""
    def refused(message: str) -> OidcError:
        return OidcError(f"The id_token was refused: {message}", code="sso_invalid_id_token")

    try:
        header = extract_compact(id_token.encode()).protected
    except (JoseError, ValueError, UnicodeError):
        raise refused("it is not a compact JWS (header.payload.signature).") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in config.algorithms:
        allowed = ", ".join(config.algorithms)
        raise refused(f"it is signed with the algorithm '{alg}', which this connection does "
                      f"not accept (allowed: {allowed}). 'none' and HMAC are never accepted.")
    kid = header.get("kid")
    keyset = await load_keys(kid if isinstance(kid, str) else None)
    if isinstance(kid, str) and not _has_kid(keyset, kid):
        raise refused(f"no key with id '{kid}' is in the identity provider's JWKS (checked "
                      "again just now).")
    try:
        token = jwt.decode(id_token, keyset, algorithms=list(config.algorithms))
    except BadSignatureError:
        raise refused("its signature does not verify with the identity provider's "
                      "keys.") from None
    except (JoseError, ValueError) as exc:
        raise refused(f"it could not be decoded ({exc}).") from None
    claims = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=now, leeway=CLOCK_SKEW_SECONDS,
        iss={"essential": True, "value": config.issuer},
        aud={"essential": True, "value": config.client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce})
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise refused("it has expired (exp is in the past, beyond "
                      f"{CLOCK_SKEW_SECONDS} s of clock skew). Sign in again; if this keeps "
                      "happening, check the server clock.") from None
    except MissingClaimError as exc:
        raise refused(f"the claim '{exc.claim}' is missing.") from None
    except InvalidClaimError as exc:
        raise refused(_claim_problem(exc.claim, claims, config)) from None
    except (InvalidTokenError, DecodeError) as exc:
        raise refused(f"{exc}.") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != config.client_id:
        raise refused("it names several audiences but its 'azp' is not this connection's "
                      "client id.")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise refused("the claim 'sub' is not a non-empty string.")
    return claims


def _claim_problem(claim: str, claims: dict[str, Any], config: OidcConfig) -> str:
    if claim == "iss":
        return (f"it was issued by '{claims.get('iss')}', not by this connection's issuer "
                f"'{config.issuer}'.")
    if claim == "aud":
        return ("it was issued to another client (its audience is not this connection's "
                "client id): a token for another application or organization cannot sign in "
                "here.")
    if claim == "nonce":
        return ("its nonce does not match the one this browser's sign-in sent (a replayed or "
                "injected token). Start the sign-in again.")
    if claim in {"iat", "nbf"}:
        return f"its '{claim}' is in the future (beyond {CLOCK_SKEW_SECONDS} s of clock skew)."
    return f"the claim '{claim}' is not valid."

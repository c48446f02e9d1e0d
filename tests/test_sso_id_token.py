"""The id_token checks of the OIDC relying party (enginex/sso/oidc.py) on crafted tokens:
each way a token can be wrong is refused with a message that names what was wrong.

The tokens are signed here with joserfc and a key of this test (the same checks run on the
real provider's tokens in tests/test_sso_oidc.py); ``load_keys`` serves this test's key set
as the IdP's JWKS would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from enginex.sso.oidc import OidcConfig, OidcError, validate_id_token
from enginex.sso.role_mapping import pick_role
from enginex.tenancy.scopes import Role

ISSUER = "https://idp.example.test"
CLIENT = "client-of-org-a"
NONCE = "nonce-of-this-browser"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
CONFIG = OidcConfig(issuer=ISSUER, client_id=CLIENT)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "user-1", "iat": now, "exp": now + 300,
            "nonce": NONCE, "email": "ann@a.example"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(payload: dict[str, Any], *, key: Any = KEY, alg: str = "RS256",
          kid: str | None = "k1") -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def validate(value: str, *, config: OidcConfig = CONFIG, nonce: str = NONCE,
             keys: KeySet | None = None) -> dict[str, Any]:
    async def load_keys(kid: str | None) -> KeySet:
        return keys or KeySet([KEY])

    return asyncio.run(validate_id_token(value, config=config, nonce=nonce,
                                        load_keys=load_keys))


def refused(value: str, **kwargs: Any) -> str:
    with pytest.raises(OidcError) as caught:
        validate(value, **kwargs)
    assert caught.value.code == "sso_invalid_id_token"
    assert caught.value.status_code == 400
    return caught.value.message


def test_a_valid_token_gives_its_claims() -> None:
    found = validate(token(claims(groups=["eng"])))
    assert found["sub"] == "user-1" and found["groups"] == ["eng"]


def test_a_token_issued_to_another_client_is_refused() -> None:
    assert "issued to another client" in refused(token(claims(aud="client-of-org-b")))


def test_several_audiences_need_azp_naming_this_client() -> None:
    message = refused(token(claims(aud=[CLIENT, "other"], azp="other")))
    assert "azp" in message
    assert validate(token(claims(aud=[CLIENT, "other"], azp=CLIENT)))["sub"] == "user-1"


def test_a_wrong_nonce_is_refused() -> None:
    assert "nonce does not match" in refused(token(claims(nonce="another-browser")))


def test_a_missing_nonce_is_refused() -> None:
    assert "'nonce' is missing" in refused(token(claims(nonce=None)))


def test_an_expired_token_is_refused() -> None:
    past = int(time.time()) - 3600
    assert "expired" in refused(token(claims(iat=past - 300, exp=past)))


def test_another_issuer_is_refused() -> None:
    assert "not by this connection's issuer" in refused(token(claims(iss="https://evil.test")))


def test_alg_none_is_refused() -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    unsigned = f"{b64({'alg': 'none'})}.{b64(claims())}."
    assert "algorithm 'none'" in refused(unsigned)


def test_hmac_signed_with_a_guessable_secret_is_refused() -> None:
    secret = OctKey.import_key(b"the-client-secret-is-not-a-key-0123456789")
    assert "algorithm 'HS256'" in refused(token(claims(), key=secret, alg="HS256"))


def test_an_algorithm_outside_the_allow_list_is_refused() -> None:
    message = refused(token(claims(), alg="RS512"))
    assert "RS512" in message and "allowed: RS256" in message


def test_a_forged_signature_is_refused() -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    assert "signature does not verify" in refused(token(claims(), key=other))


def test_an_unknown_key_id_is_refused() -> None:
    assert "no key with id 'k9'" in refused(token(claims(), kid="k9"))


def test_garbage_is_refused() -> None:
    assert "not a compact JWS" in refused("not-a-token")


def test_role_mapping_lowest_priority_wins_then_higher_role() -> None:
    rules = [("Engineers", Role.BUILDER, 10), ("admins", Role.ADMIN, 20),
             ("ops", Role.OPERATOR, 10)]
    assert pick_role(rules, ["engineers", "admins"], Role.VIEWER) == Role.BUILDER
    assert pick_role(rules, ["admins"], Role.VIEWER) == Role.ADMIN
    assert pick_role(rules, ["ops", " ENGINEERS "], Role.VIEWER) == Role.BUILDER
    assert pick_role(rules, ["nobody"], Role.OPERATOR) == Role.OPERATOR
    assert pick_role(rules, [], Role.VIEWER) == Role.VIEWER

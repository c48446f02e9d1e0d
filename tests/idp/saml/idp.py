"""pysaml2's IdP (``saml2.server.Server``) as a test identity provider.

``TestIdp.respond(...)`` answers an AuthnRequest produced by EngineX's SP (the redirect URL):
pysaml2 parses the request, then creates and signs a real response with ``xmlsec1``. Keys and
certificates are generated with ``cryptography`` in a temporary directory.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_REDIRECT, saml
from saml2.config import IdPConfig
from saml2.saml import NAMEID_FORMAT_PERSISTENT
from saml2.server import Server
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

XMLSEC1 = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"


@dataclass(frozen=True)
class KeyPair:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    key_path: Path
    cert_path: Path

    @property
    def cert_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def make_key_pair(directory: Path, name: str, *, valid_days: int = 365) -> KeyPair:
    """A 2048-bit RSA key and a self-signed certificate valid for ``valid_days``, as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(hours=1))
                   .not_valid_after(now + timedelta(days=valid_days))
                   .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{name}.key"
    cert_path = directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return KeyPair(key=key, certificate=certificate, key_path=key_path, cert_path=cert_path)


class TestIdp:
    """One pysaml2 IdP with entity id ``entity_id`` and SSO URL ``sso_url``, trusting the SP
    metadata documents given (EngineX's own ``sp_metadata_xml`` output)."""

    __test__ = False

    def __init__(self, *, entity_id: str, sso_url: str, keys: KeyPair,
                 sp_metadata: list[bytes]) -> None:
        self.entity_id = entity_id
        self.sso_url = sso_url
        self.keys = keys
        config = IdPConfig()
        config.load({
            "entityid": entity_id,
            "xmlsec_binary": XMLSEC1,
            "key_file": str(keys.key_path),
            "cert_file": str(keys.cert_path),
            "metadata": {"inline": [m.decode() for m in sp_metadata]},
            "service": {"idp": {
                "endpoints": {"single_sign_on_service": [(sso_url, BINDING_HTTP_REDIRECT)]},
                "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                "policy": {"default": {"lifetime": {"minutes": 5},
                                       "attribute_restrictions": None}},
                "sign_response": False,
                "sign_assertion": True,
            }},
        })
        self.server = Server(config=config)

    def metadata_xml(self) -> bytes:
        """IdP metadata, as an IdP administrator would download it."""
        from saml2.metadata import create_metadata_string

        return create_metadata_string(None, self.server.config, valid=1)

    def respond(self, redirect_url: str, *, name_id: str, attributes: dict[str, list[str]],
                sign_assertion: bool = True, sign_response: bool = False,
                audience_sp: str | None = None) -> str:
        """Answer the AuthnRequest carried by ``redirect_url``: the base64 ``SAMLResponse``
        form field, signed by pysaml2 with RSA-SHA256 / SHA-256."""
        query = parse_qs(urlsplit(redirect_url).query)
        request = self.server.parse_authn_request(query["SAMLRequest"][0],
                                                  BINDING_HTTP_REDIRECT)
        message = request.message
        destination = message.assertion_consumer_service_url
        response = self.server.create_authn_response(
            identity=attributes,
            in_response_to=message.id,
            destination=destination,
            sp_entity_id=audience_sp or message.issuer.text,
            name_id=saml.NameID(format=NAMEID_FORMAT_PERSISTENT, text=name_id),
            authn={"class_ref": saml.AUTHN_PASSWORD_PROTECTED, "authn_auth": self.entity_id},
            sign_assertion=sign_assertion,
            sign_response=sign_response,
            sign_alg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        )
        return base64.b64encode(str(response).encode()).decode()

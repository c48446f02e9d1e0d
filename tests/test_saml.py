"""SAML 2.0 service provider, protocol layer (enginex/sso/saml.py), against a real IdP.

The IdP is pysaml2's ``saml2.server.Server`` (tests/idp/saml/idp.py) signing with RSA-SHA256
through Debian's ``xmlsec1``; every refused response is derived from one it really signed.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from enginex.sso import saml
from enginex.tools.egress import guarded_transport
from tests.idp.saml import attacks
from tests.idp.saml.idp import KeyPair, TestIdp, make_key_pair

SP = saml.ServiceProvider(entity_id="http://127.0.0.1:8000/sso/acme/saml/metadata",
                          acs_url="http://127.0.0.1:8000/sso/acme/saml/acs")
OTHER_SP = saml.ServiceProvider(entity_id="http://127.0.0.1:8000/sso/beta/saml/metadata",
                                acs_url="http://127.0.0.1:8000/sso/beta/saml/acs")
IDP_ENTITY_ID = "http://127.0.0.1:9/idp/metadata"
IDP_SSO_URL = "http://127.0.0.1:9/idp/sso"
USER = "alice-7f3a"
ATTRIBUTES = {"email": ["alice@acme.test"], "groups": ["engineering", "admins"]}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = Path(tmp_path_factory.mktemp("saml-keys"))
    return {name: make_key_pair(directory, name) for name in ("idp", "rollover", "attacker")}


@pytest.fixture(scope="module")
def idp(keys: dict[str, KeyPair]) -> TestIdp:
    return TestIdp(entity_id=IDP_ENTITY_ID, sso_url=IDP_SSO_URL, keys=keys["idp"],
                   sp_metadata=[saml.sp_metadata_xml(SP), saml.sp_metadata_xml(OTHER_SP)])


@pytest.fixture(scope="module")
def idp_settings(idp: TestIdp) -> saml.IdentityProvider:
    """The connection's IdP settings, read from the IdP's own metadata."""
    return saml.parse_idp_metadata(idp.metadata_xml())


def sign_in(idp: TestIdp, settings: saml.IdentityProvider, *, sp: saml.ServiceProvider = SP,
            **respond: object) -> tuple[saml.AuthnRequest, str]:
    request = saml.build_authn_request(sp, settings, now=datetime.now(UTC))
    response = idp.respond(request.redirect_url, name_id=respond.pop("name_id", USER),
                           attributes=respond.pop("attributes", ATTRIBUTES), **respond)
    return request, response


def validate(response: str, request: saml.AuthnRequest, settings: saml.IdentityProvider, *,
             sp: saml.ServiceProvider = SP, now: datetime | None = None,
             policy: saml.ValidationPolicy | None = None) -> saml.SamlAssertion:
    return saml.validate_response(response, sp=sp, idp=settings,
                                  pending_request_ids={request.request_id},
                                  now=now or datetime.now(UTC),
                                  policy=policy or saml.ValidationPolicy())


def refused(reason: str | tuple[str, ...], response: str, request: saml.AuthnRequest,
            settings: saml.IdentityProvider, **kw: object) -> saml.SamlRejected:
    with pytest.raises(saml.SamlRejected) as caught:
        validate(response, request, settings, **kw)  # type: ignore[arg-type]
    reasons = (reason,) if isinstance(reason, str) else reason
    assert caught.value.details["reason"] in reasons, caught.value.message
    assert caught.value.status_code == 400
    return caught.value


# --- the happy paths ------------------------------------------------------------------------


def test_signed_assertion_from_the_idp_is_accepted_and_read(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    result = validate(response, request, idp_settings)
    assert result.issuer == IDP_ENTITY_ID
    assert result.name_id == USER
    assert result.in_response_to == request.request_id
    assert result.attribute("groups") == ("engineering", "admins")
    assert result.assertion_id
    assert result.replay_expires_at > datetime.now(UTC)


def test_response_signed_at_the_response_level_is_accepted(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=True)
    assert validate(response, request, idp_settings).name_id == USER


def test_response_and_assertion_both_signed_are_accepted(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=True, sign_response=True)
    assert validate(response, request, idp_settings).name_id == USER


def test_certificate_rollover_accepts_any_configured_certificate(idp, idp_settings, keys):
    settings = replace(idp_settings, certificates=(keys["rollover"].certificate,
                                                   *idp_settings.certificates))
    request, response = sign_in(idp, settings)
    assert validate(response, request, settings).name_id == USER


def test_clock_skew_is_allowed_and_configurable(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    result = validate(response, request, idp_settings)
    just_after = result.replay_expires_at - timedelta(minutes=2) + timedelta(seconds=30)
    assert validate(response, request, idp_settings, now=just_after).name_id == USER
    refused("expired", response, request, idp_settings, now=just_after,
            policy=saml.ValidationPolicy(clock_skew=timedelta(0)))


# --- requests and metadata ------------------------------------------------------------------


def test_authn_request_is_read_by_the_idp_with_our_acs_and_issuer(idp, idp_settings):
    request = saml.build_authn_request(SP, idp_settings, now=datetime.now(UTC),
                                       relay_state="r1")
    assert request.redirect_url.startswith(IDP_SSO_URL + "?SAMLRequest=")
    assert "RelayState=r1" in request.redirect_url
    query = httpx.URL(request.redirect_url).params
    parsed = idp.server.parse_authn_request(query["SAMLRequest"]).message
    assert parsed.id == request.request_id
    assert parsed.issuer.text == SP.entity_id
    assert parsed.assertion_consumer_service_url == SP.acs_url
    assert parsed.destination == IDP_SSO_URL
    assert request.expires_at > request.issued_at


def test_sp_metadata_is_understood_by_the_idp(idp):
    services = idp.server.metadata.assertion_consumer_service(SP.entity_id)
    assert [s["location"] for s in services] == [SP.acs_url]


def test_idp_metadata_gives_entity_id_sso_url_and_certificate(idp, idp_settings, keys):
    assert idp_settings.entity_id == IDP_ENTITY_ID
    assert idp_settings.sso_url == IDP_SSO_URL
    assert idp_settings.certificates == (keys["idp"].certificate,)


def test_idp_metadata_that_is_not_metadata_is_refused():
    with pytest.raises(saml.SamlRejected) as caught:
        saml.parse_idp_metadata(b"<html><body>login</body></html>")
    assert caught.value.details["reason"] == "bad_metadata"
    with pytest.raises(saml.SamlRejected):
        saml.parse_idp_metadata(b"<md:EntityDescriptor xmlns:md='nope'")


def test_certificate_is_read_from_pem_and_base64_and_garbage_is_refused(keys):
    pem = keys["idp"].cert_pem
    assert saml.load_certificate(pem) == keys["idp"].certificate
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    assert saml.load_certificate(body) == keys["idp"].certificate
    with pytest.raises(saml.SamlRejected):
        saml.load_certificate("not a certificate")


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return


@dataclass(frozen=True)
class Served:
    url: str
    handler: type[_MetadataHandler]


@pytest.fixture
def served(idp: TestIdp) -> Iterator[Served]:
    """The IdP's metadata on a local HTTP server that counts the requests it receives."""
    handler = type("Handler", (_MetadataHandler,), {"body": idp.metadata_xml(), "hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(url=f"http://127.0.0.1:{server.server_address[1]}", handler=handler)
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str, *, allow_private: bool = True, **kw: int) -> bytes:
    return asyncio.run(saml.fetch_idp_metadata(
        url, transport=guarded_transport(allow_private=allow_private), **kw))


def test_idp_metadata_by_url_is_fetched_with_limits(served, keys):
    data = fetch(served.url + "/metadata")
    assert saml.parse_idp_metadata(data).certificates == (keys["idp"].certificate,)
    with pytest.raises(saml.SamlRejected) as too_big:
        fetch(served.url + "/metadata", max_bytes=100)
    assert too_big.value.details["reason"] == "too_large"
    with pytest.raises(saml.SamlRejected) as missing:
        fetch(served.url + "/missing")
    assert "404" in missing.value.message


def test_idp_metadata_url_on_a_private_address_is_refused_by_the_egress_guard(served):
    with pytest.raises(saml.SamlRejected) as caught:
        fetch(served.url + "/metadata", allow_private=False)
    assert caught.value.details["reason"] == "metadata_fetch"
    assert served.handler.hits == 0


# --- refusals: signatures -------------------------------------------------------------------


def test_unsigned_response_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=False)
    refused("unsigned", response, request, idp_settings)


def test_signed_name_id_changed_in_place_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    refused("bad_signature", attacks.tamper_name_id(response, "admin"), request, idp_settings)


@pytest.mark.parametrize("variant", [
    attacks.xsw_sibling_before,
    attacks.xsw_sibling_after,
    attacks.xsw_wrap_original,
    attacks.xsw_original_in_signature_object,
    attacks.xsw_original_in_extensions,
])
def test_signature_wrapping_of_the_assertion_is_refused(idp, idp_settings, variant):
    request, response = sign_in(idp, idp_settings)
    crafted = variant(response, "admin")
    error = refused("signature_wrapping", crafted, request, idp_settings)
    assert "admin" not in error.message


def test_evil_assertion_reusing_the_signed_id_and_signature_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    refused("bad_signature", attacks.xsw_duplicate_id(response, "admin"), request,
            idp_settings)


def test_signature_wrapping_of_a_signed_response_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=True)
    refused(("signature_wrapping", "bad_signature"),
            attacks.xsw_response_wrapping(response, "admin"), request, idp_settings)


def test_response_signature_moved_into_the_assertion_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=True)
    refused(("bad_signature", "signature_wrapping"),
            attacks.move_response_signature_into_assertion(response), request, idp_settings)


def test_unsigned_assertion_inside_a_signed_response_is_refused(idp, idp_settings):
    """The response is signed; its assertion swapped for an unsigned forged one."""
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=True)
    crafted = attacks.forge_unsigned_assertion_in_signed_response(response, "admin")
    refused("bad_signature", crafted, request, idp_settings)


def test_unsigned_assertion_next_to_a_signed_one_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=True, sign_response=True)
    refused("signature_wrapping", attacks.xsw_sibling_before(response, "admin"), request,
            idp_settings)


def test_comment_injected_in_the_name_id_is_refused(idp, idp_settings):
    """NameID 'admin@acme.test.evil.test' signed by the IdP; a comment after
    'admin@acme.test' keeps the digest (c14n drops comments) and would truncate the value in
    a parser that reads the first text node only."""
    request, response = sign_in(idp, idp_settings, name_id="admin@acme.test.evil.test")
    crafted = attacks.inject_comment_in_name_id(response, "admin@acme.test")
    error = refused(("markup_in_text", "bad_signature"), crafted, request, idp_settings)
    assert "admin@acme.test" not in error.message


def test_xslt_transform_is_refused_even_when_signed_by_the_idp_key(idp, idp_settings, keys):
    request, response = sign_in(idp, idp_settings)
    crafted = attacks.add_xslt_transform(response, keys["idp"].key)
    error = refused("bad_signature", crafted, request, idp_settings)
    assert "UnsupportedAlgorithm" in error.message


def test_response_signed_by_a_certificate_the_connection_does_not_trust_is_refused(
        idp, idp_settings, keys):
    request, response = sign_in(idp, idp_settings)
    other = replace(idp_settings, certificates=(keys["rollover"].certificate,))
    refused("wrong_certificate", response, request, other)


def test_assertion_resigned_by_an_attacker_key_with_its_own_certificate_is_refused(
        idp, idp_settings, keys):
    request, response = sign_in(idp, idp_settings)
    attacker = keys["attacker"]
    crafted = attacks.resign_with_other_key(response, attacker.key, attacker.certificate,
                                            "admin")
    refused("wrong_certificate", crafted, request, idp_settings)
    # The same crafted response passes the signature check once the attacker's certificate is
    # trusted: the refusal above is the certificate check, not a broken crafting.
    trusting = replace(idp_settings, certificates=(attacker.certificate,))
    assert validate(crafted, request, trusting).name_id == "admin"


def test_encrypted_assertion_is_refused_with_a_hint(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    error = refused("encrypted", attacks.encrypted_assertion(response), request, idp_settings)
    assert "encryption" in error.message


# --- refusals: conditions -------------------------------------------------------------------


def test_expired_assertion_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    later = datetime.now(UTC) + timedelta(minutes=30)
    refused("expired", response, request, idp_settings, now=later)


def test_assertion_not_yet_valid_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    earlier = datetime.now(UTC) - timedelta(minutes=30)
    refused("not_yet_valid", response, request, idp_settings, now=earlier)


def test_assertion_for_another_audience_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    other = replace(SP, entity_id="http://127.0.0.1:8000/sso/beta/saml/metadata")
    refused("audience", response, request, idp_settings, sp=other)


def test_assertion_for_another_acs_is_refused(idp, idp_settings):
    """A response for org beta's connection posted to org acme's ACS (same IdP)."""
    request, response = sign_in(idp, idp_settings, sp=OTHER_SP)
    refused(("audience", "recipient"), response, request, idp_settings)


def test_response_signed_for_another_destination_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings, sign_assertion=False, sign_response=True)
    other = replace(SP, acs_url="http://127.0.0.1:8000/sso/acme2/saml/acs")
    refused("destination", response, request, idp_settings, sp=other)


def test_response_to_another_request_is_refused(idp, idp_settings):
    _request, response = sign_in(idp, idp_settings)
    with pytest.raises(saml.SamlRejected) as caught:
        saml.validate_response(response, sp=SP, idp=idp_settings,
                               pending_request_ids={"_some_other_request"},
                               now=datetime.now(UTC))
    assert caught.value.details["reason"] == "in_response_to"


def test_response_from_another_issuer_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    other = replace(idp_settings, entity_id="http://127.0.0.1:9/other-idp")
    refused("issuer", response, request, other)


# --- refusals: the document itself ----------------------------------------------------------


def test_oversized_response_is_refused_before_parsing(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    refused("too_large", response, request, idp_settings,
            policy=saml.ValidationPolicy(max_response_bytes=1000))
    huge = base64.b64encode(b"<a>" + b" " * (saml.DEFAULT_MAX_RESPONSE_BYTES + 1) + b"</a>")
    refused("too_large", huge.decode(), request, idp_settings)


def test_malformed_xml_and_non_base64_are_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    xml = base64.b64decode(response)
    refused("malformed_xml", base64.b64encode(xml[: len(xml) // 2]).decode(), request,
            idp_settings)
    refused("malformed", "this is not base64!", request, idp_settings)
    refused("structure", base64.b64encode(b"<html/>").decode(), request, idp_settings)


def test_external_entity_is_refused_and_never_fetched(idp, idp_settings, served):
    request, response = sign_in(idp, idp_settings)
    doctype = (f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{served.url}/xxe">'
               '<!ENTITY local SYSTEM "file:///etc/hostname">]>')
    crafted = attacks.with_doctype(response, doctype, name_id_text="&xxe;&local;")
    refused("doctype", crafted, request, idp_settings)
    external_dtd = f'<!DOCTYPE r SYSTEM "{served.url}/dtd">'
    refused("doctype", attacks.with_doctype(response, external_dtd), request, idp_settings)
    assert served.handler.hits == 0


def test_entity_expansion_bomb_is_refused(idp, idp_settings):
    request, response = sign_in(idp, idp_settings)
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "&a{i - 1};&a{i - 1};&a{i - 1};&a{i - 1};">' for i in range(1, 10))
    crafted = attacks.with_doctype(response, f"<!DOCTYPE r [{entities}]>",
                                   name_id_text="&a9;")
    refused("doctype", crafted, request, idp_settings)


def test_failed_status_without_assertion_is_refused_with_the_idp_status(idp, idp_settings):
    request, _ = sign_in(idp, idp_settings)
    failed = (b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_r" '
              b'Version="2.0"><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:'
              b'2.0:status:Responder"/><samlp:StatusMessage>user locked</samlp:StatusMessage>'
              b'</samlp:Status></samlp:Response>')
    error = refused("status", base64.b64encode(failed).decode(), request, idp_settings)
    assert "user locked" in error.message


# --- connection settings (enginex/sso/saml_signin.py) ---------------------------------------


def test_connection_settings_from_uploaded_metadata_or_by_hand(idp, keys):
    from enginex.kit.errors import ValidationFailed
    from enginex.sso.saml_signin import check_saml_settings

    uploaded = check_saml_settings({"metadata_xml": idp.metadata_xml().decode()})
    assert uploaded["idp_entity_id"] == IDP_ENTITY_ID
    assert uploaded["sso_url"] == IDP_SSO_URL
    assert uploaded["certificates"] == [keys["idp"].cert_pem]
    by_hand = check_saml_settings({"idp_entity_id": IDP_ENTITY_ID, "sso_url": IDP_SSO_URL,
                                   "certificates": [keys["idp"].cert_pem,
                                                    keys["rollover"].cert_pem],
                                   "email_attribute": "mail"})
    assert len(by_hand["certificates"]) == 2 and by_hand["email_attribute"] == "mail"
    for bad, field in (({"metadata_xml": "<nope/>"}, "metadata_xml"),
                       ({"idp_entity_id": IDP_ENTITY_ID, "sso_url": IDP_SSO_URL,
                         "certificates": ["not a certificate"]}, "certificates"),
                       ({"idp_entity_id": IDP_ENTITY_ID, "sso_url": "javascript:alert(1)",
                         "certificates": [keys["idp"].cert_pem]}, "sso_url"),
                       ({"sso_url": IDP_SSO_URL, "certificates": [keys["idp"].cert_pem]},
                        "idp_entity_id")):
        with pytest.raises(ValidationFailed) as caught:
            check_saml_settings(bad)
        assert caught.value.details["field"] == field

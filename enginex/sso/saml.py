"""SAML 2.0 service provider: the protocol layer (no database, no HTTP routes).

What it does, for one organization's SAML connection:

- builds the SP-initiated ``AuthnRequest`` for the HTTP-Redirect binding
  (``build_authn_request``) and the SP metadata document (``sp_metadata_xml``);
- reads IdP metadata (``parse_idp_metadata``; ``fetch_idp_metadata`` downloads it through the
  egress guard with a size and time limit);
- validates the ``SAMLResponse`` posted to the ACS (``validate_response``) and returns only
  what the signed element says.

Signatures are checked by minisignxml (lxml + cryptography; docs/SSO_SAML.md says why): one
enveloped signature, exclusive canonicalization, RSA-SHA256, an ``ID`` that occurs exactly
once, and no other transform (so no XSLT or XPath transform is ever run). The signed element is
re-parsed from its canonical bytes and everything after the signature check reads that copy
only, never the document it came in.

Structure checks done before the signature check refuse signature-wrapping layouts outright:
exactly one ``Assertion`` in the whole document, a direct child of the ``Response``; the
signature verified is the assertion's own (when it has one) or the response's; and the element
the signature covers must be that assertion or that response, by ``ID``.

Every refusal raises ``SamlRejected`` (a 400 with a message saying what was wrong and what the
IdP administrator can change). Storage of request ids and of seen assertion ids (replay cache)
belongs to the caller: ``validate_response`` takes the pending request ids and returns the
assertion id and the time until which it must be remembered.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from lxml import etree
from minisignxml.config import VerifyConfig
from minisignxml.errors import CertificateMismatch, MiniSignXMLError
from minisignxml.verify import extract_verified_element_and_certificate

from enginex.kit.errors import BadRequest
from enginex.tools.egress import EgressRefused

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
}
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
CM_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"

DEFAULT_CLOCK_SKEW = timedelta(minutes=2)
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024
DEFAULT_MAX_METADATA_BYTES = 1024 * 1024
METADATA_FETCH_TIMEOUT_SECONDS = 10.0
# How long an AuthnRequest id stays acceptable as InResponseTo.
REQUEST_LIFETIME = timedelta(minutes=10)
MAX_ID_CHARS = 256
MAX_NAME_ID_CHARS = 512
MAX_ATTRIBUTE_VALUE_CHARS = 4096


class SamlRejected(BadRequest):
    """400: a SAML message was refused; the message says what was wrong."""

    code = "saml_rejected"


def _reject(message: str, reason: str) -> SamlRejected:
    return SamlRejected(message, details={"reason": reason})


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceProvider:
    """This SP as one connection sees it: the values the IdP administrator pastes."""

    entity_id: str
    acs_url: str


@dataclass(frozen=True)
class IdentityProvider:
    """A connection's IdP: its entity id (the assertions' ``Issuer``), the URL of its
    single sign-on service (HTTP-Redirect binding) and the certificates allowed to sign
    (several during a rollover)."""

    entity_id: str
    sso_url: str
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class ValidationPolicy:
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


@dataclass(frozen=True)
class AuthnRequest:
    """An SP-initiated request: send the browser to ``redirect_url``; keep ``request_id``
    until ``expires_at`` to match the response's ``InResponseTo``."""

    request_id: str
    redirect_url: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class SamlAssertion:
    """What a valid response says, read from the signed element only."""

    issuer: str
    name_id: str
    name_id_format: str
    assertion_id: str
    in_response_to: str
    # Remember ``assertion_id`` in the replay cache until then.
    replay_expires_at: datetime
    session_index: str | None
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def attribute(self, name: str) -> tuple[str, ...]:
        return self.attributes.get(name, ())


# --- XML parsing ----------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    # No DTD loading, no entity substitution, no network, no huge trees; comments are kept so
    # that a comment inside a NameID is seen and refused rather than silently dropped.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_pis=False,
                           collect_ids=False)


def parse_xml(data: bytes, *, what: str, max_bytes: int) -> etree._Element:
    """Parse untrusted XML: refuses documents over ``max_bytes``, with a DOCTYPE (so no
    entity definitions, internal or external), or with processing instructions.
    Raises SamlRejected."""
    if len(data) > max_bytes:
        raise _reject(f"The {what} is {len(data)} bytes; at most {max_bytes} are accepted.",
                      "too_large")
    if b"<!doctype" in data[:4096].lower():
        raise _reject(f"The {what} has a DOCTYPE declaration; SAML messages never need one, "
                      "so it is refused (no entities are expanded).", "doctype")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise _reject(f"The {what} is not well-formed XML ({exc.msg}).", "malformed_xml") \
            from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _reject(f"The {what} has a DOCTYPE declaration; SAML messages never need one, "
                      "so it is refused (no entities are expanded).", "doctype")
    for node in root.iter(etree.PI, etree.Entity):
        raise _reject(f"The {what} contains a processing instruction or entity reference "
                      f"({node!r}); refused.", "doctype")
    return root


def _text_only(element: etree._Element, *, what: str, max_chars: int) -> str:
    """The text of an element that must hold text only. A comment or child element inside
    (the comment-injection trick that truncates a NameID in some parsers) is refused."""
    if len(element):
        raise _reject(f"The {what} contains markup (a comment or an element) where only text "
                      "is allowed; refused.", "markup_in_text")
    text = (element.text or "").strip()
    if not text:
        raise _reject(f"The {what} is empty.", "empty_value")
    if len(text) > max_chars:
        raise _reject(f"The {what} is longer than {max_chars} characters.", "too_long")
    return text


def _one(parent: etree._Element, path: str, *, what: str) -> etree._Element:
    found = parent.findall(path, NS)
    if len(found) != 1:
        raise _reject(f"The response must contain exactly one {what}; found {len(found)}.",
                      "structure")
    return found[0]


def _utc(value: str | None, *, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _reject(f"{what} is not an xs:dateTime: {value[:40]!r}.", "bad_time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _id_of(element: etree._Element, *, what: str) -> str:
    value = element.get("ID")
    if not value or len(value) > MAX_ID_CHARS:
        raise _reject(f"The {what} has no ID attribute (or one over {MAX_ID_CHARS} "
                      "characters).", "structure")
    return value


# --- certificates ---------------------------------------------------------------------------


def load_certificate(text: str) -> x509.Certificate:
    """A certificate from PEM or from the bare base64 of its DER (as in metadata).
    Only RSA keys are accepted (the signature algorithm allowed is RSA-SHA256).
    Raises SamlRejected."""
    body = text.strip()
    try:
        if body.startswith("-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(body.encode())
        else:
            der = base64.b64decode("".join(body.split()), validate=True)
            certificate = x509.load_der_x509_certificate(der)
    except (ValueError, binascii.Error):
        raise _reject("The IdP certificate is not a PEM or base64 DER X.509 certificate.",
                      "bad_certificate") from None
    if not isinstance(certificate.public_key(), RSAPublicKey):
        raise _reject("The IdP certificate's key is not RSA; only RSA-SHA256 signatures are "
                      "supported.", "bad_certificate")
    return certificate


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


# --- AuthnRequest (HTTP-Redirect binding) ---------------------------------------------------


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_request_id() -> str:
    # An xs:ID must not start with a digit.
    return "_" + secrets.token_hex(20)


def build_authn_request(sp: ServiceProvider, idp: IdentityProvider, *, now: datetime,
                        request_id: str | None = None,
                        relay_state: str | None = None) -> AuthnRequest:
    """An unsigned AuthnRequest for the HTTP-Redirect binding (SAML bindings 3.4.4.1:
    DEFLATE, base64, URL-encode), asking for an HTTP-POST response at ``sp.acs_url``."""
    request_id = request_id or new_request_id()
    request = etree.Element(
        f"{{{NS['samlp']}}}AuthnRequest",
        {"ID": request_id, "Version": "2.0", "IssueInstant": _instant(now),
         "Destination": idp.sso_url, "AssertionConsumerServiceURL": sp.acs_url,
         "ProtocolBinding": BINDING_POST},
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]})
    issuer = etree.SubElement(request, f"{{{NS['saml']}}}Issuer")
    issuer.text = sp.entity_id
    etree.SubElement(request, f"{{{NS['samlp']}}}NameIDPolicy",
                     {"Format": NAMEID_UNSPECIFIED, "AllowCreate": "true"})
    xml = etree.tostring(request)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(xml) + compressor.flush()
    params = {"SAMLRequest": base64.b64encode(deflated).decode()}
    if relay_state:
        params["RelayState"] = relay_state
    parts = urlsplit(idp.sso_url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return AuthnRequest(request_id=request_id, redirect_url=url, issued_at=now,
                        expires_at=now + REQUEST_LIFETIME)


# --- metadata -------------------------------------------------------------------------------


def sp_metadata_xml(sp: ServiceProvider) -> bytes:
    """SP metadata: entity id and the ACS (HTTP-POST). EngineX signs no requests and wants
    signed assertions."""
    md = NS["md"]
    root = etree.Element(f"{{{md}}}EntityDescriptor", {"entityID": sp.entity_id},
                         nsmap={"md": md})
    descriptor = etree.SubElement(root, f"{{{md}}}SPSSODescriptor", {
        "AuthnRequestsSigned": "false", "WantAssertionsSigned": "true",
        "protocolSupportEnumeration": NS["samlp"]})
    name_id = etree.SubElement(descriptor, f"{{{md}}}NameIDFormat")
    name_id.text = NAMEID_UNSPECIFIED
    etree.SubElement(descriptor, f"{{{md}}}AssertionConsumerService", {
        "Binding": BINDING_POST, "Location": sp.acs_url, "index": "0", "isDefault": "true"})
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def parse_idp_metadata(data: bytes, *, entity_id: str | None = None,
                       max_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> IdentityProvider:
    """The IdP settings from its metadata XML: the ``EntityDescriptor`` (the one named
    ``entity_id`` when the document is an ``EntitiesDescriptor``), its ``IDPSSODescriptor``'s
    HTTP-Redirect ``SingleSignOnService`` and its signing certificates (``KeyDescriptor``
    with ``use="signing"`` or no ``use``). Metadata signatures are not checked: whoever
    uploads or names the metadata is the org admin configuring trust. Raises SamlRejected."""
    root = parse_xml(data, what="IdP metadata", max_bytes=max_bytes)
    tag = f"{{{NS['md']}}}EntityDescriptor"
    if root.tag == tag:
        candidates = [root]
    elif root.tag == f"{{{NS['md']}}}EntitiesDescriptor":
        candidates = list(root.iter(tag))
    else:
        raise _reject("This is not SAML metadata (no md:EntityDescriptor).", "bad_metadata")
    with_idp = [c for c in candidates if c.find("md:IDPSSODescriptor", NS) is not None]
    if entity_id:
        with_idp = [c for c in with_idp if c.get("entityID") == entity_id]
    if len(with_idp) != 1:
        raise _reject("The metadata must describe exactly one identity provider "
                      f"(IDPSSODescriptor){' named ' + entity_id if entity_id else ''}; "
                      f"found {len(with_idp)}.", "bad_metadata")
    entity = with_idp[0]
    descriptor = entity.find("md:IDPSSODescriptor", NS)
    assert descriptor is not None
    sso_urls = [s.get("Location") for s in descriptor.findall("md:SingleSignOnService", NS)
                if s.get("Binding") == BINDING_REDIRECT and s.get("Location")]
    if not sso_urls:
        raise _reject("The IdP metadata has no SingleSignOnService with the HTTP-Redirect "
                      "binding; EngineX sends requests that way.", "bad_metadata")
    certificates: list[x509.Certificate] = []
    for key in descriptor.findall("md:KeyDescriptor", NS):
        if key.get("use") not in (None, "signing"):
            continue
        for cert in key.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS):
            certificates.append(load_certificate(cert.text or ""))
    if not certificates:
        raise _reject("The IdP metadata has no signing certificate (KeyDescriptor).",
                      "bad_metadata")
    return IdentityProvider(entity_id=_text_only_attr(entity, "entityID"),
                            sso_url=str(sso_urls[0]),
                            certificates=tuple(dict.fromkeys(certificates)))


def _text_only_attr(element: etree._Element, name: str) -> str:
    value = (element.get(name) or "").strip()
    if not value:
        raise _reject(f"The metadata's {element.tag} has no {name}.", "bad_metadata")
    return value


async def fetch_idp_metadata(url: str, *, transport: httpx.AsyncBaseTransport,
                             max_bytes: int = DEFAULT_MAX_METADATA_BYTES,
                             timeout_seconds: float = METADATA_FETCH_TIMEOUT_SECONDS) -> bytes:
    """Download IdP metadata: GET without redirects or cookies, at most ``max_bytes`` read,
    ``timeout_seconds``. Pass ``enginex.tools.egress.guarded_transport(...)`` so private
    addresses are refused like every other outbound request. Raises SamlRejected."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise _reject("The metadata URL must start with https:// (or http://).",
                      "bad_metadata_url")
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout_seconds,
                                     follow_redirects=False) as client, \
                client.stream("GET", url, headers={"Accept": "application/xml"}) as response:
            if response.status_code != 200:
                raise _reject(f"Fetching the metadata answered HTTP {response.status_code}; "
                              "check the URL.", "metadata_fetch")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _reject(f"The metadata at that URL is over {max_bytes} bytes.",
                                  "too_large")
                chunks.append(chunk)
    except EgressRefused as exc:
        raise _reject(f"The metadata URL is refused: {exc}.", "metadata_fetch") from None
    except httpx.HTTPError as exc:
        raise _reject(f"The metadata could not be fetched: {exc}.", "metadata_fetch") from None
    return b"".join(chunks)


# --- Response validation --------------------------------------------------------------------


def decode_post_binding(saml_response: str, *, max_bytes: int) -> bytes:
    """The XML of an HTTP-POST ``SAMLResponse`` form field (base64). Raises SamlRejected."""
    if len(saml_response) > (max_bytes * 4) // 3 + 8:
        raise _reject(f"The SAMLResponse is larger than {max_bytes} bytes.", "too_large")
    try:
        return base64.b64decode("".join(saml_response.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _reject("The SAMLResponse field is not base64.", "malformed") from None


def _verified_element(root: etree._Element, assertion: etree._Element,
                      idp: IdentityProvider) -> etree._Element:
    """Check the signature that must cover the assertion and return the re-parsed element
    it covers: the assertion (when it carries its own signature) or the whole response."""
    if assertion.find("ds:Signature", NS) is not None:
        # The assertion alone is verified (exclusive c14n makes it self-contained); any
        # response signature around it is not needed.
        signed_bytes = etree.tostring(assertion)
        expected_tag, expected_id = assertion.tag, _id_of(assertion, what="Assertion")
    elif root.find("ds:Signature", NS) is not None:
        signed_bytes = etree.tostring(root)
        expected_tag, expected_id = root.tag, _id_of(root, what="Response")
    else:
        raise _reject("Neither the response nor its assertion is signed; configure the IdP "
                      "to sign the assertion (or the response).", "unsigned")
    try:
        element, _certificate = extract_verified_element_and_certificate(
            xml=signed_bytes, certificates=set(idp.certificates), config=VerifyConfig.default())
    except CertificateMismatch:
        raise _reject("The response is signed with a certificate this connection does not "
                      "trust; update the IdP certificate in the connection's settings.",
                      "wrong_certificate") from None
    except (MiniSignXMLError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _reject("The signature is invalid or uses an unsupported form (EngineX accepts "
                      "one enveloped RSA-SHA256 signature with exclusive canonicalization and "
                      f"no other transform): {type(exc).__name__}.", "bad_signature") from None
    if element.tag != expected_tag or element.get("ID") != expected_id:
        raise _reject("The signature does not cover the response's assertion (a wrapped or "
                      "moved element); refused.", "signature_wrapping")
    return element


def validate_response(saml_response: str, *, sp: ServiceProvider, idp: IdentityProvider,
                      pending_request_ids: Collection[str], now: datetime,
                      policy: ValidationPolicy = ValidationPolicy()) -> SamlAssertion:
    """Validate an HTTP-POST ``SAMLResponse`` for this SP and IdP.

    Refused (SamlRejected): oversized or malformed input, DOCTYPE/entities, no or several
    assertions, encrypted assertions, an unsigned assertion, a signature by a certificate not
    in ``idp.certificates``, signature wrapping, a failed status, the wrong issuer, audience,
    recipient or destination, an ``InResponseTo`` not in ``pending_request_ids`` (so
    IdP-initiated responses too), expired or not-yet-valid assertions (``policy.clock_skew``
    either way), markup inside the NameID or attribute values. Replay is the caller's check:
    store ``assertion_id`` until ``replay_expires_at`` and refuse it when already stored.
    """
    skew = policy.clock_skew
    xml = decode_post_binding(saml_response, max_bytes=policy.max_response_bytes)
    root = parse_xml(xml, what="SAML response", max_bytes=policy.max_response_bytes)
    if root.tag != f"{{{NS['samlp']}}}Response":
        raise _reject("This is not a SAML Response (root element "
                      f"{etree.QName(root).localname!r}).", "structure")
    if root.find(".//saml:EncryptedAssertion", NS) is not None:
        raise _reject("Encrypted assertions are not supported; turn off assertion encryption "
                      "in the IdP for this application (the response travels over HTTPS).",
                      "encrypted")
    assertions = root.findall(".//saml:Assertion", NS)
    if not assertions:
        # Unsigned content may only explain a refusal, never grant anything.
        status = root.find("samlp:Status/samlp:StatusCode", NS)
        message = root.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)
        raise _reject("The IdP did not sign you in"
                      f" (status {status.get('Value') if status is not None else 'missing'}"
                      f"{': ' + message[:200] if message else ''}).", "status")
    if len(assertions) != 1 or assertions[0].getparent() is not root:
        raise _reject("The response must contain exactly one assertion, directly inside the "
                      f"Response; found {len(assertions)} (a signature-wrapping layout is "
                      "refused).", "signature_wrapping")
    signed = _verified_element(root, assertions[0], idp)

    if signed.tag == root.tag:
        _check_response(signed, sp=sp, pending_request_ids=pending_request_ids)
        assertion = _one(signed, "saml:Assertion", what="Assertion")
    else:
        assertion = signed
    return _check_assertion(assertion, sp=sp, idp=idp, pending_request_ids=pending_request_ids,
                            now=now, skew=skew)


def _check_response(response: etree._Element, *, sp: ServiceProvider,
                    pending_request_ids: Collection[str]) -> None:
    """Checks of a signed Response element (its Destination is required when signed)."""
    if response.get("Version") != "2.0":
        raise _reject("The response is not SAML 2.0.", "version")
    destination = response.get("Destination")
    if destination != sp.acs_url:
        raise _reject(f"The response's Destination is {destination!r}, not this connection's "
                      f"ACS URL {sp.acs_url!r}; set the ACS URL in the IdP.", "destination")
    status = _one(response, "samlp:Status/samlp:StatusCode", what="StatusCode")
    if status.get("Value") != STATUS_SUCCESS:
        raise _reject(f"The IdP answered with status {status.get('Value')!r}.", "status")
    in_response_to = response.get("InResponseTo")
    if in_response_to is not None and in_response_to not in pending_request_ids:
        raise _reject("The response answers a sign-in request EngineX did not send (or one "
                      "that expired or was already used); start the sign-in again.",
                      "in_response_to")


def _check_assertion(assertion: etree._Element, *, sp: ServiceProvider,
                     idp: IdentityProvider, pending_request_ids: Collection[str],
                     now: datetime, skew: timedelta) -> SamlAssertion:
    if assertion.get("Version") != "2.0":
        raise _reject("The assertion is not SAML 2.0.", "version")
    assertion_id = _id_of(assertion, what="Assertion")
    issuer_element = _one(assertion, "saml:Issuer", what="assertion Issuer")
    if issuer_element.get("Format") not in (None, NAMEID_ENTITY):
        raise _reject("The assertion's Issuer has a Format other than entity.", "issuer")
    issuer = _text_only(issuer_element, what="assertion Issuer", max_chars=1024)
    if issuer != idp.entity_id:
        raise _reject(f"The assertion was issued by {issuer!r}, not by this connection's IdP "
                      f"{idp.entity_id!r}.", "issuer")

    subject = _one(assertion, "saml:Subject", what="Subject")
    name_id_element = _one(subject, "saml:NameID", what="NameID")
    name_id = _text_only(name_id_element, what="NameID", max_chars=MAX_NAME_ID_CHARS)
    name_id_format = name_id_element.get("Format") or NAMEID_UNSPECIFIED

    in_response_to, confirmation_expiry = _check_bearer(
        subject, sp=sp, pending_request_ids=pending_request_ids, now=now, skew=skew)

    conditions = _one(assertion, "saml:Conditions", what="Conditions")
    not_before = _utc(conditions.get("NotBefore"), what="Conditions NotBefore")
    not_on_or_after = _utc(conditions.get("NotOnOrAfter"), what="Conditions NotOnOrAfter")
    if not_before is not None and now + skew < not_before:
        raise _reject("The assertion is not valid yet (NotBefore is in the future beyond the "
                      "allowed clock skew); check the clocks of the IdP and EngineX.",
                      "not_yet_valid")
    if not_on_or_after is not None and now - skew >= not_on_or_after:
        raise _reject("The assertion has expired; sign in again.", "expired")
    restrictions = conditions.findall("saml:AudienceRestriction", NS)
    if not restrictions:
        raise _reject("The assertion has no AudienceRestriction; EngineX requires one naming "
                      f"its entity id {sp.entity_id!r}.", "audience")
    for restriction in restrictions:
        audiences = [(a.text or "").strip() for a in restriction.findall("saml:Audience", NS)]
        if sp.entity_id not in audiences:
            raise _reject(f"The assertion is meant for {audiences!r}, not for this "
                          f"connection's entity id {sp.entity_id!r}; set the audience (SP "
                          "entity id) in the IdP.", "audience")

    statements = assertion.findall("saml:AuthnStatement", NS)
    if not statements:
        raise _reject("The assertion has no AuthnStatement.", "structure")
    session_index = statements[0].get("SessionIndex")

    attributes: dict[str, tuple[str, ...]] = {}
    for attribute in assertion.findall("saml:AttributeStatement/saml:Attribute", NS):
        name = attribute.get("Name")
        if not name:
            continue
        values = tuple(
            _text_only(v, what=f"value of attribute {name!r}",
                       max_chars=MAX_ATTRIBUTE_VALUE_CHARS)
            for v in attribute.findall("saml:AttributeValue", NS) if (v.text or len(v)))
        attributes[name] = attributes.get(name, ()) + values

    expiries = [t for t in (not_on_or_after, confirmation_expiry) if t is not None]
    replay_expires_at = min(expiries) + skew
    return SamlAssertion(issuer=issuer, name_id=name_id, name_id_format=name_id_format,
                         assertion_id=assertion_id, in_response_to=in_response_to,
                         replay_expires_at=replay_expires_at, session_index=session_index,
                         attributes=attributes)


def _check_bearer(subject: etree._Element, *, sp: ServiceProvider,
                  pending_request_ids: Collection[str], now: datetime,
                  skew: timedelta) -> tuple[str, datetime]:
    """The bearer SubjectConfirmation (SAML profiles 4.1.4.2): Recipient is the ACS URL,
    NotOnOrAfter in the future, InResponseTo one of our pending requests."""
    confirmations = [c for c in subject.findall("saml:SubjectConfirmation", NS)
                     if c.get("Method") == CM_BEARER]
    if not confirmations:
        raise _reject("The assertion has no bearer SubjectConfirmation.", "subject_confirmation")
    problems: list[SamlRejected] = []
    for confirmation in confirmations:
        data = confirmation.find("saml:SubjectConfirmationData", NS)
        if data is None:
            problems.append(_reject("A bearer SubjectConfirmation has no data.",
                                    "subject_confirmation"))
            continue
        recipient = data.get("Recipient")
        expiry = _utc(data.get("NotOnOrAfter"), what="SubjectConfirmationData NotOnOrAfter")
        in_response_to = data.get("InResponseTo")
        if recipient != sp.acs_url:
            problems.append(_reject(
                f"The assertion's Recipient is {recipient!r}, not this connection's ACS URL "
                f"{sp.acs_url!r}; set the ACS URL in the IdP.", "recipient"))
        elif expiry is None:
            problems.append(_reject("The bearer confirmation has no NotOnOrAfter.",
                                    "subject_confirmation"))
        elif now - skew >= expiry:
            problems.append(_reject("The assertion has expired; sign in again.", "expired"))
        elif not in_response_to or in_response_to not in pending_request_ids:
            problems.append(_reject(
                "The response answers a sign-in request EngineX did not send (or one that "
                "expired or was already used); start the sign-in from EngineX again.",
                "in_response_to"))
        else:
            return in_response_to, expiry
    raise problems[0]


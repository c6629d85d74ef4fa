"""A real test SAML IdP: generated keys and self-signed certs, Responses signed with signxml and encrypted
with xmlsec driven directly (never with broker.samlxml, the code under test).

API for any test (unit or end to end)::

    idp = make_idp("https://idp.example.test/okta")          # cached per (entity_id, key_type)
    xml = build_response(idp, acs_url=ACS, audience=SP, in_response_to="id-123", style="okta")
    form_value = to_post_binding(xml)                          # base64 for the SAMLResponse field
    sp_key_pem, sp_cert_pem = make_sp_encryption_keypair()  # then encrypt_to_cert_pem=sp_cert_pem

Styles: ``okta`` (Response + Assertion signed, saml2p/saml2 prefixes, email/firstName/lastName/groups),
``entra`` (Assertion only signed, default namespace, claim-URI attributes), ``ping`` (Assertion only
signed, no Destination on the unsigned Response, memberOf joined with commas), ``generic``.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner, methods

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
PERSISTENT_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
TRANSIENT_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"

Style = Literal["okta", "entra", "ping", "generic"]
_DEFAULT = object()

_PREFIXES: dict[str, tuple[str | None, str | None]] = {  # style -> (protocol prefix, assertion prefix)
    "okta": ("saml2p", "saml2"),
    "entra": ("samlp", None),
    "ping": ("samlp", "saml"),
    "generic": ("samlp", "saml"),
}


@dataclass(frozen=True)
class Idp:
    """A test IdP: entity ID, private key (PEM) and its self-signed certificate (PEM)."""

    entity_id: str
    key_pem: bytes
    cert_pem: str
    key_type: str = "rsa"


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@lru_cache(maxsize=64)
def make_idp(entity_id: str = "https://idp.example.test/saml", key_type: str = "rsa") -> Idp:
    """A new IdP key pair + self-signed cert (cached: the same arguments give the same IdP)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Idp(
        entity_id=entity_id, key_pem=key_pem, cert_pem=_self_signed(key, "test idp"), key_type=key_type
    )


@lru_cache(maxsize=8)
def make_sp_encryption_keypair(label: str = "sp") -> tuple[bytes, str]:
    """(private key PEM, certificate PEM) of an SP encryption key (cached per label)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, _self_signed(key, f"test {label} encryption")


def to_post_binding(xml: bytes) -> str:
    """The SAMLResponse form value of the HTTP-POST binding."""
    return base64.b64encode(xml).decode("ascii")


def instant(epoch: float) -> str:
    """xs:dateTime in UTC with milliseconds, as most IdPs send it."""
    t = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def default_attributes(style: Style, email: str) -> dict[str, list[str]]:
    local = email.split("@")[0]
    if style == "entra":
        return {
            CLAIMS + "emailaddress": [email],
            CLAIMS + "givenname": ["Alice"],
            CLAIMS + "surname": ["Example"],
            CLAIMS + "name": [email],
            "http://schemas.microsoft.com/identity/claims/objectidentifier": [
                str(uuid.uuid5(uuid.NAMESPACE_DNS, email))
            ],
            "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": ["g-admins", "g-users"],
        }
    if style == "ping":
        return {"email": [email], "givenName": ["Alice"], "sn": ["Example"], "memberOf": ["Admins,Users"]}
    return {
        "email": [email],
        "firstName": ["Alice"],
        "lastName": [local.title()],
        "groups": ["Admins", "Everyone"],
    }


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def build_response(
    idp: Idp,
    *,
    acs_url: str,
    audience: str,
    in_response_to: str | None,
    name_id: str | None = "alice@example.com",
    name_id_format: str | None = EMAIL_FORMAT,
    attributes: Mapping[str, Sequence[str]] | None = None,
    style: Style = "okta",
    sign_response: bool | None = None,
    sign_assertion: bool = True,
    encrypt_to_cert_pem: str | None = None,
    data_encryption: str = "aes256-gcm",
    key_transport: str = "rsa-oaep-mgf1p",
    detached_encrypted_key: bool = False,
    issue_instant: float | None = None,
    not_before_offset: float = -300.0,
    not_on_or_after_offset: float = 300.0,
    subject_not_on_or_after_offset: float | None = None,
    destination: str | None | object = _DEFAULT,
    recipient: str | None = None,
    issuer: str | None = None,
    response_issuer: str | None | object = _DEFAULT,
    response_id: str | None = None,
    assertion_id: str | None = None,
    session_index: str | None = "_session-1",
    status_code: str = STATUS_SUCCESS,
    second_status_code: str | None = None,
    signature_algorithm: str = "rsa-sha256",
    digest_algorithm: str = "sha256",
    signer: Idp | None = None,
    subject_in_response_to: str | None | object = _DEFAULT,
    confirmation_method: str = "urn:oasis:names:tc:SAML:2.0:cm:bearer",
    authn_instant: float | None = None,
    authn_statement: bool = True,
    session_not_on_or_after: float | None = None,
) -> bytes:
    """A SAML 2.0 Response as bytes, signed/encrypted as asked.

    Defaults: `issue_instant` now, Conditions [now-300s, now+300s), SubjectConfirmationData NotOnOrAfter =
    now + `subject_not_on_or_after_offset` (default: same as Conditions), Destination = Recipient = acs_url
    (``style="ping"``: no Destination), `sign_response` True for okta/generic, False for entra/ping.
    `destination=None` omits Destination. `signer` signs with another key (its cert in KeyInfo), for attacks.
    `authn_instant` (default: a second before now) is when the IdP says the user signed in;
    `authn_statement=False` leaves the AuthnStatement out (as Keycloak may).
    `signature_algorithm`: rsa-sha256/384/512, ecdsa-sha256 (EC IdP), rsa-sha1 (signed with xmlsec, since
    signxml refuses SHA-1). `data_encryption`: aes128/192/256-gcm|-cbc, tripledes-cbc; `key_transport`:
    rsa-oaep-mgf1p, rsa-1_5. `detached_encrypted_key`: Okta layout (EncryptedKey next to EncryptedData,
    referenced by ds:RetrievalMethod).
    """
    now = time.time() if issue_instant is None else issue_instant
    if sign_response is None:
        sign_response = style in ("okta", "generic")
    if destination is _DEFAULT:
        destination = None if style == "ping" else acs_url
    if attributes is None:
        attributes = default_attributes(style, name_id or "alice@example.com")
    issuer = issuer or idp.entity_id
    response_id = response_id or f"_r{uuid.uuid4().hex}"
    assertion_id = assertion_id or f"_a{uuid.uuid4().hex}"
    sub_noa = (
        not_on_or_after_offset if subject_not_on_or_after_offset is None else subject_not_on_or_after_offset
    )
    pp, ap = _PREFIXES[style]

    resp = etree.Element(_q(SAMLP, "Response"), nsmap={pp: SAMLP, ap: SAML})
    resp.set("ID", response_id)
    resp.set("Version", "2.0")
    resp.set("IssueInstant", instant(now))
    if destination is not None:
        resp.set("Destination", str(destination))
    if in_response_to is not None:
        resp.set("InResponseTo", in_response_to)
    r_issuer = issuer if response_issuer is _DEFAULT else response_issuer
    if r_issuer is not None:
        el = etree.SubElement(resp, _q(SAML, "Issuer"))
        el.text = str(r_issuer)
        if style == "okta":
            el.set("Format", "urn:oasis:names:tc:SAML:2.0:nameid-format:entity")
    if sign_response:
        etree.SubElement(resp, _q(DS, "Signature"), nsmap={"ds": DS}).set("Id", "placeholder")
    status = etree.SubElement(resp, _q(SAMLP, "Status"))
    code = etree.SubElement(status, _q(SAMLP, "StatusCode"))
    code.set("Value", status_code)
    if second_status_code:
        etree.SubElement(code, _q(SAMLP, "StatusCode")).set("Value", second_status_code)

    a = etree.Element(_q(SAML, "Assertion"), nsmap={ap: SAML})
    a.set("ID", assertion_id)
    a.set("Version", "2.0")
    a.set("IssueInstant", instant(now))
    etree.SubElement(a, _q(SAML, "Issuer")).text = issuer
    if sign_assertion:
        etree.SubElement(a, _q(DS, "Signature"), nsmap={"ds": DS}).set("Id", "placeholder")
    subject = etree.SubElement(a, _q(SAML, "Subject"))
    if name_id is not None:
        nid = etree.SubElement(subject, _q(SAML, "NameID"))
        nid.text = name_id
        if name_id_format:
            nid.set("Format", name_id_format)
    sc = etree.SubElement(subject, _q(SAML, "SubjectConfirmation"))
    sc.set("Method", confirmation_method)
    scd = etree.SubElement(sc, _q(SAML, "SubjectConfirmationData"))
    scd_irt = in_response_to if subject_in_response_to is _DEFAULT else subject_in_response_to
    if scd_irt is not None:
        scd.set("InResponseTo", str(scd_irt))
    scd.set("NotOnOrAfter", instant(now + sub_noa))
    scd.set("Recipient", recipient or acs_url)
    cond = etree.SubElement(a, _q(SAML, "Conditions"))
    cond.set("NotBefore", instant(now + not_before_offset))
    cond.set("NotOnOrAfter", instant(now + not_on_or_after_offset))
    etree.SubElement(
        etree.SubElement(cond, _q(SAML, "AudienceRestriction")), _q(SAML, "Audience")
    ).text = audience
    if authn_statement:
        authn = etree.SubElement(a, _q(SAML, "AuthnStatement"))
        authn.set("AuthnInstant", instant(now - 1 if authn_instant is None else authn_instant))
        if session_index:
            authn.set("SessionIndex", session_index)
        if session_not_on_or_after is not None:
            authn.set("SessionNotOnOrAfter", instant(session_not_on_or_after))
        ctx = etree.SubElement(authn, _q(SAML, "AuthnContext"))
        etree.SubElement(
            ctx, _q(SAML, "AuthnContextClassRef")
        ).text = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    if attributes:
        stmt = etree.SubElement(a, _q(SAML, "AttributeStatement"))
        for name, values in attributes.items():
            attr = etree.SubElement(stmt, _q(SAML, "Attribute"))
            attr.set("Name", name)
            if style in ("okta", "ping"):
                attr.set("NameFormat", "urn:oasis:names:tc:SAML:2.0:attrname-format:unspecified")
            for v in values:
                etree.SubElement(attr, _q(SAML, "AttributeValue")).text = v

    key_signer = signer or idp
    if sign_assertion:
        a = sign_element(
            a, key_signer, signature_algorithm=signature_algorithm, digest_algorithm=digest_algorithm
        )
    if encrypt_to_cert_pem is not None:
        slot = encrypt_assertion(
            a,
            encrypt_to_cert_pem,
            data_encryption=data_encryption,
            key_transport=key_transport,
            detached=detached_encrypted_key,
        )
    else:
        slot = a
    resp.append(slot)
    if sign_response:
        resp = sign_element(
            resp, key_signer, signature_algorithm=signature_algorithm, digest_algorithm=digest_algorithm
        )
    return etree.tostring(resp, xml_declaration=True, encoding="UTF-8")


def sign_element(
    element: etree._Element,
    idp: Idp,
    *,
    signature_algorithm: str = "rsa-sha256",
    digest_algorithm: str = "sha256",
) -> etree._Element:
    """Enveloped exc-c14n signature over `element` (Reference "#ID"), at its ds:Signature placeholder."""
    if "sha1" in (signature_algorithm + digest_algorithm):
        return _sign_with_xmlsec(element, idp, signature_algorithm, digest_algorithm)
    signer = XMLSigner(
        method=methods.enveloped,
        signature_algorithm=signature_algorithm,
        digest_algorithm=digest_algorithm,
        c14n_algorithm=EXC_C14N,
    )
    signed: etree._Element = signer.sign(
        element,
        key=idp.key_pem,
        cert=idp.cert_pem,
        reference_uri="#" + element.get("ID", ""),
        id_attribute="ID",
    )
    return signed


def _sign_with_xmlsec(element: etree._Element, idp: Idp, sig_alg: str, digest_alg: str) -> etree._Element:
    placeholder = element.find(_q(DS, "Signature"))
    transform = {
        "rsa-sha1": xmlsec.constants.TransformRsaSha1,
        "rsa-sha256": xmlsec.constants.TransformRsaSha256,
    }[sig_alg]
    digest = {"sha1": xmlsec.constants.TransformSha1, "sha256": xmlsec.constants.TransformSha256}[digest_alg]
    tmpl = xmlsec.template.create(element, xmlsec.constants.TransformExclC14N, transform, ns="ds")
    if placeholder is not None:
        placeholder.addprevious(tmpl)
        element.remove(placeholder)
    else:
        element.append(tmpl)
    ref = xmlsec.template.add_reference(tmpl, digest, uri="#" + element.get("ID", ""))
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    ki = xmlsec.template.ensure_key_info(tmpl)
    xmlsec.template.add_x509_data(ki)
    ctx = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(idp.key_pem, xmlsec.constants.KeyDataFormatPem, None)
    key.load_cert_from_memory(idp.cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem)
    ctx.key = key
    ctx.register_id(element, "ID")
    ctx.sign(tmpl)
    return element


_DATA_ALGS = {
    "aes128-gcm": (xmlsec.constants.TransformAes128Gcm, xmlsec.constants.KeyDataAes, 128),
    "aes192-gcm": (xmlsec.constants.TransformAes192Gcm, xmlsec.constants.KeyDataAes, 192),
    "aes256-gcm": (xmlsec.constants.TransformAes256Gcm, xmlsec.constants.KeyDataAes, 256),
    "aes128-cbc": (xmlsec.constants.TransformAes128Cbc, xmlsec.constants.KeyDataAes, 128),
    "aes192-cbc": (xmlsec.constants.TransformAes192Cbc, xmlsec.constants.KeyDataAes, 192),
    "aes256-cbc": (xmlsec.constants.TransformAes256Cbc, xmlsec.constants.KeyDataAes, 256),
    "tripledes-cbc": (xmlsec.constants.TransformDes3Cbc, xmlsec.constants.KeyDataDes, 192),
}
_KEY_ALGS = {
    "rsa-oaep-mgf1p": xmlsec.constants.TransformRsaOaep,
    "rsa-1_5": xmlsec.constants.TransformRsaPkcs1,
}


def encrypt_assertion(
    assertion: etree._Element,
    sp_cert_pem: str,
    *,
    data_encryption: str = "aes256-gcm",
    key_transport: str = "rsa-oaep-mgf1p",
    detached: bool = False,
) -> etree._Element:
    """saml:EncryptedAssertion holding `assertion` encrypted to `sp_cert_pem` (xmlsec, session AES key)."""
    slot = etree.Element(_q(SAML, "EncryptedAssertion"), nsmap={"saml": SAML})
    plaintext = etree.tostring(assertion)  # standalone: carries its own namespace declarations
    transform, key_data, bits = _DATA_ALGS[data_encryption]
    enc_data = xmlsec.template.encrypted_data_create(
        slot, transform, type=xmlsec.constants.TypeEncElement, ns="xenc"
    )
    xmlsec.template.encrypted_data_ensure_cipher_value(enc_data)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(enc_data, ns="ds")
    enc_key = xmlsec.template.add_encrypted_key(key_info, _KEY_ALGS[key_transport])
    xmlsec.template.encrypted_data_ensure_cipher_value(enc_key)
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_memory(sp_cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem, None))
    ctx = xmlsec.EncryptionContext(manager)
    ctx.key = xmlsec.Key.generate(key_data, bits, xmlsec.constants.KeyDataTypeSession)
    enc_data = ctx.encrypt_binary(enc_data, plaintext)
    slot.append(enc_data)
    if detached:
        ki = next(c for c in enc_data if c.tag == _q(DS, "KeyInfo"))
        ek = next(c for c in ki if c.tag == _q(XENC, "EncryptedKey"))
        ki.remove(ek)
        ek_id = f"_ek{uuid.uuid4().hex}"
        ek.set("Id", ek_id)
        rm = etree.SubElement(ki, _q(DS, "RetrievalMethod"))
        rm.set("URI", "#" + ek_id)
        rm.set("Type", "http://www.w3.org/2001/04/xmlenc#EncryptedKey")
        slot.append(ek)
    return slot

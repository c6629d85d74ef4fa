"""The development IdP's SAML 2.0 side: its metadata, AuthnRequest intake, and signed Responses.

Input is parsed with the broker's hardened parser (broker.samlxml.parser.parse_xml: no DTD, no entities,
no network, size and depth caps); a DEFLATE-compressed request is inflated with a size cap. The request's
ID, ACS URL and Issuer are honoured only when they name a SAML connection of this broker: the ACS URL must
be `{PUBLIC}/t/{tenant}/connections/{conn}/saml/acs` of an existing SAML connection, and the Issuer that
connection's SP entityID. Responses and their assertions are signed with python-xmlsec directly
(RSA-SHA256, SHA-256 digests, exclusive c14n), the assertion first, then the Response around it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import html
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import xmlsec
from lxml import etree

from broker.devidp.keys import DevIdpKeys
from broker.devidp.users import DevUser
from broker.errors import ValidationFailed
from broker.ports import ConfigReader
from broker.samlxml.errors import SamlError
from broker.samlxml.parser import parse_xml

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
ATTR_BASIC = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
PASSWORD_PROTECTED = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

MAX_REQUEST_BYTES = 64 * 1024
ASSERTION_LIFETIME = 300  # seconds
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}\Z")


def entity_id(public_url: str) -> str:
    return f"{public_url}/dev/idp/saml/metadata"


def sso_url(public_url: str) -> str:
    return f"{public_url}/dev/idp/saml/sso"


def _cert_body(cert_pem: str) -> str:
    return "".join(line.strip() for line in cert_pem.strip().splitlines() if "-----" not in line)


def metadata_xml(keys: DevIdpKeys, public_url: str) -> bytes:
    """IdP metadata (SAML metadata §2.4.3): entityID, signing certificate, SSO over Redirect and POST."""
    e = html.escape
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" entityID="{e(entity_id(public_url))}">'
        f'<md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="{SAMLP}">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
        f"{_cert_body(keys.saml_cert_pem)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        f"<md:NameIDFormat>{PERSISTENT}</md:NameIDFormat>"
        f'<md:SingleSignOnService Binding="{BINDING_REDIRECT}" Location="{e(sso_url(public_url))}"/>'
        f'<md:SingleSignOnService Binding="{BINDING_POST}" Location="{e(sso_url(public_url))}"/>'
        f"</md:IDPSSODescriptor></md:EntityDescriptor>\n"
    ).encode()


# --- AuthnRequest intake -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthnRequestInfo:
    id: str
    acs_url: str
    issuer: str
    relay_state: str | None


@dataclass(frozen=True, slots=True)
class SpTarget:
    """A SAML connection of this broker that the dev IdP will answer."""

    tenant: str
    connection: str
    acs_url: str
    audience: str  # the connection's SP entityID


def _bad(message: str, detail: str | None = None) -> ValidationFailed:
    return ValidationFailed(message, code="dev_idp_bad_request", detail=detail)


def _inflate(data: bytes) -> bytes:
    """Raw DEFLATE (SAML bindings §3.4.4.1), capped: a small request cannot expand into a huge one."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        raise _bad("The SAMLRequest could not be decompressed.") from None
    if len(out) > MAX_REQUEST_BYTES or d.unconsumed_tail:
        raise _bad("The SAMLRequest is too large.")
    return out


def parse_authn_request(params: Mapping[str, str], *, redirect_binding: bool) -> AuthnRequestInfo:
    """Read an AuthnRequest from the HTTP-Redirect (DEFLATE+base64) or HTTP-POST (base64) binding."""
    raw = params.get("SAMLRequest") or ""
    if not raw or len(raw) > MAX_REQUEST_BYTES * 2:
        raise _bad("The request carries no (or an oversized) SAMLRequest.")
    try:
        data = base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        raise _bad("The SAMLRequest is not base64.") from None
    xml = _inflate(data) if redirect_binding else data
    try:
        root = parse_xml(xml, max_bytes=MAX_REQUEST_BYTES)
    except SamlError as exc:
        raise _bad("The SAMLRequest is not acceptable XML.", exc.detail) from None
    if root.tag != f"{{{SAMLP}}}AuthnRequest":
        raise _bad("The SAMLRequest is not an AuthnRequest.")
    request_id = root.get("ID") or ""
    acs_url = root.get("AssertionConsumerServiceURL") or ""
    binding = root.get("ProtocolBinding")
    issuer_el = root.find(f"{{{SAML}}}Issuer")
    issuer = (issuer_el.text or "").strip() if issuer_el is not None else ""
    if not _ID.match(request_id):
        raise _bad("The AuthnRequest has no usable ID.")
    if not acs_url or not issuer:
        raise _bad("The AuthnRequest must name its AssertionConsumerServiceURL and Issuer.")
    if binding not in (None, BINDING_POST):
        raise _bad("The development IdP answers over the HTTP-POST binding only.")
    relay = params.get("RelayState")
    if relay is not None and len(relay) > 80:  # SAML bindings §3.4.3: at most 80 bytes
        raise _bad("The RelayState is longer than 80 bytes.")
    return AuthnRequestInfo(id=request_id, acs_url=acs_url, issuer=issuer, relay_state=relay)


def trusted_target(info: AuthnRequestInfo, config: ConfigReader, public_url: str) -> SpTarget:
    """The broker connection this request belongs to; refuses any ACS or Issuer that is not one of ours."""
    m = re.fullmatch(re.escape(public_url) + r"/t/([a-z0-9][a-z0-9-]{0,62})/connections/([a-z0-9][a-z0-9-]{0,62})"
                     r"/saml/acs", info.acs_url)
    if m is None:
        raise _bad("The development IdP answers only this broker's SAML connections.",
                   f"ACS {info.acs_url!r} is not a connection ACS under {public_url}")
    tenant = config.tenant_by_slug(m.group(1))
    connection = config.connection(tenant.id, m.group(2)) if tenant is not None else None
    if connection is None or connection.protocol != "saml" or not connection.enabled:
        raise _bad("The development IdP answers only this broker's SAML connections.",
                   f"no enabled SAML connection {m.group(1)}/{m.group(2)}")
    audience = str(connection.settings.get("sp_entity_id") or
                   f"{public_url}/t/{m.group(1)}/connections/{m.group(2)}/saml/metadata")
    if info.issuer != audience:
        raise _bad("The AuthnRequest's Issuer is not the SP entityID of that connection.",
                   f"issuer {info.issuer!r} != {audience!r}")
    return SpTarget(tenant=m.group(1), connection=m.group(2), acs_url=info.acs_url, audience=audience)


# --- Response ----------------------------------------------------------------------------------------------


def _instant(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _sub(parent: etree._Element, ns: str, name: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, _q(ns, name))
    for k, v in attrs.items():
        el.set(k, v)
    if text is not None:
        el.text = text
    return el


def _attributes(user: DevUser) -> dict[str, list[str]]:
    """Okta-style attribute names (the `okta` preset reads them): email, firstName, lastName, displayName,
    groups."""
    out: dict[str, list[str]] = {"email": [user.email], "firstName": [user.given_name],
                                 "displayName": [user.name]}
    if user.family_name:
        out["lastName"] = [user.family_name]
    out["groups"] = list(user.groups)
    return out


def _sign(element: etree._Element, key: xmlsec.Key) -> None:
    """Enveloped signature over `element` (Reference "#ID"), placed right after its Issuer."""
    tmpl = xmlsec.template.create(element, xmlsec.constants.TransformExclC14N,
                                  xmlsec.constants.TransformRsaSha256, ns="ds")
    issuer = element.find(_q(SAML, "Issuer"))
    assert issuer is not None
    issuer.addnext(tmpl)
    ref = xmlsec.template.add_reference(tmpl, xmlsec.constants.TransformSha256, uri="#" + element.get("ID", ""))
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(tmpl))
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    ctx.register_id(element, "ID")
    ctx.sign(tmpl)


def _signing_key(keys: DevIdpKeys) -> xmlsec.Key:
    key = xmlsec.Key.from_memory(keys.saml_key_pem.encode("ascii"), xmlsec.constants.KeyDataFormatPem, None)
    key.load_cert_from_memory(keys.saml_cert_pem.encode("ascii"), xmlsec.constants.KeyDataFormatCertPem)
    return key


def build_response(keys: DevIdpKeys, *, public_url: str, target: SpTarget, in_response_to: str, user: DevUser,
                   now: float) -> bytes:
    """A signed SAML Response with one signed assertion for `user` (SAML core §3.3.3, profiles §4.1.4.2)."""
    issuer = entity_id(public_url)
    response_id = "_r" + secrets.token_hex(20)
    assertion_id = "_a" + secrets.token_hex(20)
    not_after = _instant(now + ASSERTION_LIFETIME)

    resp = etree.Element(_q(SAMLP, "Response"), nsmap={"samlp": SAMLP, "saml": SAML})
    for k, v in (("ID", response_id), ("Version", "2.0"), ("IssueInstant", _instant(now)),
                 ("Destination", target.acs_url), ("InResponseTo", in_response_to)):
        resp.set(k, v)
    _sub(resp, SAML, "Issuer", issuer, Format=ENTITY)
    status = _sub(resp, SAMLP, "Status")
    _sub(status, SAMLP, "StatusCode", Value=STATUS_SUCCESS)

    assertion = _sub(resp, SAML, "Assertion", ID=assertion_id, Version="2.0", IssueInstant=_instant(now))
    _sub(assertion, SAML, "Issuer", issuer, Format=ENTITY)
    subject = _sub(assertion, SAML, "Subject")
    _sub(subject, SAML, "NameID", user.subject, Format=PERSISTENT)
    confirmation = _sub(subject, SAML, "SubjectConfirmation", Method=BEARER)
    _sub(confirmation, SAML, "SubjectConfirmationData", InResponseTo=in_response_to, NotOnOrAfter=not_after,
         Recipient=target.acs_url)
    conditions = _sub(assertion, SAML, "Conditions", NotBefore=_instant(now - 60), NotOnOrAfter=not_after)
    restriction = _sub(conditions, SAML, "AudienceRestriction")
    _sub(restriction, SAML, "Audience", target.audience)
    authn = _sub(assertion, SAML, "AuthnStatement", AuthnInstant=_instant(now),
                 SessionIndex="_s" + secrets.token_hex(12))
    context = _sub(authn, SAML, "AuthnContext")
    _sub(context, SAML, "AuthnContextClassRef", PASSWORD_PROTECTED)
    statement = _sub(assertion, SAML, "AttributeStatement")
    for name, values in _attributes(user).items():
        if not values:
            continue
        attr = _sub(statement, SAML, "Attribute", Name=name, NameFormat=ATTR_BASIC)
        for value in values:
            _sub(attr, SAML, "AttributeValue", value)

    key = _signing_key(keys)
    _sign(assertion, key)  # the assertion first: the Response's signature then covers the signed assertion
    _sign(resp, key)
    out: bytes = etree.tostring(resp, xml_declaration=True, encoding="UTF-8")
    return out

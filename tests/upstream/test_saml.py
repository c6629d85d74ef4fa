"""The SAML connector: settings, SP metadata, AuthnRequests (both bindings, signed or not), complete()."""

from __future__ import annotations

import base64
import time
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from saml2 import md as saml2_md
from saml2 import samlp as saml2_samlp
from signxml import XMLVerifier
from signxml.exceptions import InvalidSignature as XmlInvalidSignature

from broker.errors import LoginError, ValidationFailed
from broker.model import Connection, LoginTransaction, MappingConfig, SpCredentials
from broker.ports import FrozenClock
from broker.samlxml.metadata import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, IdpMetadata, parse_idp_metadata
from broker.store.state import MemoryStateStore
from broker.upstream.base import AutoPost, BeginRequest, CallbackInput, Redirect
from broker.upstream.saml import SamlConnector, SamlSettings, parse_saml_settings
from broker.upstream.saml_keys import generate_sp_credentials
from tests.samlxml.idp_fixtures import (
    Idp,
    build_response,
    make_idp,
    make_sp_encryption_keypair,
    to_post_binding,
)

PUBLIC = "https://broker.example"
ACS = f"{PUBLIC}/t/acme/connections/okta/saml/acs"
SP_METADATA_URL = f"{PUBLIC}/t/acme/connections/okta/saml/metadata"
IDP_ID = "https://idp.example.test/okta"
SSO = "https://idp.example.test/sso"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
NOW = float(int(time.time()))


@pytest.fixture(scope="module")
def sp() -> SpCredentials:
    return generate_sp_credentials("acme okta")


@pytest.fixture()
def idp() -> Idp:
    return make_idp(IDP_ID)


@pytest.fixture()
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture()
def state() -> MemoryStateStore:
    return MemoryStateStore()


def idp_metadata(
    idp: Idp,
    *,
    bindings: tuple[str, ...] = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST),
    want_signed: bool = False,
    sso: str = SSO,
) -> IdpMetadata:
    cert = "".join(ln for ln in idp.cert_pem.splitlines() if not ln.startswith("-----"))
    services = "".join(f'<md:SingleSignOnService Binding="{b}" Location="{sso}"/>' for b in bindings)
    xml = (
        f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" entityID="{idp.entity_id}">'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="{SAMLP}" '
        f'WantAuthnRequestsSigned="{"true" if want_signed else "false"}">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}'
        f"</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>{services}"
        "</md:IDPSSODescriptor></md:EntityDescriptor>"
    )
    return parse_idp_metadata(xml.encode(), now=datetime.fromtimestamp(NOW, UTC))


def connection(sp: SpCredentials | None, **settings: Any) -> Connection:
    when = datetime.fromtimestamp(NOW, UTC)
    return Connection(
        id="conn-okta",
        tenant_id="tenant-acme",
        tenant_slug="acme",
        slug="okta",
        protocol="saml",
        domains=("example.com",),
        restrict_to_domains=False,
        mapping=MappingConfig(preset="okta"),
        settings=settings,
        enabled=True,
        version=1,
        created_at=when,
        updated_at=when,
        sp=sp,
    )


def connector(
    sp: SpCredentials | None,
    idp_meta: IdpMetadata | None,
    state: MemoryStateStore,
    clock: FrozenClock,
    **settings: Any,
) -> SamlConnector:
    return SamlConnector(
        connection(sp, **settings), public_url=PUBLIC, idp=idp_meta, state=state, clock=clock
    )


def txn_for(conn: SamlConnector, request_id: str, txn_id: str = "txn-1") -> LoginTransaction:
    return LoginTransaction(
        id=txn_id,
        tenant_id="tenant-acme",
        tenant_slug="acme",
        connection_id=conn.connection.id,
        connection_slug="okta",
        request=None,
        upstream={"request_id": request_id},
        browser_binding="b",
        created_at=NOW,
        expires_at=NOW + 600,
    )


def post(saml_response: str, relay_state: str | None = "txn-1") -> CallbackInput:
    params = {"SAMLResponse": saml_response}
    if relay_state is not None:
        params["RelayState"] = relay_state
    return CallbackInput(method="POST", params=params, url=ACS)


def inflate(value: str) -> etree._Element:
    xml = zlib.decompress(base64.b64decode(value), -15)
    return etree.fromstring(xml)


# --- settings ---------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = parse_saml_settings({})
    assert s == SamlSettings(metadata_xml=None, metadata_url=None, sp_entity_id=None)
    assert s.want_assertions_signed and not s.allow_idp_initiated and not s.sign_authn_requests
    assert not s.send_login_hint
    assert s.authn_request_binding == "redirect" and s.clock_skew_seconds == 120
    assert s.name_id_format == "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    assert parse_saml_settings({"clock_skew_seconds": None, "metadata_url": None}) == s


def test_settings_full() -> None:
    s = parse_saml_settings(
        {
            "metadata_url": " https://idp.example/metadata ",
            "sp_entity_id": "urn:acme:sp",
            "allow_idp_initiated": True,
            "idp_initiated_app": "client-1",
            "idp_initiated_redirect_uri": "https://app.example/cb",
            "want_assertions_signed": False,
            "sign_authn_requests": True,
            "authn_request_binding": "post",
            "clock_skew_seconds": 30,
            "name_id_format": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            "allow_sha1": True,
            "allow_legacy_encryption": True,
            "send_login_hint": True,
        }
    )
    assert s.metadata_url == "https://idp.example/metadata"
    assert s.allow_idp_initiated and s.idp_initiated_app == "client-1"
    assert s.authn_request_binding == "post" and s.clock_skew_seconds == 30 and s.allow_sha1
    assert s.send_login_hint


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"metadata_uri": "https://x"}, "saml.metadata_uri"),
        ({"allow_sha1": "true"}, "saml.allow_sha1"),
        ({"send_login_hint": "yes"}, "saml.send_login_hint"),
        ({"want_assertions_signed": 1}, "saml.want_assertions_signed"),
        ({"clock_skew_seconds": "120"}, "saml.clock_skew_seconds"),
        ({"clock_skew_seconds": True}, "saml.clock_skew_seconds"),
        ({"clock_skew_seconds": -1}, "saml.clock_skew_seconds"),
        ({"clock_skew_seconds": 86400}, "saml.clock_skew_seconds"),
        ({"authn_request_binding": "artifact"}, "saml.authn_request_binding"),
        ({"metadata_url": "file:///etc/passwd"}, "saml.metadata_url"),
        ({"metadata_url": "ftp://idp.example/md"}, "saml.metadata_url"),
        ({"metadata_xml": 42}, "saml.metadata_xml"),
        ({"sp_entity_id": ""}, "saml.sp_entity_id"),
        ({"allow_idp_initiated": True}, "saml.idp_initiated_app"),
        ({"idp_initiated_redirect_uri": "/relative"}, "saml.idp_initiated_redirect_uri"),
    ],
)
def test_settings_refused(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_saml_settings(raw)
    assert exc.value.details == {"field": field}
    assert exc.value.message.endswith(".")


def test_opening_a_connector_validates_its_settings(sp: SpCredentials, state: MemoryStateStore) -> None:
    with pytest.raises(ValidationFailed):
        connector(sp, None, state, FrozenClock(NOW), bogus=True)


# --- URLs and SP metadata ---------------------------------------------------------------------


def test_urls(sp: SpCredentials, state: MemoryStateStore, clock: FrozenClock) -> None:
    c = SamlConnector(connection(sp), public_url=PUBLIC + "/", idp=None, state=state, clock=clock)
    assert c.protocol == "saml"
    assert c.acs_url == ACS
    assert c.metadata_url == SP_METADATA_URL
    assert c.sp_entity_id == SP_METADATA_URL
    assert connector(sp, None, state, clock, sp_entity_id="urn:acme:sp").sp_entity_id == "urn:acme:sp"


def _pem_body(pem: str) -> str:
    return "".join(ln for ln in pem.splitlines() if ln and not ln.startswith("-----"))


@pytest.mark.parametrize("signed", [False, True])
def test_sp_metadata(sp: SpCredentials, state: MemoryStateStore, clock: FrozenClock, signed: bool) -> None:
    c = connector(sp, None, state, clock, sign_authn_requests=signed, want_assertions_signed=True)
    raw = c.sp_metadata_xml()
    root = etree.fromstring(raw)
    assert root.tag == f"{{{MD}}}EntityDescriptor"
    assert root.get("entityID") == SP_METADATA_URL
    (spsso,) = root.findall(f"{{{MD}}}SPSSODescriptor")
    assert spsso.get("protocolSupportEnumeration") == SAMLP
    assert spsso.get("AuthnRequestsSigned") == ("true" if signed else "false")
    assert spsso.get("WantAssertionsSigned") == "true"
    kds = spsso.findall(f"{{{MD}}}KeyDescriptor")
    assert [kd.get("use") for kd in kds] == ["signing", "encryption"]
    certs = [kd.findtext(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate") for kd in kds]
    assert certs == [_pem_body(sp.signing_cert_pem), _pem_body(sp.encryption_cert_pem)]
    assert kds[1].findall(f"{{{MD}}}EncryptionMethod")
    assert [e.text for e in spsso.findall(f"{{{MD}}}NameIDFormat")] == [
        "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    ]
    (acs,) = spsso.findall(f"{{{MD}}}AssertionConsumerService")
    assert acs.get("Binding") == BINDING_HTTP_POST and acs.get("Location") == ACS
    assert acs.get("index") == "0" and acs.get("isDefault") == "true"
    # schema order inside SPSSODescriptor: KeyDescriptor*, ..., NameIDFormat*, AssertionConsumerService+
    names = [etree.QName(e).localname for e in spsso]
    assert names == ["KeyDescriptor", "KeyDescriptor", "NameIDFormat", "AssertionConsumerService"]
    # pysaml2 reads it back (class-based schema parsing)
    ed = saml2_md.entity_descriptor_from_string(raw.decode())
    assert ed.entity_id == SP_METADATA_URL and ed.spsso_descriptor[0].want_assertions_signed == "true"


def test_sp_metadata_is_what_an_idp_would_parse_back(
    sp: SpCredentials, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, None, state, clock, want_assertions_signed=False, sp_entity_id="urn:acme:sp")
    root = etree.fromstring(c.sp_metadata_xml())
    assert root.get("entityID") == "urn:acme:sp"
    assert root.find(f"{{{MD}}}SPSSODescriptor").get("WantAssertionsSigned") == "false"  # type: ignore[union-attr]


def test_sp_metadata_without_credentials_is_refused(state: MemoryStateStore, clock: FrozenClock) -> None:
    with pytest.raises(ValidationFailed):
        connector(None, None, state, clock).sp_metadata_xml()


# --- begin: HTTP-Redirect ---------------------------------------------------------------------


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_begin_redirect_unsigned(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    result = c.begin(BeginRequest(txn_id="txn-123"))
    assert isinstance(result.step, Redirect)
    assert result.step.url.startswith(SSO + "?")
    q = _query(result.step.url)
    assert set(q) == {"SAMLRequest", "RelayState"}
    assert q["RelayState"] == "txn-123"
    req = inflate(q["SAMLRequest"])
    assert req.tag == f"{{{SAMLP}}}AuthnRequest"
    request_id = req.get("ID")
    assert request_id and request_id[0] in "_abcdefghijklmnopqrstuvwxyz" and len(request_id) >= 33
    assert result.remember == {"request_id": request_id}
    assert req.get("Version") == "2.0"
    assert req.get("IssueInstant") == datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert req.get("Destination") == SSO
    assert req.get("AssertionConsumerServiceURL") == ACS
    assert req.get("ProtocolBinding") == BINDING_HTTP_POST
    assert req.get("ForceAuthn") is None
    assert req.findtext(f"{{{SAML}}}Issuer") == SP_METADATA_URL
    policy = req.find(f"{{{SAMLP}}}NameIDPolicy")
    assert policy is not None
    assert policy.get("Format") == "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    assert policy.get("AllowCreate") == "true"
    assert req.find(f"{{{DS}}}Signature") is None
    # an IdP built on pysaml2 reads it back
    parsed = saml2_samlp.authn_request_from_string(etree.tostring(req).decode())
    assert parsed.id == request_id and parsed.assertion_consumer_service_url == ACS


def test_begin_fresh_ids_force_authn_and_name_id_format(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    email = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    c = connector(sp, idp_metadata(idp), state, clock, name_id_format=email)
    first = c.begin(BeginRequest(txn_id="t1", force_authn=True))
    second = c.begin(BeginRequest(txn_id="t2"))
    assert first.remember["request_id"] != second.remember["request_id"]
    assert isinstance(first.step, Redirect)
    req = inflate(_query(first.step.url)["SAMLRequest"])
    assert req.get("ForceAuthn") == "true"
    assert req.find(f"{{{SAMLP}}}NameIDPolicy").get("Format") == email  # type: ignore[union-attr]


def test_begin_leaves_the_login_hint_out_by_default(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    result = c.begin(BeginRequest(txn_id="t1", login_hint="jane@example.com"))
    assert isinstance(result.step, Redirect)
    assert inflate(_query(result.step.url)["SAMLRequest"]).find(f"{{{SAML}}}Subject") is None


@pytest.mark.parametrize("binding", ["redirect", "post"])
def test_begin_sends_the_login_hint_as_subject_when_asked(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, binding: str
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, send_login_hint=True, authn_request_binding=binding,
                  sign_authn_requests=binding == "post")
    result = c.begin(BeginRequest(txn_id="t1", login_hint="jane.doe+x@example.com"))
    if isinstance(result.step, Redirect):
        req = inflate(_query(result.step.url)["SAMLRequest"])
    else:
        assert isinstance(result.step, AutoPost)
        req = etree.fromstring(base64.b64decode(result.step.fields["SAMLRequest"]))
    name_id = req.find(f"{{{SAML}}}Subject/{{{SAML}}}NameID")
    assert name_id is not None and name_id.text == "jane.doe+x@example.com"
    assert name_id.get("Format") == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    # schema order (SAML core §3.4.1 via RequestAbstractType): Issuer, Signature, Subject, NameIDPolicy
    names = [etree.QName(child).localname for child in req]
    assert names.index("Subject") == names.index("NameIDPolicy") - 1 and names.index("Issuer") < names.index("Subject")
    # an IdP built on pysaml2 reads the requested subject back
    parsed = saml2_samlp.authn_request_from_string(etree.tostring(req).decode())
    assert parsed.subject.name_id.text == "jane.doe+x@example.com"


@pytest.mark.parametrize(
    "hint", [None, "", "jane", "jane@", "@example.com", "a b@example.com", "jane@exa\x01mple.com",
             "<x>@example.com", "j@a@example.com", "x" * 65 + "@example.com", "a\u202e@example.com",
             "a\ufeff@example.com", "a@exa\u200bmple.com"],
)
def test_begin_sends_only_a_plain_address_as_subject(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, hint: str | None
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, send_login_hint=True)
    result = c.begin(BeginRequest(txn_id="t1", login_hint=hint))
    assert isinstance(result.step, Redirect)
    assert inflate(_query(result.step.url)["SAMLRequest"]).find(f"{{{SAML}}}Subject") is None


def _verify_redirect_signature(url: str, cert_pem: str) -> None:
    """SAML bindings §3.4.4.1: the signature covers the raw (URL-encoded) SAMLRequest, RelayState, SigAlg."""
    raw_query = urlsplit(url).query
    pieces = dict(p.split("=", 1) for p in raw_query.split("&"))
    signed = "&".join(f"{k}={pieces[k]}" for k in ("SAMLRequest", "RelayState", "SigAlg") if k in pieces)
    signature = base64.b64decode(unquote_plus(pieces["Signature"]))
    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature, signed.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("sso", [SSO, "https://accounts.example.test/o/saml2/idp?idpid=C0123"])
def test_begin_redirect_signed(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, sso: str
) -> None:
    c = connector(sp, idp_metadata(idp, sso=sso), state, clock, sign_authn_requests=True)
    result = c.begin(BeginRequest(txn_id="txn-123"))
    assert isinstance(result.step, Redirect)
    url = result.step.url
    assert url.startswith(sso + ("&" if "?" in sso else "?"))
    q = _query(url)
    assert q["SigAlg"] == RSA_SHA256
    assert q["RelayState"] == "txn-123"
    _verify_redirect_signature(url, sp.signing_cert_pem)
    # the signature is over the signing key, not the encryption key, and breaks when the query changes
    with pytest.raises(InvalidSignature):
        _verify_redirect_signature(url, sp.encryption_cert_pem)
    with pytest.raises(InvalidSignature):
        _verify_redirect_signature(
            url.replace("RelayState=txn-123", "RelayState=txn-124"), sp.signing_cert_pem
        )
    # the signature is in the query string only, not inside the XML
    assert inflate(q["SAMLRequest"]).find(f"{{{DS}}}Signature") is None


def test_begin_redirect_parses_the_signing_key_once_per_connector(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing the SP key is far dearer than signing: a cached connector parses it on its first login only."""
    from broker.upstream import saml as saml_module

    loads: list[bytes] = []
    original = saml_module.load_trusted_rsa_key

    def counting(pem: bytes) -> Any:
        loads.append(pem)
        return original(pem)

    monkeypatch.setattr(saml_module, "load_trusted_rsa_key", counting)
    c = connector(sp, idp_metadata(idp), state, clock, sign_authn_requests=True)
    for n in range(3):
        result = c.begin(BeginRequest(txn_id=f"txn-{n}"))
        assert isinstance(result.step, Redirect)
        _verify_redirect_signature(result.step.url, sp.signing_cert_pem)
    assert loads == [sp.signing_key_pem]


def test_begin_redirect_refuses_a_signing_key_that_is_not_rsa(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    c = connector(replace(sp, signing_key_pem=ec_pem), idp_metadata(idp), state, clock, sign_authn_requests=True)
    with pytest.raises(LoginError) as info:
        c.begin(BeginRequest(txn_id="t"))
    assert info.value.code == "saml_connection_not_ready"


def test_begin_signs_when_the_idp_wants_signed_requests(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp, want_signed=True), state, clock)
    result = c.begin(BeginRequest(txn_id="t"))
    assert isinstance(result.step, Redirect)
    _verify_redirect_signature(result.step.url, sp.signing_cert_pem)


# --- begin: HTTP-POST -------------------------------------------------------------------------


def test_begin_post_unsigned(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, authn_request_binding="post")
    result = c.begin(BeginRequest(txn_id="txn-9"))
    assert isinstance(result.step, AutoPost)
    assert result.step.url == SSO
    assert set(result.step.fields) == {"SAMLRequest", "RelayState"}
    assert result.step.fields["RelayState"] == "txn-9"
    req = etree.fromstring(base64.b64decode(result.step.fields["SAMLRequest"]))
    assert req.get("ID") == result.remember["request_id"]
    assert req.get("Destination") == SSO
    assert req.find(f"{{{DS}}}Signature") is None


def test_begin_post_signed_shares_one_loaded_key_across_threads(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """The xmlsec key is loaded once per connector and used by concurrent requests: every signature made
    with it, from any thread, verifies independently."""
    from concurrent.futures import ThreadPoolExecutor

    c = connector(sp, idp_metadata(idp), state, clock, authn_request_binding="post", sign_authn_requests=True)

    def one(n: int) -> tuple[bytes, str]:
        result = c.begin(BeginRequest(txn_id=f"txn-{n}"))
        assert isinstance(result.step, AutoPost)
        return base64.b64decode(result.step.fields["SAMLRequest"]), result.remember["request_id"]

    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(one, range(40)))
    assert c._xmlsec_key is not None
    for xml, request_id in signed:
        verified = XMLVerifier().verify(xml, x509_cert=sp.signing_cert_pem, id_attribute="ID")
        assert verified.signed_xml.get("ID") == request_id  # type: ignore[union-attr]


def test_begin_post_signed(sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, authn_request_binding="post", sign_authn_requests=True)
    result = c.begin(BeginRequest(txn_id="txn-9"))
    assert isinstance(result.step, AutoPost)
    xml = base64.b64decode(result.step.fields["SAMLRequest"])
    req = etree.fromstring(xml)
    request_id = result.remember["request_id"]
    # ds:Signature right after saml:Issuer (SAML core schema order), enveloped, over "#ID"
    children = [etree.QName(e).localname for e in req]
    assert children[:2] == ["Issuer", "Signature"]
    ref = req.find(f"{{{DS}}}Signature/{{{DS}}}SignedInfo/{{{DS}}}Reference")
    assert ref is not None and ref.get("URI") == f"#{request_id}"
    method = req.find(f"{{{DS}}}Signature/{{{DS}}}SignedInfo/{{{DS}}}SignatureMethod")
    assert method is not None and method.get("Algorithm") == RSA_SHA256
    # independently: signxml with the SP signing certificate ...
    verified = XMLVerifier().verify(xml, x509_cert=sp.signing_cert_pem, id_attribute="ID")
    assert verified.signed_xml.get("ID") == request_id  # type: ignore[union-attr]
    # ... and xmlsec with the public key only
    root = etree.fromstring(xml)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(
        sp.signing_cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem, None
    )
    ctx.register_id(root, "ID")
    ctx.verify(root.find(f"{{{DS}}}Signature"))
    # tampering breaks it
    tampered = xml.replace(ACS.encode(), b"https://evil.example/acs")
    with pytest.raises(XmlInvalidSignature):
        XMLVerifier().verify(tampered, x509_cert=sp.signing_cert_pem, id_attribute="ID")


def test_begin_falls_back_to_the_binding_the_idp_has(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    only_post = connector(sp, idp_metadata(idp, bindings=(BINDING_HTTP_POST,)), state, clock)
    assert isinstance(only_post.begin(BeginRequest(txn_id="t")).step, AutoPost)
    only_redirect = connector(
        sp, idp_metadata(idp, bindings=(BINDING_HTTP_REDIRECT,)), state, clock, authn_request_binding="post"
    )
    assert isinstance(only_redirect.begin(BeginRequest(txn_id="t")).step, Redirect)


def test_begin_not_ready(sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock) -> None:
    with pytest.raises(LoginError) as exc:
        connector(sp, None, state, clock).begin(BeginRequest(txn_id="t"))
    assert exc.value.code == "saml_connection_not_ready"
    soap_only = idp_metadata(idp, bindings=("urn:oasis:names:tc:SAML:2.0:bindings:SOAP",))
    with pytest.raises(LoginError) as exc:
        connector(sp, soap_only, state, clock).begin(BeginRequest(txn_id="t"))
    assert exc.value.code == "saml_connection_not_ready"
    with pytest.raises(LoginError) as exc:
        connector(None, idp_metadata(idp), state, clock, sign_authn_requests=True).begin(
            BeginRequest(txn_id="t")
        )
    assert exc.value.code == "saml_connection_not_ready"


def test_transaction_id(sp: SpCredentials, state: MemoryStateStore, clock: FrozenClock) -> None:
    c = connector(sp, None, state, clock)
    assert c.transaction_id(post("x", relay_state="txn-5")) == "txn-5"
    assert c.transaction_id(post("x", relay_state=None)) is None
    assert c.transaction_id(post("x", relay_state="")) is None


# --- complete ---------------------------------------------------------------------------------


def _login(c: SamlConnector) -> tuple[str, LoginTransaction]:
    request_id = c.begin(BeginRequest(txn_id="txn-1")).remember["request_id"]
    return request_id, txn_for(c, request_id)


def _response(c: SamlConnector, idp: Idp, in_response_to: str | None, **kw: Any) -> str:
    kw.setdefault("issue_instant", NOW)
    return to_post_binding(
        build_response(idp, acs_url=c.acs_url, audience=c.sp_entity_id, in_response_to=in_response_to, **kw)
    )


def test_complete_happy_path(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    who = c.complete(post(_response(c, idp, request_id, assertion_id="_a-happy")), txn)
    assert who.protocol == "saml"
    assert who.issuer == IDP_ID
    assert who.subject == "alice@example.com"
    assert who.subject_format == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    assert who.attributes["email"] == ("alice@example.com",)
    assert who.attributes["groups"] == ("Admins", "Everyone")
    assert who.session_index == "_session-1"
    assert who.authn_context == "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    assert who.authn_instant == NOW - 1
    assert who.assertion_id == "_a-happy"
    assert who.amr == ()
    assert "sha1" not in who.warnings


@pytest.mark.parametrize("style", ["entra", "ping", "generic"])
def test_complete_vendor_styles(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, style: str
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    who = c.complete(post(_response(c, idp, request_id, style=style)), txn)
    assert who.subject == "alice@example.com" and who.attributes


def test_complete_encrypted_assertion(idp: Idp, state: MemoryStateStore, clock: FrozenClock) -> None:
    enc_key, enc_cert = make_sp_encryption_keypair("saml-connector")
    sp = replace(generate_sp_credentials("enc"), encryption_key_pem=enc_key, encryption_cert_pem=enc_cert)
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    who = c.complete(post(_response(c, idp, request_id, encrypt_to_cert_pem=enc_cert)), txn)
    assert who.subject == "alice@example.com"


def test_complete_replay_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    body = _response(c, idp, request_id)
    c.complete(post(body), txn)
    with pytest.raises(LoginError) as exc:
        c.complete(post(body), txn)
    assert exc.value.code == "saml_replay"


def test_a_used_answer_posted_again_after_its_sign_in_ended_is_called_a_replay(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """The common replay: the same answer again, once its transaction is gone (no pending request). It fails
    the InResponseTo check, and is reported as the replay it is; an authentic answer never used is not."""
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    body = _response(c, idp, request_id, assertion_id="_a-used")
    c.complete(post(body), txn)
    with pytest.raises(LoginError) as exc:
        c.complete(post(body), None)
    assert exc.value.code == "saml_replay" and "_a-used" in (exc.value.detail or "")
    other_id, _ = _login(c)
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, other_id, assertion_id="_a-fresh")), txn)  # wrong sign-in, never used
    assert exc.value.code == "saml_in_response_to_mismatch"
    assert state.get("saml-replay:conn-okta:_a-fresh") is None, "a refused answer is not consumed"


def test_release_gives_the_assertion_back_and_only_that_one(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """release(): the login of this identity was not recorded, so its assertion may be posted again (once)."""
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    kept_id, kept_txn = _login(c)
    kept = c.complete(post(_response(c, idp, kept_id, assertion_id="_a-kept")), kept_txn)
    identity = c.complete(post(_response(c, idp, request_id, assertion_id="_a-back")), txn)
    assert c.release(identity) is True
    assert state.get("saml-replay:conn-okta:_a-back") is None
    assert state.get("saml-replay:conn-okta:_a-kept") == b"1" and kept.assertion_id == "_a-kept"
    again = c.complete(post(_response(c, idp, request_id, assertion_id="_a-back")), txn)
    assert again.assertion_id == "_a-back"
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, request_id, assertion_id="_a-back")), txn)
    assert exc.value.code == "saml_replay"


def test_replay_cache_is_shared_through_the_state_store(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """A second replica (another connector over the same store) refuses the same assertion."""
    a = connector(sp, idp_metadata(idp), state, clock)
    b = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(a)
    body = _response(a, idp, request_id, assertion_id="_a-shared")
    a.complete(post(body), txn)
    assert state.get("saml-replay:conn-okta:_a-shared") == b"1"
    with pytest.raises(LoginError) as exc:
        b.complete(post(body), txn)
    assert exc.value.code == "saml_replay"


def test_unsolicited_is_refused_by_default(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, None), relay_state=None), None)
    assert exc.value.code == "saml_unsolicited"


def test_unsolicited_is_accepted_when_allowed(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, allow_idp_initiated=True, idp_initiated_app="client-1")
    body = _response(c, idp, None)
    assert c.complete(post(body, relay_state=None), None).subject == "alice@example.com"
    with pytest.raises(LoginError) as exc:
        c.complete(post(body, relay_state=None), None)
    assert exc.value.code == "saml_replay"


def test_an_unsolicited_assertion_older_than_the_replay_cache_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """The state store lost its data (a Redis restarted without persistence) at NOW + 30: an unsolicited
    assertion issued before then may have been used already, and nothing records it, so it is refused. A
    solicited one is bound to its transaction, which the store keeps only since then too: unaffected."""
    state.kept_since(NOW + 30)
    clock.advance(40)
    c = connector(sp, idp_metadata(idp), state, clock, allow_idp_initiated=True, idp_initiated_app="client-1")
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, None), relay_state=None), None)
    assert exc.value.code == "saml_replay_unverifiable"
    fresh = _response(c, idp, None, issue_instant=NOW + 35, assertion_id="_after-the-loss")
    assert c.complete(post(fresh, relay_state=None), None).subject == "alice@example.com"
    request_id, txn = _login(c)
    solicited = _response(c, idp, request_id, assertion_id="_solicited-before")  # issued at NOW
    assert c.complete(post(solicited), txn).subject == "alice@example.com"


def test_solicited_response_without_transaction_is_refused_even_when_unsolicited_allowed(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock, allow_idp_initiated=True, idp_initiated_app="client-1")
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, "_some-request-of-another-browser")), None)
    assert exc.value.code == "saml_in_response_to_mismatch"


def test_in_response_to_of_another_request_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    _, txn = _login(c)
    other_request = c.begin(BeginRequest(txn_id="txn-2")).remember["request_id"]
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, other_request)), txn)
    assert exc.value.code == "saml_in_response_to_mismatch"


def test_response_to_a_transaction_with_no_request_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    txn = replace(txn_for(c, "x"), upstream={})
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, None)), txn)
    assert exc.value.code == "saml_transaction_mismatch"


def test_transaction_of_another_connection_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, request_id)), replace(txn, connection_id="conn-other"))
    assert exc.value.code == "saml_transaction_mismatch"


def test_signature_by_another_idp_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    """Two tenants may register the same entityID; each connection trusts only its own certificates."""
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    impostor = make_idp(IDP_ID + "#impostor")
    with pytest.raises(LoginError) as exc:
        c.complete(post(_response(c, idp, request_id, signer=impostor)), txn)
    assert exc.value.code == "saml_signature_invalid"
    assert len(state) == 0  # a refused login changes nothing (no replay-cache entry)


def test_response_for_another_acs_is_refused(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    body = to_post_binding(
        build_response(
            idp,
            acs_url=f"{PUBLIC}/t/other/connections/okta/saml/acs",
            audience=c.sp_entity_id,
            in_response_to=request_id,
            issue_instant=NOW,
        )
    )
    with pytest.raises(LoginError) as exc:
        c.complete(post(body), txn)
    assert exc.value.code == "saml_destination_mismatch"


def test_expired_response_is_refused(sp: SpCredentials, idp: Idp, state: MemoryStateStore) -> None:
    clock = FrozenClock(NOW)
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    body = _response(c, idp, request_id)
    clock.advance(300 + 120 + 1)
    with pytest.raises(LoginError) as exc:
        c.complete(post(body), txn)
    assert exc.value.code == "saml_expired"


def test_sha1_is_refused_unless_allowed_then_warned(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    strict = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(strict)
    sha1 = {"signature_algorithm": "rsa-sha1", "digest_algorithm": "sha1"}
    with pytest.raises(LoginError) as exc:
        strict.complete(post(_response(strict, idp, request_id, **sha1)), txn)
    assert exc.value.code == "saml_algorithm_refused"
    lenient = connector(sp, idp_metadata(idp), state, clock, allow_sha1=True)
    request_id, txn = _login(lenient)
    who = lenient.complete(post(_response(lenient, idp, request_id, **sha1)), txn)
    assert "sha1" in who.warnings


@pytest.mark.parametrize("body", ["", "!!!not base64!!!", base64.b64encode(b"not xml").decode()])
def test_malformed_saml_response(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock, body: str
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    _, txn = _login(c)
    with pytest.raises(LoginError) as exc:
        c.complete(post(body), txn)
    assert exc.value.code in ("saml_response_malformed", "xml_malformed")


def test_missing_saml_response(
    sp: SpCredentials, idp: Idp, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, idp_metadata(idp), state, clock)
    _, txn = _login(c)
    with pytest.raises(LoginError) as exc:
        c.complete(CallbackInput(method="POST", params={"RelayState": "txn-1"}, url=ACS), txn)
    assert exc.value.code == "saml_response_malformed"


def test_complete_without_idp_metadata(
    sp: SpCredentials, state: MemoryStateStore, clock: FrozenClock
) -> None:
    c = connector(sp, None, state, clock)
    with pytest.raises(LoginError) as exc:
        c.complete(post("PHg+"), None)
    assert exc.value.code == "saml_connection_not_ready"


class RecordingStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        self.calls.append((key, ttl))
        return super().add_if_absent(key, value, ttl)


def test_replay_entry_lives_until_the_assertion_could_no_longer_be_accepted(
    sp: SpCredentials, idp: Idp, clock: FrozenClock
) -> None:
    store = RecordingStore()
    c = connector(sp, idp_metadata(idp), store, clock, clock_skew_seconds=60)
    request_id, txn = _login(c)
    clock.advance(100)
    c.complete(post(_response(c, idp, request_id, assertion_id="_a-ttl")), txn)
    # NotOnOrAfter = NOW + 300; + skew 60; seen at NOW + 100
    assert store.calls == [("saml-replay:conn-okta:_a-ttl", 260.0)]


def test_accepted_just_inside_the_clock_skew(sp: SpCredentials, idp: Idp, state: MemoryStateStore) -> None:
    clock = FrozenClock(NOW)
    c = connector(sp, idp_metadata(idp), state, clock)
    request_id, txn = _login(c)
    body = _response(c, idp, request_id)
    clock.advance(300 + 120 - 1)
    assert c.complete(post(body), txn).subject == "alice@example.com"

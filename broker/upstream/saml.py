"""The SAML 2.0 connector: the broker as SP for one connection (AuthnRequest out, verified Response in).

pysaml2 builds what goes out (AuthnRequest, HTTP-Redirect binding, SP metadata); every byte that comes
back is verified by broker.samlxml on one lxml tree against this connection's IdP certificates only.
Nothing per login is kept on `self`: the AuthnRequest ID travels in LoginTransaction.upstream.
"""

from __future__ import annotations

import base64
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

import xmlsec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from saml2 import BINDING_HTTP_POST, md, saml, samlp
from saml2.metadata import do_key_descriptor
from saml2.pack import http_redirect_message
from saml2.xmldsig import SIG_RSA_SHA256

from broker.errors import ConfigError, LoginError, ValidationFailed
from broker.model import Connection, LoginTransaction, SpCredentials, UpstreamIdentity
from broker.ports import Clock, StateStore
from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import BINDING_HTTP_POST as MD_BINDING_POST
from broker.samlxml.metadata import BINDING_HTTP_REDIRECT as MD_BINDING_REDIRECT
from broker.samlxml.metadata import Endpoint, IdpMetadata
from broker.samlxml.response import ResponseExpectations, VerifiedAssertion, decode_post_binding, verify_response
from broker.trusted_keys import load_trusted_rsa_key
from broker.upstream.base import AutoPost, BeginRequest, BeginResult, CallbackInput, Redirect
from broker.upstream.sources import host_name_problem

NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
# a login_hint sent on as a Subject: a plain address (no spaces, controls or markup), RFC 5321's length cap
_EMAIL_HINT = re.compile(r"[^\s@<>\"\x00-\x1f\x7f]{1,64}@[^\s@<>\"\x00-\x1f\x7f]{1,189}\Z")
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
MAX_CLOCK_SKEW = 900

# Encryption algorithms the SP metadata advertises (what broker.samlxml.response decrypts).
SP_ENCRYPTION_METHODS = (
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "http://www.w3.org/2009/xmlenc11#rsa-oaep",
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
)

_NSPAIRS = {"samlp": samlp.NAMESPACE, "saml": saml.NAMESPACE}
_MD_NSPAIRS = {"md": md.NAMESPACE, "ds": DS_NS}


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamlSettings:
    metadata_xml: str | None
    metadata_url: str | None
    sp_entity_id: str | None
    # which IdP to use when the metadata describes several (a federation aggregate): its entityID
    idp_entity_id: str | None = None
    allow_idp_initiated: bool = False
    idp_initiated_app: str | None = None
    idp_initiated_redirect_uri: str | None = None
    want_assertions_signed: bool = True
    sign_authn_requests: bool = False
    authn_request_binding: str = "redirect"  # "redirect" | "post"
    clock_skew_seconds: int = 120
    name_id_format: str = NAMEID_UNSPECIFIED
    allow_sha1: bool = False
    allow_legacy_encryption: bool = False
    # put the app's email login_hint in the AuthnRequest's <Subject> (SAML core §3.4.1): off by default, as
    # an IdP must then answer for that subject only, and some refuse requests that carry one
    send_login_hint: bool = False


_STR_FIELDS = (
    "metadata_xml", "metadata_url", "sp_entity_id", "idp_initiated_app", "idp_initiated_redirect_uri",
    "authn_request_binding", "name_id_format", "idp_entity_id",
)
_BOOL_FIELDS = (
    "allow_idp_initiated", "want_assertions_signed", "sign_authn_requests", "allow_sha1",
    "allow_legacy_encryption", "send_login_hint",
)
_INT_FIELDS = ("clock_skew_seconds",)
_KNOWN = frozenset((*_STR_FIELDS, *_BOOL_FIELDS, *_INT_FIELDS))


def _split(url: str) -> SplitResult | None:
    """urlsplit, or None for what it refuses (a bogus or unbalanced IPv6 bracket raises ValueError)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": f"saml.{field}"})


def parse_saml_settings(raw: Mapping[str, Any]) -> SamlSettings:
    """Validate a connection's `saml` JSON settings. JSON null means "the default"."""
    if not isinstance(raw, Mapping):
        raise ValidationFailed("The saml settings must be a JSON object.", details={"field": "saml"})
    unknown = sorted(str(k) for k in raw if k not in _KNOWN)
    if unknown:
        raise _bad(unknown[0], f"Unknown saml setting {unknown[0]!r}; known: {', '.join(sorted(_KNOWN))}.")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _STR_FIELDS and not isinstance(value, str):
            raise _bad(key, f"saml.{key} must be a string.")
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            raise _bad(key, f"saml.{key} must be true or false.")
        if key in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(key, f"saml.{key} must be an integer.")
        values[key] = value.strip() if isinstance(value, str) and key != "metadata_xml" else value
    for key in ("metadata_xml", "metadata_url", "sp_entity_id", "idp_initiated_app",
                "idp_initiated_redirect_uri", "name_id_format", "idp_entity_id"):
        if key in values and values[key] == "":
            raise _bad(key, f"saml.{key} must not be empty (omit it or use null instead).")
    if "metadata_url" in values:
        parts = _split(values["metadata_url"])
        if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
            raise _bad("metadata_url", "saml.metadata_url must be an http(s) URL.")
        if host_name_problem(parts.hostname):
            raise _bad("metadata_url", "saml.metadata_url must name a valid host (no empty or over-long label).")
    if "idp_initiated_redirect_uri" in values:
        parts = _split(values["idp_initiated_redirect_uri"])
        if parts is None or not parts.scheme or not parts.netloc:
            raise _bad(
                "idp_initiated_redirect_uri", "saml.idp_initiated_redirect_uri must be an absolute URL."
            )
    if values.get("authn_request_binding", "redirect") not in ("redirect", "post"):
        raise _bad("authn_request_binding", 'saml.authn_request_binding must be "redirect" or "post".')
    skew = values.get("clock_skew_seconds", 120)
    if not 0 <= skew <= MAX_CLOCK_SKEW:
        raise _bad("clock_skew_seconds", f"saml.clock_skew_seconds must be between 0 and {MAX_CLOCK_SKEW}.")
    if values.get("allow_idp_initiated") and not values.get("idp_initiated_app"):
        raise _bad(
            "idp_initiated_app",
            "saml.allow_idp_initiated needs saml.idp_initiated_app: the app that IdP-initiated logins go to.",
        )
    return SamlSettings(
        metadata_xml=values.pop("metadata_xml", None),
        metadata_url=values.pop("metadata_url", None),
        sp_entity_id=values.pop("sp_entity_id", None),
        **values,
    )


# --- connector --------------------------------------------------------------------------------


class SamlConnector:
    """One connection's SP. Trusts only `idp` (this connection's metadata certificates)."""

    protocol = "saml"

    def __init__(
        self,
        connection: Connection,
        *,
        public_url: str,
        idp: IdpMetadata | None,
        state: StateStore,
        clock: Clock,
    ) -> None:
        self.connection = connection
        self.settings = parse_saml_settings(connection.settings)
        self.idp = idp
        self._state = state
        self._clock = clock
        base = f"{public_url.rstrip('/')}/t/{connection.tenant_slug}/connections/{connection.slug}/saml"
        self.acs_url = f"{base}/acs"
        self.metadata_url = f"{base}/metadata"
        self.sp_entity_id = self.settings.sp_entity_id or self.metadata_url
        self._redirect_signer: _RedirectSigningBackend | None = None  # loaded on first use, kept
        self._xmlsec_key: xmlsec.Key | None = None  # likewise, for the HTTP-POST binding's enveloped signature

    # --- SP metadata ------------------------------------------------------------------------

    def sp_metadata_xml(self) -> bytes:
        """This SP's metadata: entityID, ACS (HTTP-POST), NameIDFormat, signing + encryption certificates."""
        sp = self._credentials()
        key_descriptors = do_key_descriptor(
            cert=_pem_body(sp.signing_cert_pem), enc_cert=_pem_body(sp.encryption_cert_pem), use="both"
        )
        for kd in key_descriptors:
            if kd.use == "encryption":
                kd.encryption_method = [md.EncryptionMethod(algorithm=a) for a in SP_ENCRYPTION_METHODS]
        spsso = md.SPSSODescriptor(
            protocol_support_enumeration=samlp.NAMESPACE,
            authn_requests_signed=_xs_bool(self.settings.sign_authn_requests),
            want_assertions_signed=_xs_bool(self.settings.want_assertions_signed),
            key_descriptor=key_descriptors,
            name_id_format=[md.NameIDFormat(text=self.settings.name_id_format)],
            assertion_consumer_service=[
                md.AssertionConsumerService(
                    binding=BINDING_HTTP_POST, location=self.acs_url, index="0", is_default="true"
                )
            ],
        )
        entity = md.EntityDescriptor(entity_id=self.sp_entity_id, spsso_descriptor=spsso)
        xml: bytes = entity.to_string(nspair=_MD_NSPAIRS)
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + xml

    # --- begin ------------------------------------------------------------------------------

    def _hint_subject(self, login_hint: str | None) -> saml.Subject | None:
        """The app's login_hint as the requested subject, when the connection asks for it and the hint is a
        plain email address (anything else is only a hint, and is left out rather than refused)."""
        if not self.settings.send_login_hint or not login_hint or not _EMAIL_HINT.match(login_hint):
            return None
        if any(unicodedata.category(ch) == "Cf" for ch in login_hint):  # bidi overrides, zero-width characters
            return None
        return saml.Subject(name_id=saml.NameID(format=NAMEID_EMAIL, text=login_hint))

    def begin(self, request: BeginRequest) -> BeginResult:
        """Build an AuthnRequest (SAML core §3.4.1) and send it with the configured binding."""
        endpoint = self._sso_endpoint()
        request_id = "_" + secrets.token_hex(20)
        authn = samlp.AuthnRequest(
            id=request_id,
            version="2.0",
            issue_instant=_instant(self._clock.now()),
            destination=endpoint.location,
            assertion_consumer_service_url=self.acs_url,
            protocol_binding=BINDING_HTTP_POST,
            issuer=saml.Issuer(text=self.sp_entity_id, format=saml.NAMEID_FORMAT_ENTITY),
            name_id_policy=samlp.NameIDPolicy(format=self.settings.name_id_format, allow_create="true"),
            force_authn="true" if request.force_authn else None,
            subject=self._hint_subject(request.login_hint),
        )
        xml: bytes = authn.to_string(nspair=_NSPAIRS)
        # Sign when configured, and whenever the IdP's metadata says it wants signed requests.
        sign = self.settings.sign_authn_requests or bool(self.idp and self.idp.want_authn_requests_signed)
        remember = {"request_id": request_id}
        if endpoint.binding == MD_BINDING_POST:
            if sign:
                xml = _sign_enveloped(xml, request_id, self._xmlsec_signing_key())
            fields = {"SAMLRequest": base64.b64encode(xml).decode("ascii"), "RelayState": request.txn_id}
            return BeginResult(step=AutoPost(url=endpoint.location, fields=fields), remember=remember)
        backend = self._redirect_signing_backend() if sign else None
        # HTTP-Redirect binding (SAML bindings §3.4.4.1): DEFLATE + base64; when signing, RSA-SHA256 over
        # "SAMLRequest=..&RelayState=..&SigAlg=.." exactly as it appears in the query string.
        packed = http_redirect_message(
            xml.decode("utf-8"),
            endpoint.location,
            relay_state=request.txn_id,
            typ="SAMLRequest",
            sigalg=SIG_RSA_SHA256 if sign else None,
            sign=sign,
            backend=backend,
        )
        location = dict(packed["headers"])["Location"]
        return BeginResult(step=Redirect(url=location), remember=remember)

    def _sso_endpoint(self) -> Endpoint:
        if self.idp is None:
            raise LoginError(
                "This SAML connection has no identity provider metadata yet.",
                code="saml_connection_not_ready",
                detail=f"connection {self.connection.id}: no IdP metadata",
            )
        preferred, other = (
            (MD_BINDING_POST, MD_BINDING_REDIRECT)
            if self.settings.authn_request_binding == "post"
            else (MD_BINDING_REDIRECT, MD_BINDING_POST)
        )
        endpoint = self.idp.sso_endpoint(preferred) or self.idp.sso_endpoint(other)
        if endpoint is None:
            raise LoginError(
                "The identity provider's metadata has no usable single sign-on endpoint.",
                code="saml_connection_not_ready",
                detail=f"connection {self.connection.id}: no HTTP-Redirect or HTTP-POST SingleSignOnService",
            )
        return endpoint

    def _redirect_signing_backend(self) -> _RedirectSigningBackend:
        """The SP signing key, parsed once per connector (connectors are cached per connection version)."""
        backend = self._redirect_signer
        if backend is None:
            backend = self._redirect_signer = _RedirectSigningBackend(self._signing_credentials().signing_key_pem)
        return backend

    def _xmlsec_signing_key(self) -> xmlsec.Key:
        """The SP signing key and certificate as an xmlsec key, loaded once per connector (a signature context
        copies the key it is given, so one loaded key serves every thread)."""
        key = self._xmlsec_key
        if key is None:
            sp = self._signing_credentials()
            key = xmlsec.Key.from_memory(sp.signing_key_pem, xmlsec.constants.KeyDataFormatPem, None)
            key.load_cert_from_memory(sp.signing_cert_pem.encode("ascii"), xmlsec.constants.KeyDataFormatCertPem)
            self._xmlsec_key = key
        return key

    def _signing_credentials(self) -> SpCredentials:
        sp = self.connection.sp
        if sp is None:
            raise LoginError(
                "This SAML connection has no service-provider keys to sign its requests with.",
                code="saml_connection_not_ready",
                detail=f"connection {self.connection.id}: no SP credentials",
            )
        return sp

    def _credentials(self) -> SpCredentials:
        sp = self.connection.sp
        if sp is None:
            raise ValidationFailed(
                "This SAML connection has no service-provider certificates.",
                code="saml_connection_not_ready",
            )
        return sp

    # --- callback ---------------------------------------------------------------------------

    def transaction_id(self, callback: CallbackInput) -> str | None:
        """The RelayState the IdP echoed back (our transaction id), if any."""
        relay_state = callback.params.get("RelayState")
        return relay_state or None

    def _replay_key(self, assertion_id: str) -> str:
        return f"saml-replay:{self.connection.id}:{assertion_id}"

    def complete(self, callback: CallbackInput, txn: LoginTransaction | None) -> UpstreamIdentity:
        """Verify the SAMLResponse (broker.samlxml) and consume its assertion ID once (replay cache)."""
        if self.idp is None:
            raise LoginError(
                "This SAML connection has no identity provider metadata yet.",
                code="saml_connection_not_ready",
                detail=f"connection {self.connection.id}: no IdP metadata",
            )
        encoded = callback.params.get("SAMLResponse")
        if not encoded:
            raise LoginError(
                "The identity provider's answer carried no SAML response.",
                code="saml_response_malformed",
                detail="SAMLResponse parameter missing",
            )
        in_response_to: str | None = None
        if txn is not None:
            if txn.connection_id != self.connection.id:
                raise LoginError(
                    "This sign-in does not belong to this connection.",
                    code="saml_transaction_mismatch",
                    detail=f"txn for connection {txn.connection_id}, ACS of {self.connection.id}",
                )
            in_response_to = txn.upstream.get("request_id")
            if not in_response_to:
                raise LoginError(
                    "This sign-in has no pending SAML request.",
                    code="saml_transaction_mismatch",
                    detail="login transaction has no request_id",
                )
        now = self._clock.now()
        skew = float(self.settings.clock_skew_seconds)
        sp = self.connection.sp
        expectations = ResponseExpectations(
            idp_entity_id=self.idp.entity_id,
            sp_entity_id=self.sp_entity_id,
            acs_url=self.acs_url,
            idp_certificates=tuple(c.pem for c in self.idp.signing_certificates),
            in_response_to=in_response_to,
            allow_unsolicited=self.settings.allow_idp_initiated and txn is None,
            now=now,
            clock_skew=skew,
            want_assertions_signed=self.settings.want_assertions_signed,
            allow_sha1=self.settings.allow_sha1,
            allow_legacy_encryption=self.settings.allow_legacy_encryption,
            sp_decryption_keys=(sp.encryption_key_pem,) if sp is not None else (),
        )
        try:
            document = decode_post_binding(encoded)
            verified = verify_response(document, expectations)
        except SamlError as e:
            if e.assertion_id is not None and self._state.get(self._replay_key(e.assertion_id)) is not None:
                # an authentic assertion, already used: most often the same answer posted again (its sign-in
                # is over, so it no longer matches one): said as the replay it is, for alerts on that code
                raise LoginError("This SAML assertion has already been used.", code="saml_replay",
                                 detail=f"assertion {e.assertion_id} seen before; {e.detail}") from e
            raise LoginError(e.message, code=e.code, detail=e.detail) from e

        if txn is None and verified.issue_instant < self._state.kept_since(now):
            # Unsolicited: only the replay cache stands between a copied assertion and a second login, and the
            # cache holds nothing from before it began (a Redis that restarted without its data): an assertion
            # issued before then may have been used already. (A solicited one is bound to its transaction,
            # which went with the same data.)
            raise LoginError(
                "This sign-in response is older than the broker's record of used responses. Please sign in again.",
                code="saml_replay_unverifiable",
                detail=f"assertion {verified.assertion_id} issued before the replay cache began",
            )
        # Replay cache (shared across replicas): an assertion ID is consumed once while it could be valid.
        ttl = max(1.0, verified.not_on_or_after + skew - now)
        if not self._state.add_if_absent(self._replay_key(verified.assertion_id), b"1", ttl=ttl):
            raise LoginError(
                "This SAML assertion has already been used.",
                code="saml_replay",
                detail=f"assertion {verified.assertion_id} seen before",
            )
        return identity_from_assertion(verified, self.idp.entity_id)

    def release(self, identity: UpstreamIdentity) -> bool:
        """The assertion leaves the replay cache: its login was not recorded, so it was never used, and the
        browser may post the same answer again (with its transaction, which the caller puts back first)."""
        if identity.assertion_id is None:
            return False
        self._state.delete(self._replay_key(identity.assertion_id))
        return True


def identity_from_assertion(verified: VerifiedAssertion, entity_id: str) -> UpstreamIdentity:
    """The UpstreamIdentity of a verified assertion; `idp` is the IdP entityID from the connection's metadata."""
    return UpstreamIdentity(
        protocol="saml",
        issuer=entity_id,
        subject=verified.name_id or "",
        subject_format=verified.name_id_format,
        attributes=dict(verified.attributes),
        friendly_names=dict(verified.friendly_names),
        session_index=verified.session_index,
        authn_context=verified.authn_context_class_ref,
        amr=(),
        authn_instant=verified.authn_instant,
        session_ends_at=verified.session_not_on_or_after,
        assertion_id=verified.assertion_id,
        warnings=tuple("sha1" if w == "sha1_signature" else w for w in verified.warnings),
    )


# --- signing ----------------------------------------------------------------------------------


class _RsaSha256Signer:
    """pysaml2's signer interface (`sign(msg) -> bytes`) over one key.

    pysaml2's own SecurityContext.get_signer() stores the key on a module-global signer object, which
    would let concurrent logins of two connections sign with each other's key; this one is per call.
    """

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def sign(self, msg: bytes, key: object = None) -> bytes:
        return self._key.sign(msg, padding.PKCS1v15(), hashes.SHA256())


class _RedirectSigningBackend:
    def __init__(self, key_pem: bytes) -> None:
        try:
            key = load_trusted_rsa_key(key_pem)  # generated by the broker (generate_sp_credentials), sealed
        except (ConfigError, ValueError, TypeError) as exc:
            raise LoginError(
                "This SAML connection's signing key is not an RSA key.",
                code="saml_connection_not_ready",
                detail=exc.__class__.__name__,
            ) from None
        self._key = key

    def get_signer(self, sigalg: str, sigkey: object = None) -> _RsaSha256Signer | None:
        return _RsaSha256Signer(self._key) if sigalg == SIG_RSA_SHA256 else None


def _sign_enveloped(xml: bytes, request_id: str, key: xmlsec.Key) -> bytes:
    """An enveloped XML-DSig signature (RSA-SHA256, exc-c14n) placed right after saml:Issuer."""
    # Our own freshly built AuthnRequest, not input: a plain parser is fine here.
    root = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    signature = xmlsec.template.create(
        root, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256, ns="ds"
    )
    ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri=f"#{request_id}")
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.add_x509_data(key_info)
    issuer = root.find(f"{{{saml.NAMESPACE}}}Issuer")
    if issuer is not None:
        issuer.addnext(signature)
    else:
        root.insert(0, signature)
    xmlsec.tree.add_ids(root, ["ID"])
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    ctx.sign(signature)
    out: bytes = etree.tostring(root)
    return out


# --- helpers ----------------------------------------------------------------------------------


def _pem_body(pem: str) -> str:
    """The base64 body of a PEM certificate, as metadata's X509Certificate carries it."""
    lines = [ln.strip() for ln in pem.strip().splitlines()]
    return "".join(ln for ln in lines if ln and not ln.startswith("-----"))


def _xs_bool(value: bool) -> str:
    return "true" if value else "false"


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

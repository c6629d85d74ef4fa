"""SAML 2.0 Response validation (Web Browser SSO, HTTP-POST binding): verify, then read only the verified.

:func:`verify_response` is a named checklist, in this order (SAML core = saml-core-2.0-os,
profiles = saml-profiles-2.0-os, bindings = saml-bindings-2.0-os):

1. parse once with the hardened parser; no processing instructions; root is samlp:Response v2.0;
2. Status is Success (core 3.2.2.2);
3. no duplicate IDs; exactly one assertion, a direct child of the Response (else wrapping/multiple/none);
4. the Response signature, if any, is verified (it covers the encrypted form, if encrypted);
5. an EncryptedAssertion is decrypted with the SP keys (algorithm allow-list, local key references only);
6. the Assertion's own signature, if any, is verified; the assertion used must be covered by a verified
   signature (its own, or the Response's when it is a direct child of the verified Response root);
   ``want_assertions_signed`` requires its own. A broken Response signature is tolerated (warning
   ``response_signature_invalid``, Response treated as unsigned) only when the Assertion's own signature
   verifies (Okta quirk);
7. from here on every value is read from the verified elements only, by direct-child paths:
   Issuer (core 2.2.5), Destination (bindings 3.5.5.2), Conditions time window and AudienceRestriction
   (core 2.5.1), bearer SubjectConfirmation (profiles 4.1.4.2-3), InResponseTo (profiles 4.1.4.3).

Values are read strictly: a NameID/Issuer/Audience/AttributeValue that contains a comment or processing
instruction is refused (``xml_forbidden``), because canonicalization ignores comments and a reader that
stops at the comment would see a different value than the IdP signed (comment injection).
"""

from __future__ import annotations

import binascii
import calendar
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import xmlsec
from lxml import etree

from .dsig import DS_NS, VerifiedElement, find_duplicate_ids, verify_signed_element
from .errors import SamlError
from .parser import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, check_shape, parse_xml

# each element's in-scope namespaces, summed over a Response: a 5,000-value attribute statement with Okta's
# per-value xs/xsi declarations stays well under it; canonicalization's cost grows with it
MAX_NAMESPACE_NODES = 100_000

SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_P = f"{{{SAMLP_NS}}}"
_A = f"{{{SAML_NS}}}"
_DS = f"{{{DS_NS}}}"
_XENC = f"{{{XENC_NS}}}"

STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
CM_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

# XML Encryption: content encryption and key transport allow-lists.
DATA_ENCRYPTION = {
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2009/xmlenc11#aes192-gcm",
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes192-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
}
LEGACY_DATA_ENCRYPTION = {"http://www.w3.org/2001/04/xmlenc#tripledes-cbc"}
KEY_TRANSPORT = {
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
    "http://www.w3.org/2009/xmlenc11#rsa-oaep",
}
LEGACY_KEY_TRANSPORT = {"http://www.w3.org/2001/04/xmlenc#rsa-1_5"}

_MSG = {
    "saml_response_malformed": "The sign-in response from the identity provider could not be read.",
    "saml_status": "The identity provider did not sign you in.",
    "saml_signature_missing": "The sign-in response from the identity provider is not signed.",
    "saml_signature_invalid": "The identity provider's signature could not be verified.",
    "saml_signature_wrapping": "The sign-in response is structured in a way that is not allowed.",
    "saml_algorithm_refused": "The identity provider used an algorithm that is not allowed.",
    "saml_decryption_failed": "The sign-in response could not be decrypted.",
    "saml_issuer_mismatch": "The sign-in response comes from an unexpected identity provider.",
    "saml_audience_mismatch": "The sign-in response was meant for another application.",
    "saml_destination_mismatch": "The sign-in response was sent to another address.",
    "saml_recipient_mismatch": "The sign-in response was meant for another address.",
    "saml_expired": "The sign-in response has expired. Please sign in again.",
    "saml_not_yet_valid": "The sign-in response is not valid yet. Please check the clocks and retry.",
    "saml_in_response_to_mismatch": "The sign-in response does not belong to this sign-in attempt.",
    "saml_unsolicited": "Sign-in started at the identity provider is not allowed here.",
    "saml_subject_confirmation_invalid": "The sign-in response cannot be confirmed for this browser.",
    "saml_no_assertion": "The sign-in response contains no assertion.",
    "saml_multiple_assertions": "The sign-in response contains more than one assertion.",
    "xml_forbidden": "The XML document uses forbidden constructs.",
}


def _fail(code: str, detail: str | None = None) -> SamlError:
    return SamlError(code, _MSG[code], detail)


@dataclass(frozen=True, slots=True)
class ResponseExpectations:
    """What the connection and the pending login expect of a Response (all trust comes from here)."""

    idp_entity_id: str
    sp_entity_id: str  # the audience we require
    acs_url: str  # Destination / Recipient must equal this
    idp_certificates: tuple[str, ...]  # PEM certs from the connection's metadata; the ONLY trust anchors
    in_response_to: str | None  # the pending AuthnRequest ID of this browser; None = no pending request
    allow_unsolicited: bool
    now: float  # epoch seconds (injected clock)
    clock_skew: float = 120.0
    want_assertions_signed: bool = True
    allow_sha1: bool = False
    allow_legacy_encryption: bool = False
    sp_decryption_keys: tuple[bytes, ...] = ()  # PEM private keys for EncryptedAssertion


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """The values of a verified assertion. Treat the dicts as read-only."""

    response_id: str
    assertion_id: str
    issuer: str
    in_response_to: str | None
    name_id: str | None
    name_id_format: str | None
    attributes: dict[str, tuple[str, ...]]  # by Attribute Name; repeated Names merged
    friendly_names: dict[str, str]  # FriendlyName -> Name
    session_index: str | None
    authn_context_class_ref: str | None
    authn_instant: float | None
    session_not_on_or_after: float | None  # AuthnStatement SessionNotOnOrAfter: when the IdP's session ends
    issue_instant: float  # the Assertion's IssueInstant (core 2.3.3: required)
    not_on_or_after: float  # earliest NotOnOrAfter (Conditions / SubjectConfirmationData): replay-cache TTL
    signed_response: bool
    signed_assertion: bool
    encrypted: bool
    warnings: tuple[str, ...] = field(default=())  # e.g. "sha1_signature", "response_signature_invalid"


# --- HTTP-POST binding ----------------------------------------------------------------------------

_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # str.split()'s whitespace within ASCII


def decode_post_binding(saml_response: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Strictly decode the base64 `SAMLResponse` form field (bindings 3.5.4); whitespace is ignored.

    Raises SamlError ``xml_too_large`` or ``saml_response_malformed`` (not base64, truncated, empty).
    """
    if not isinstance(saml_response, str):
        raise _fail("saml_response_malformed", "SAMLResponse is not a string")
    if len(saml_response) > (max_bytes * 4) // 3 + 4096:  # base64 overhead plus line breaks
        raise SamlError("xml_too_large", "The sign-in response is too large.", f"{len(saml_response)} chars")
    if saml_response.isascii():  # bytes.translate: the same whitespace as str.split(), without the pieces
        compact = saml_response.encode("ascii").translate(None, _ASCII_WHITESPACE)
    else:
        try:
            compact = "".join(saml_response.split()).encode("ascii")
        except UnicodeEncodeError:
            raise _fail("saml_response_malformed", "SAMLResponse is not ASCII base64") from None
    if not compact or len(compact) % 4:
        raise _fail("saml_response_malformed", f"SAMLResponse is not valid base64 ({len(compact)} chars)")
    try:
        # strict mode, in C: the base64 alphabet only, and padding only at the end
        data = binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _fail("saml_response_malformed", f"SAMLResponse is not valid base64 ({len(compact)} chars)") from None
    if len(data) > max_bytes:
        raise SamlError("xml_too_large", "The sign-in response is too large.", f"{len(data)} bytes")
    if not data.lstrip().startswith(b"<") and not data.startswith(b"\xef\xbb\xbf"):
        raise _fail("saml_response_malformed", "decoded SAMLResponse is not XML")
    return data


# --- the checklist ----------------------------------------------------------------------------------


def verify_response(xml: bytes, exp: ResponseExpectations) -> VerifiedAssertion:
    """Validate a SAML Response against `exp`; return the verified assertion's values or raise SamlError."""
    warnings: list[str] = []
    root = parse_xml(xml, max_namespace_nodes=MAX_NAMESPACE_NODES)
    _check_no_processing_instructions(root)
    response_id = _check_response_root(root)
    _check_status(root)
    assertion_slot = _locate_single_assertion(root)
    encrypted = assertion_slot.tag == _A + "EncryptedAssertion"

    response_sig = _single_signature(root)
    response_verified: VerifiedElement | None = None
    response_sig_error: SamlError | None = None
    if response_sig is not None:
        try:
            response_verified = verify_signed_element(
                response_sig, exp.idp_certificates, allow_sha1=exp.allow_sha1
            )
        except SamlError as exc:
            if exc.code != "saml_signature_invalid":
                raise
            response_sig_error = exc
        if response_verified is not None and response_verified.element is not root:
            raise _fail("saml_signature_wrapping", "Response signature does not cover the Response")

    if encrypted:
        assertion = _decrypt_assertion(assertion_slot, exp)
    else:
        assertion = assertion_slot

    assertion_verified: VerifiedElement | None = None
    assertion_sig = _single_signature(assertion)
    if assertion_sig is not None:
        assertion_verified = verify_signed_element(
            assertion_sig, exp.idp_certificates, allow_sha1=exp.allow_sha1
        )
        if assertion_verified.element is not assertion:
            raise _fail("saml_signature_wrapping", "Assertion signature does not cover the Assertion")

    # Which signature vouches for the assertion we are about to read?
    if response_sig_error is not None:
        if assertion_verified is None:
            raise response_sig_error
        warnings.append("response_signature_invalid")
    covered_by_response = response_verified is not None and assertion_slot.getparent() is root
    if exp.want_assertions_signed and assertion_verified is None and response_verified is None:
        raise _fail("saml_signature_missing", "neither the Response nor the Assertion is signed")
    if exp.want_assertions_signed and assertion_verified is None:
        raise SamlError("saml_signature_missing",
                        "The identity provider signed the response but not the assertion in it, which this "
                        "connection requires (want_assertions_signed); the IdP must sign the assertion.",
                        "the Assertion is not signed (want_assertions_signed)")
    if assertion_verified is None and not covered_by_response:
        if response_sig is None:
            raise _fail("saml_signature_missing", "neither the Response nor the Assertion is signed")
        raise _fail("saml_signature_wrapping", "no verified signature covers the assertion")
    trusted = assertion_verified.element if assertion_verified is not None else assertion
    if any(v is not None and v.sha1_used for v in (response_verified, assertion_verified)):
        warnings.append("sha1_signature")

    signed_response = response_verified is not None
    # ---- from here on: read only from `root` (verified if signed_response) and `trusted` ----------
    if trusted.get("Version") != "2.0":  # core 2.3.3: a SAML 2.0 assertion says so
        raise _fail("saml_response_malformed", f"Assertion Version {trusted.get('Version')!r}")
    issuer = _check_issuer(root, trusted, exp)
    _check_destination(root, signed_response, exp)
    conditions_end = _check_conditions(trusted, exp)
    subject = _child(trusted, _A + "Subject", required=True)
    assert subject is not None
    try:
        confirmation_end, scd_in_response_to = _check_subject_confirmation(subject, exp)
        in_response_to = _check_in_response_to(root.get("InResponseTo"), scd_in_response_to, signed_response, exp)
    except SamlError as exc:
        if exc.code == "saml_in_response_to_mismatch":
            exc.assertion_id = trusted.get("ID") or None
        raise

    name_id, name_id_format = _read_name_id(subject)
    attributes, friendly, attr_warnings = _read_attributes(trusted)
    warnings.extend(attr_warnings)
    session_index, class_ref, authn_instant, session_end = _read_authn_statement(trusted)
    assertion_id = trusted.get("ID")
    if not assertion_id:
        raise _fail("saml_response_malformed", "Assertion without ID")
    issue_instant = parse_instant(trusted.get("IssueInstant") or "")  # required: a bad one is malformed
    # issued in the future (beyond the skew): a clock far off, or a document minted ahead of its use
    for where, instant in (("Response", root.get("IssueInstant")), ("Assertion", trusted.get("IssueInstant"))):
        if instant and parse_instant(instant) > exp.now + exp.clock_skew:
            raise _fail("saml_not_yet_valid", f"{where} IssueInstant {instant} is in the future")
    ends = [t for t in (conditions_end, confirmation_end) if t is not None]
    return VerifiedAssertion(
        response_id=response_id,
        assertion_id=assertion_id,
        issuer=issuer,
        in_response_to=in_response_to,
        name_id=name_id,
        name_id_format=name_id_format,
        attributes=attributes,
        friendly_names=friendly,
        session_index=session_index,
        authn_context_class_ref=class_ref,
        authn_instant=authn_instant,
        session_not_on_or_after=session_end,
        issue_instant=issue_instant,
        not_on_or_after=min(ends),
        signed_response=signed_response,
        signed_assertion=assertion_verified is not None,
        encrypted=encrypted,
        warnings=tuple(dict.fromkeys(warnings)),
    )


# --- 1-3: structure ---------------------------------------------------------------------------------


def _elements(parent: etree._Element) -> Iterator[etree._Element]:
    for child in parent:
        if isinstance(child.tag, str):
            yield child


def _child(parent: etree._Element, tag: str, *, required: bool = False) -> etree._Element | None:
    found = [c for c in _elements(parent) if c.tag == tag]
    if len(found) > 1:
        raise _fail("saml_response_malformed", f"more than one {tag} in {parent.tag}")
    if not found:
        if required:
            raise _fail("saml_response_malformed", f"missing {tag} in {parent.tag}")
        return None
    return found[0]


def _check_no_processing_instructions(root: etree._Element) -> None:
    tree = root.getroottree()
    for node in tree.getroot().itersiblings(preceding=True):
        if isinstance(node, etree._ProcessingInstruction):
            raise _fail("xml_forbidden", "processing instruction before the document element")
    for _node in root.iter(etree.ProcessingInstruction):
        raise _fail("xml_forbidden", "processing instruction inside the document")
    for node in root.itersiblings():
        if isinstance(node, etree._ProcessingInstruction):
            raise _fail("xml_forbidden", "processing instruction after the document element")


def _check_response_root(root: etree._Element) -> str:
    if root.tag != _P + "Response":
        raise _fail("saml_response_malformed", f"document element is {root.tag!r}, not samlp:Response")
    if root.get("Version") != "2.0":
        raise _fail("saml_response_malformed", f"Response Version {root.get('Version')!r}")
    response_id = root.get("ID")
    if not response_id:
        raise _fail("saml_response_malformed", "Response without ID")
    return response_id


def _check_status(root: etree._Element) -> None:
    """core 3.2.2.2: the top-level StatusCode must be Success; report the second-level code too."""
    status = _child(root, _P + "Status", required=True)
    assert status is not None
    code = _child(status, _P + "StatusCode", required=True)
    assert code is not None
    value = code.get("Value")
    if value == STATUS_SUCCESS:
        return
    codes = [value or ""]
    inner = _child(code, _P + "StatusCode")
    while inner is not None:
        codes.append(inner.get("Value") or "")
        inner = _child(inner, _P + "StatusCode")
    message = _child(status, _P + "StatusMessage")
    text = (message.text or "").strip()[:200] if message is not None else ""
    raise _fail("saml_status", " / ".join(codes) + (f" ({text})" if text else ""))


def _locate_single_assertion(root: etree._Element) -> etree._Element:
    """Exactly one (Encrypted)Assertion, and it must be a direct child of the Response."""
    dupes = find_duplicate_ids(root)
    if dupes:
        raise _fail("saml_signature_wrapping", f"duplicate ID values: {sorted(set(dupes))}")
    kinds = (_A + "Assertion", _A + "EncryptedAssertion")
    everywhere = [el for el in root.iter(*kinds)]
    direct = [el for el in _elements(root) if el.tag in kinds]
    nested = [el for el in everywhere if el.getparent() is not root]
    if nested:
        where = ", ".join(sorted({str(el.getparent().tag) for el in nested}))  # type: ignore[union-attr]
        raise _fail("saml_signature_wrapping", f"assertion nested outside the Response body (in {where})")
    if not direct:
        raise _fail("saml_no_assertion", "no Assertion or EncryptedAssertion")
    if len(direct) > 1:
        raise _fail("saml_multiple_assertions", f"{len(direct)} assertions")
    return direct[0]


def _single_signature(parent: etree._Element) -> etree._Element | None:
    sigs = [c for c in _elements(parent) if c.tag == _DS + "Signature"]
    if len(sigs) > 1:
        raise _fail("saml_signature_wrapping", f"{len(sigs)} signatures on {parent.tag}")
    return sigs[0] if sigs else None


# --- 5: decryption --------------------------------------------------------------------------------


def _decrypt_assertion(slot: etree._Element, exp: ResponseExpectations) -> etree._Element:
    """XML Encryption 1.1: decrypt saml:EncryptedAssertion in place; return the saml:Assertion."""
    children = list(_elements(slot))
    data_nodes = [c for c in children if c.tag == _XENC + "EncryptedData"]
    if len(data_nodes) != 1 or any(
        c.tag not in (_XENC + "EncryptedData", _XENC + "EncryptedKey") for c in children
    ):
        raise _fail(
            "saml_response_malformed", "EncryptedAssertion must hold one EncryptedData (+ EncryptedKey)"
        )
    enc_data = data_nodes[0]
    if not exp.sp_decryption_keys:
        raise _fail("saml_decryption_failed", "encrypted assertion but no SP decryption key configured")
    _check_encryption_algorithms(slot, enc_data, exp)
    xmlsec.tree.add_ids(slot, ["Id"])  # detached EncryptedKey referenced by ds:RetrievalMethod (Okta)
    failures: list[str] = []
    for index, key_pem in enumerate(exp.sp_decryption_keys):
        try:
            ctx = xmlsec.EncryptionContext(_decryption_manager(key_pem))
            decrypted = ctx.decrypt(enc_data)
        except xmlsec.Error as exc:
            failures.append(f"key #{index}: {exc}")
            continue
        break
    else:
        raise _fail("saml_decryption_failed", "; ".join(failures))
    if not isinstance(decrypted, etree._Element) or decrypted.tag != _A + "Assertion":
        raise _fail("saml_decryption_failed", "decrypted content is not a saml:Assertion")
    contents = [c for c in _elements(slot) if c.tag != _XENC + "EncryptedKey"]
    if contents != [decrypted] or decrypted.getparent() is not slot:
        raise _fail("saml_signature_wrapping", "decrypted content is not exactly one Assertion")
    root = slot.getroottree().getroot()
    dupes = find_duplicate_ids(root)
    if dupes:
        raise _fail("saml_signature_wrapping", f"duplicate ID values after decryption: {sorted(set(dupes))}")
    if sum(1 for _ in root.iter(_A + "Assertion")) != 1:
        raise _fail("saml_signature_wrapping", "decrypted content carries extra assertions")
    # the SP's encryption certificate is public: what was encrypted to it is as untrusted as the rest, and
    # its signature is yet to be verified (canonicalized): the same shape limits as a parsed document
    check_shape(root, DEFAULT_MAX_DEPTH, MAX_NAMESPACE_NODES)
    _check_no_processing_instructions(decrypted)
    return decrypted


_managers = threading.local()


def _decryption_manager(key_pem: bytes) -> xmlsec.KeysManager:
    """A keys manager holding one SP decryption key, made once per key and thread (making one costs ~10 ms,
    most of it setting up an X.509 store; a thread's own copy is never shared while in use)."""
    cache: dict[bytes, xmlsec.KeysManager] | None = getattr(_managers, "cache", None)
    if cache is None:
        cache = _managers.cache = {}
    manager = cache.get(key_pem)
    if manager is None:
        if len(cache) > 64:
            cache.clear()
        manager = xmlsec.KeysManager()
        manager.add_key(xmlsec.Key.from_memory(key_pem, xmlsec.constants.KeyDataFormatPem, None))
        cache[key_pem] = manager
    return manager


def _check_encryption_algorithms(
    slot: etree._Element, enc_data: etree._Element, exp: ResponseExpectations
) -> None:
    def method(node: etree._Element) -> str:
        em = _child(node, _XENC + "EncryptionMethod")
        alg = em.get("Algorithm") if em is not None else None
        if not alg:
            raise _fail("saml_decryption_failed", f"{node.tag} without EncryptionMethod")
        return alg

    data_alg = method(enc_data)
    if data_alg in LEGACY_DATA_ENCRYPTION and not exp.allow_legacy_encryption:
        raise _fail(
            "saml_algorithm_refused", f"content encryption {data_alg} without allow_legacy_encryption"
        )
    if data_alg not in DATA_ENCRYPTION | LEGACY_DATA_ENCRYPTION:
        raise _fail("saml_algorithm_refused", f"content encryption {data_alg!r}")
    # Every key-bearing node must be local: no CipherReference, no remote RetrievalMethod.
    for node in slot.iter(_XENC + "CipherReference"):
        raise _fail("saml_decryption_failed", f"CipherReference is not allowed ({node.get('URI')!r})")
    for node in slot.iter(_DS + "RetrievalMethod"):
        uri = node.get("URI") or ""
        key_info = node.getparent()
        if not uri.startswith("#") or key_info is None or key_info.getparent() is not enc_data:
            raise _fail(
                "saml_decryption_failed", f"RetrievalMethod must reference a local EncryptedKey ({uri!r})"
            )
        targets = [k for k in slot.iter(_XENC + "EncryptedKey") if k.get("Id") == uri[1:]]
        if len(targets) != 1:
            raise _fail("saml_decryption_failed", f"RetrievalMethod target {uri!r} not found")
        if _child(node, _DS + "Transforms") is not None:
            raise _fail("saml_decryption_failed", "RetrievalMethod with transforms")
    for node in slot.iter(_DS + "KeyInfoReference", _DS + "X509Data", _DS + "KeyValue"):
        parent = node.getparent()
        if parent is not None and parent.getparent() is enc_data:
            raise _fail("saml_decryption_failed", f"{node.tag} is not a usable key for EncryptedData")
    keys = list(slot.iter(_XENC + "EncryptedKey"))
    if not keys:
        raise _fail("saml_decryption_failed", "no EncryptedKey")
    for key in keys:
        alg = method(key)
        if alg in LEGACY_KEY_TRANSPORT and not exp.allow_legacy_encryption:
            raise _fail("saml_algorithm_refused", f"key transport {alg} without allow_legacy_encryption")
        if alg not in KEY_TRANSPORT | LEGACY_KEY_TRANSPORT:
            raise _fail("saml_algorithm_refused", f"key transport {alg!r}")


# --- 7: values, read from the verified elements only ----------------------------------------------


def _text(el: etree._Element, *, strip: bool = True) -> str:
    """The full text of a leaf element; a comment/PI/child element inside it is refused."""
    for child in el:
        if isinstance(child, etree._Comment | etree._ProcessingInstruction):
            raise _fail("xml_forbidden", f"comment or processing instruction inside {el.tag}")
        raise _fail("saml_response_malformed", f"unexpected element inside {el.tag}")
    text = el.text or ""
    return text.strip() if strip else text


def _check_issuer(root: etree._Element, assertion: etree._Element, exp: ResponseExpectations) -> str:
    """core 2.2.5 / profiles 4.1.4.2: the Assertion Issuer (and a Response Issuer, if any) is the IdP."""
    issuer_el = _child(assertion, _A + "Issuer", required=True)
    assert issuer_el is not None
    issuer = _text(issuer_el)
    if issuer != exp.idp_entity_id:
        raise _fail("saml_issuer_mismatch", f"Assertion Issuer {issuer!r} != {exp.idp_entity_id!r}")
    response_issuer = _child(root, _A + "Issuer")
    if response_issuer is not None and _text(response_issuer) != exp.idp_entity_id:
        raise _fail("saml_issuer_mismatch", f"Response Issuer {_text(response_issuer)!r}")
    return issuer


def _check_destination(root: etree._Element, signed_response: bool, exp: ResponseExpectations) -> None:
    """bindings 3.5.5.2: Destination must be our ACS URL; it may be absent only on an unsigned Response."""
    destination = root.get("Destination")
    if destination is None:
        if signed_response:
            raise _fail("saml_destination_mismatch", "signed Response without Destination")
        return
    if destination != exp.acs_url:
        raise _fail("saml_destination_mismatch", f"Destination {destination!r} != {exp.acs_url!r}")


def _check_window(start: str | None, end: str | None, exp: ResponseExpectations, where: str) -> float | None:
    """core 2.5.1.2: NotBefore <= now < NotOnOrAfter, each side widened by the clock skew."""
    if start is not None:
        not_before = parse_instant(start)
        if exp.now + exp.clock_skew < not_before:
            raise _fail("saml_not_yet_valid", f"{where} NotBefore {start}")
    if end is None:
        return None
    not_on_or_after = parse_instant(end)
    if exp.now - exp.clock_skew >= not_on_or_after:
        raise _fail("saml_expired", f"{where} NotOnOrAfter {end}")
    return not_on_or_after


def _check_conditions(assertion: etree._Element, exp: ResponseExpectations) -> float | None:
    conditions = _child(assertion, _A + "Conditions")
    if conditions is None:
        raise _fail("saml_audience_mismatch", "no Conditions / AudienceRestriction")
    end = _check_window(conditions.get("NotBefore"), conditions.get("NotOnOrAfter"), exp, "Conditions")
    restrictions = [c for c in _elements(conditions) if c.tag == _A + "AudienceRestriction"]
    if not restrictions:
        raise _fail("saml_audience_mismatch", "no AudienceRestriction")
    for restriction in restrictions:  # core 2.5.1.4: we must be in every AudienceRestriction
        audiences = [_text(a) for a in _elements(restriction) if a.tag == _A + "Audience"]
        if exp.sp_entity_id not in audiences:
            raise _fail(
                "saml_audience_mismatch", f"audiences {audiences!r} do not include {exp.sp_entity_id!r}"
            )
    return end


def _check_subject_confirmation(
    subject: etree._Element, exp: ResponseExpectations
) -> tuple[float, str | None]:
    """profiles 4.1.4.2-3: one bearer SubjectConfirmation with Recipient, NotOnOrAfter, InResponseTo."""
    errors: list[SamlError] = []
    for sc in _elements(subject):
        if sc.tag != _A + "SubjectConfirmation" or sc.get("Method") != CM_BEARER:
            continue
        try:
            return _check_bearer(sc, exp)
        except SamlError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    raise _fail("saml_subject_confirmation_invalid", "no bearer SubjectConfirmation")


def _check_bearer(sc: etree._Element, exp: ResponseExpectations) -> tuple[float, str | None]:
    data = _child(sc, _A + "SubjectConfirmationData")
    if data is None:
        raise _fail("saml_subject_confirmation_invalid", "bearer without SubjectConfirmationData")
    recipient = data.get("Recipient")
    if recipient != exp.acs_url:
        raise _fail("saml_recipient_mismatch", f"Recipient {recipient!r} != {exp.acs_url!r}")
    if data.get("NotOnOrAfter") is None:
        raise _fail(
            "saml_subject_confirmation_invalid", "bearer SubjectConfirmationData without NotOnOrAfter"
        )
    end = _check_window(data.get("NotBefore"), data.get("NotOnOrAfter"), exp, "SubjectConfirmationData")
    assert end is not None
    irt = data.get("InResponseTo") or None  # InResponseTo="" (some IdPs' IdP-initiated answers): none
    if irt is not None and irt != exp.in_response_to:
        raise _fail("saml_in_response_to_mismatch", f"SubjectConfirmationData InResponseTo {irt!r}")
    return end, irt


def _check_in_response_to(
    response_irt: str | None, scd_irt: str | None, signed_response: bool, exp: ResponseExpectations
) -> str | None:
    """profiles 4.1.4.3: a solicited Response answers this browser's pending request, and only it.

    Any InResponseTo that is present must be the pending request's; but only a signed one can make the
    answer solicited: the SubjectConfirmationData's (inside the signed assertion), or the Response's when the
    Response itself is signed. Otherwise anyone holding an IdP-initiated assertion could add their own
    request's ID to an unsigned Response around it and pass it off as solicited where unsolicited answers
    are refused."""
    response_irt = response_irt or None  # an empty InResponseTo names no request
    present = [v for v in (response_irt, scd_irt) if v is not None]
    if exp.in_response_to is None:
        if present:
            raise _fail("saml_in_response_to_mismatch", f"InResponseTo {present[0]!r} but no pending request")
    elif any(v != exp.in_response_to for v in present):
        raise _fail("saml_in_response_to_mismatch", f"InResponseTo {present!r} != {exp.in_response_to!r}")
    vouched = scd_irt is not None or (response_irt is not None and signed_response)
    if not vouched:
        if not exp.allow_unsolicited:
            detail = ("InResponseTo only on the unsigned Response" if present
                      else "Response without InResponseTo (IdP-initiated)")
            raise _fail("saml_unsolicited", detail)
        return None
    return exp.in_response_to


def _read_name_id(subject: etree._Element) -> tuple[str | None, str | None]:
    name_id = _child(subject, _A + "NameID")
    if name_id is None:
        if _child(subject, _A + "EncryptedID") is not None:
            raise _fail("saml_response_malformed", "EncryptedID is not supported")
        return None, None
    return _text(name_id), name_id.get("Format")


def _read_attributes(
    assertion: etree._Element,
) -> tuple[dict[str, tuple[str, ...]], dict[str, str], list[str]]:
    values: dict[str, list[str]] = {}
    friendly: dict[str, str] = {}
    warnings: list[str] = []
    for statement in _elements(assertion):
        if statement.tag != _A + "AttributeStatement":
            continue
        for attribute in _elements(statement):
            if attribute.tag != _A + "Attribute":
                if attribute.tag == _A + "EncryptedAttribute":
                    warnings.append("encrypted_attribute_ignored")
                continue
            name = attribute.get("Name")
            if not name:
                raise _fail("saml_response_malformed", "Attribute without Name")
            bucket = values.setdefault(name, [])
            if attribute.get("FriendlyName"):
                friendly.setdefault(attribute.get("FriendlyName", ""), name)
            for value_el in _elements(attribute):
                if value_el.tag != _A + "AttributeValue":
                    continue
                value = _attribute_value(value_el)
                if value is None:
                    warnings.append("complex_attribute_value_ignored")
                else:
                    bucket.append(value)
    return {k: tuple(v) for k, v in values.items()}, friendly, warnings


def _attribute_value(el: etree._Element) -> str | None:
    """A string value; a value holding one saml:NameID (e.g. eduPersonTargetedID) yields its text."""
    if el.get(f"{{{XSI_NS}}}nil") in ("true", "1"):
        return ""
    children = list(el)
    if not children:
        return el.text or ""
    if any(isinstance(c, etree._Comment | etree._ProcessingInstruction) for c in children):
        raise _fail("xml_forbidden", "comment or processing instruction inside AttributeValue")
    if len(children) == 1 and children[0].tag == _A + "NameID" and not (el.text or "").strip():
        return _text(children[0])
    return None


def _read_authn_statement(
        assertion: etree._Element) -> tuple[str | None, str | None, float | None, float | None]:
    """SessionIndex, AuthnContextClassRef, AuthnInstant and SessionNotOnOrAfter of the first AuthnStatement."""
    statements = [c for c in _elements(assertion) if c.tag == _A + "AuthnStatement"]
    if not statements:  # profiles 4.1.4.2 wants one, but Keycloak's answers may carry none: no acr, no auth_time
        return None, None, None, None
    statement = statements[0]
    instant = statement.get("AuthnInstant")
    class_ref: str | None = None
    context = _child(statement, _A + "AuthnContext")
    if context is not None:
        ref = _child(context, _A + "AuthnContextClassRef")
        if ref is not None:
            class_ref = _text(ref)
    session_end = statement.get("SessionNotOnOrAfter")
    return (statement.get("SessionIndex"), class_ref, parse_instant(instant) if instant else None,
            parse_instant(session_end) if session_end else None)


# --- xs:dateTime ------------------------------------------------------------------------------------

_INSTANT_RE = re.compile(
    r"^\s*([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?\s*\Z"
)


def parse_instant(value: str) -> float:
    """xs:dateTime (core 1.3.3: UTC, any fraction of seconds) to epoch seconds; no zone = UTC."""
    m = _INSTANT_RE.match(value)
    if not m:
        raise _fail("saml_response_malformed", f"bad timestamp {value[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone = m.group(8)
    zone_hours, zone_minutes = (int(zone[1:3]), int(zone[4:6])) if zone and zone != "Z" else (0, 0)
    # ASCII digits only (the pattern), a real calendar date (no 31 February, no year 0), a leap second
    # (:60) tolerated as the next second, and a zone within xs:dateTime's ±14:00
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour <= 23 and minute <= 59 and second <= 60
            and zone_minutes <= 59 and zone_hours * 60 + zone_minutes <= 14 * 60):
        raise _fail("saml_response_malformed", f"bad timestamp {value[:40]!r}")
    epoch = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if m.group(7):
        epoch += float("0" + m.group(7)[:10])
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        epoch -= sign * (zone_hours * 3600 + zone_minutes * 60)
    return epoch

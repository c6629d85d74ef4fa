"""XML-DSig verification of one enveloped signature with the xmlsec library, against our certificates only.

:func:`verify_signed_element` returns the element the signature's single Reference actually covers
(a :class:`VerifiedElement`), never a bool: callers read values from that element and nothing else.

Rules (XML-DSig core 1.1; SAML core 5.4; the usual signature-wrapping defences):

* the key comes only from the caller's PEM certificates, tried in order (key rollover); any KeyInfo in
  the message is ignored (xmlsec is given the key and no keys manager, and KeyInfo processing is off);
* algorithms are on an allow-list: RSA-SHA256/384/512 and ECDSA-SHA256/384/512 signatures, SHA-256/384/512
  digests; RSA-SHA1 / ECDSA-SHA1 / SHA-1 digests only with ``allow_sha1``; transforms limited to
  enveloped-signature and the (exclusive) canonicalization variants; no XPath/XSLT, no ds:Object;
* exactly one Reference, whose URI is ``#<ID>`` of the signature's parent element (or ``""`` / no URI
  when the parent is the document element, which then is exactly what ``""`` denotes);
* the ``ID`` value must be unique in the whole document (no look-alike targets for the resolver).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import xmlsec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from lxml import etree

from .errors import SamlError

_Transform = Any  # xmlsec's transform constants (their type exists only in xmlsec's stubs)

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_DS = f"{{{DS_NS}}}"

_ALG_RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
_ALG_ECDSA_SHA1 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1"
_ALG_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"

SIGNATURE_ALGORITHMS: dict[str, _Transform] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": xmlsec.constants.TransformRsaSha256,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": xmlsec.constants.TransformRsaSha384,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": xmlsec.constants.TransformRsaSha512,
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": xmlsec.constants.TransformEcdsaSha256,
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384": xmlsec.constants.TransformEcdsaSha384,
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512": xmlsec.constants.TransformEcdsaSha512,
}
SHA1_SIGNATURE_ALGORITHMS: dict[str, _Transform] = {
    _ALG_RSA_SHA1: xmlsec.constants.TransformRsaSha1,
    _ALG_ECDSA_SHA1: xmlsec.constants.TransformEcdsaSha1,
}
DIGEST_ALGORITHMS: dict[str, _Transform] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": xmlsec.constants.TransformSha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": xmlsec.constants.TransformSha384,
    "http://www.w3.org/2001/04/xmlenc#sha512": xmlsec.constants.TransformSha512,
}
SHA1_DIGEST_ALGORITHMS: dict[str, _Transform] = {_ALG_SHA1: xmlsec.constants.TransformSha1}
C14N_ALGORITHMS: dict[str, _Transform] = {
    "http://www.w3.org/2001/10/xml-exc-c14n#": xmlsec.constants.TransformExclC14N,
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments": xmlsec.constants.TransformExclC14NWithComments,
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315": xmlsec.constants.TransformInclC14N,
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments": (
        xmlsec.constants.TransformInclC14NWithComments
    ),
    "http://www.w3.org/2006/12/xml-c14n11": xmlsec.constants.TransformInclC14N11,
    "http://www.w3.org/2006/12/xml-c14n11#WithComments": xmlsec.constants.TransformInclC14N11WithComments,
}
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
REFERENCE_TRANSFORMS: dict[str, _Transform] = {
    ENVELOPED: xmlsec.constants.TransformEnveloped,
    **C14N_ALGORITHMS,
}
# Attributes that act as XML IDs somewhere in SAML / XML-Enc / XML-DSig documents.
ID_ATTRIBUTES = ("ID", "Id", "id", "AssertionID", "{http://www.w3.org/XML/1998/namespace}id")


@dataclass(frozen=True, slots=True)
class VerifiedElement:
    """The element a verified signature covers, and how it was signed.

    `element` is the signature's parent, i.e. the node the single Reference points to; read values only
    from it. `sha1_used` is True when the signature or digest algorithm was SHA-1 (only possible with
    ``allow_sha1``; callers add a warning). `certificate_index` is the position of the certificate that
    verified it in the list the caller gave.
    """

    element: etree._Element
    sha1_used: bool
    certificate_index: int


def _refuse(code: str, detail: str) -> SamlError:
    messages = {
        "saml_signature_invalid": "The identity provider's signature could not be verified.",
        "saml_signature_wrapping": "The SAML message is structured in a way that is not allowed.",
        "saml_algorithm_refused": "The identity provider used a signature algorithm that is not allowed.",
        "saml_signature_missing": "The SAML message is not signed.",
    }
    return SamlError(code, messages[code], detail)


def _algorithm(parent: etree._Element, tag: str) -> str:
    nodes = [c for c in parent if c.tag == _DS + tag]
    if len(nodes) != 1:
        raise _refuse("saml_signature_invalid", f"expected exactly one ds:{tag}, found {len(nodes)}")
    alg = nodes[0].get("Algorithm")
    if not isinstance(alg, str) or not alg:
        raise _refuse("saml_signature_invalid", f"ds:{tag} without Algorithm")
    return alg


# every ID_ATTRIBUTES attribute of `root` and the elements under it, in one libxml2 pass
_ID_VALUES = etree.XPath(" | ".join(
    f"descendant-or-self::*/@{'xml:id' if attr == '{http://www.w3.org/XML/1998/namespace}id' else attr}"
    for attr in ID_ATTRIBUTES))


def find_duplicate_ids(root: etree._Element) -> list[str]:
    """Every ID-like attribute value that occurs more than once in the tree of `root`."""
    seen: set[str] = set()
    dupes: list[str] = []
    values = _ID_VALUES(root)
    assert isinstance(values, list)
    for value in values:
        text = str(value)
        if text in seen:
            dupes.append(text)
        seen.add(text)
    return dupes


def _check_structure(signature: etree._Element) -> tuple[etree._Element, etree._Element]:
    """Signature = SignedInfo, SignatureValue, KeyInfo?: nothing else (no ds:Object, no smuggled nodes)."""
    children = [c for c in signature if isinstance(c.tag, str)]
    tags = [c.tag for c in children]
    if _DS + "Object" in tags:
        raise _refuse("saml_signature_wrapping", "ds:Object inside the signature")
    allowed = [
        [_DS + "SignedInfo", _DS + "SignatureValue"],
        [_DS + "SignedInfo", _DS + "SignatureValue", _DS + "KeyInfo"],
    ]
    if tags not in allowed:
        raise _refuse("saml_signature_wrapping", f"unexpected signature children {tags}")
    return children[0], children[1]


def verify_signed_element(
    signature: etree._Element, certificates: Sequence[str], *, allow_sha1: bool
) -> VerifiedElement:
    """Verify one enveloped ds:Signature against `certificates`; return the element it covers.

    Raises SamlError ``saml_signature_invalid`` (does not verify with any certificate, malformed),
    ``saml_algorithm_refused`` (not on the allow-list), ``saml_signature_wrapping`` (reference or ID
    tricks, duplicate IDs, extra content in the signature).
    """
    if signature.tag != _DS + "Signature":
        raise _refuse("saml_signature_invalid", f"not a ds:Signature: {signature.tag!r}")
    parent = signature.getparent()
    if parent is None:
        raise _refuse("saml_signature_wrapping", "signature is the document element")
    if not certificates:
        raise _refuse("saml_signature_invalid", "no trusted certificates configured")
    signed_info, _ = _check_structure(signature)

    # --- algorithms (allow-list) -------------------------------------------------------------
    sha1_used = False
    c14n = _algorithm(signed_info, "CanonicalizationMethod")
    if c14n not in C14N_ALGORITHMS:
        raise _refuse("saml_algorithm_refused", f"canonicalization {c14n!r}")
    sig_alg = _algorithm(signed_info, "SignatureMethod")
    if sig_alg in SHA1_SIGNATURE_ALGORITHMS:
        if not allow_sha1:
            raise _refuse("saml_algorithm_refused", f"SHA-1 signature {sig_alg!r} without allow_sha1")
        sha1_used = True
    elif sig_alg not in SIGNATURE_ALGORITHMS:
        raise _refuse("saml_algorithm_refused", f"signature algorithm {sig_alg!r}")
    references = [c for c in signed_info if c.tag == _DS + "Reference"]
    if len(references) != 1:
        raise _refuse(
            "saml_signature_wrapping", f"expected exactly one ds:Reference, found {len(references)}"
        )
    reference = references[0]
    digest_alg = _algorithm(reference, "DigestMethod")
    if digest_alg in SHA1_DIGEST_ALGORITHMS:
        if not allow_sha1:
            raise _refuse("saml_algorithm_refused", f"SHA-1 digest {digest_alg!r} without allow_sha1")
        sha1_used = True
    elif digest_alg not in DIGEST_ALGORITHMS:
        raise _refuse("saml_algorithm_refused", f"digest algorithm {digest_alg!r}")
    transforms_parent = [c for c in reference if c.tag == _DS + "Transforms"]
    transforms: list[str] = []
    if len(transforms_parent) > 1:
        raise _refuse("saml_signature_invalid", "more than one ds:Transforms")
    for t in transforms_parent[0] if transforms_parent else ():
        if not isinstance(t.tag, str):
            continue
        if t.tag != _DS + "Transform":
            raise _refuse("saml_signature_invalid", f"unexpected node in ds:Transforms: {t.tag!r}")
        alg = t.get("Algorithm") or ""
        if alg not in REFERENCE_TRANSFORMS:
            raise _refuse("saml_algorithm_refused", f"transform {alg!r}")
        transforms.append(alg)
    if len(transforms) > 2:
        raise _refuse("saml_algorithm_refused", f"too many transforms: {transforms}")

    # --- the reference must name the signature's parent, by a unique ID ------------------------
    uri = reference.get("URI")
    root = parent.getroottree().getroot()
    dupes = find_duplicate_ids(root)
    if dupes:
        raise _refuse("saml_signature_wrapping", f"duplicate ID values in the document: {sorted(set(dupes))}")
    id_value = parent.get("ID")
    if not uri and parent is root:
        pass  # "" (or no URI) is the whole document, i.e. exactly the parent (XML-DSig 4.4.3.3)
    elif uri is None or not id_value or uri != "#" + id_value:
        raise _refuse(
            "saml_signature_wrapping",
            f"reference URI {uri!r} does not point to the signed element (ID {id_value!r})",
        )

    # --- cryptographic verification with xmlsec, key from our certificates only ----------------
    enabled_signature = [C14N_ALGORITHMS[c14n], _signature_transform(sig_alg)]
    enabled_reference = [REFERENCE_TRANSFORMS[a] for a in transforms] + [_digest_transform(digest_alg)]
    failures: list[str] = []
    for index, pem in enumerate(certificates):
        key = _load_certificate_key(pem)
        ctx = xmlsec.SignatureContext()
        if id_value:
            try:
                ctx.register_id(parent, "ID")
            except xmlsec.Error as exc:
                raise _refuse("saml_signature_wrapping", f"ID registration failed: {exc}") from None
        ctx.set_enabled_key_data([])  # never read keys from the message's KeyInfo
        for transform in enabled_signature:
            ctx.enable_signature_transform(transform)
        for transform in enabled_reference:
            ctx.enable_reference_transform(transform)
        ctx.key = key
        try:
            ctx.verify(signature)
        except (xmlsec.VerificationError, xmlsec.Error) as exc:
            failures.append(f"certificate #{index}: {exc}")
            continue
        return VerifiedElement(element=parent, sha1_used=sha1_used, certificate_index=index)
    raise _refuse("saml_signature_invalid", "; ".join(failures))


def _signature_transform(alg: str) -> _Transform:
    return SIGNATURE_ALGORITHMS.get(alg) or SHA1_SIGNATURE_ALGORITHMS[alg]


def _digest_transform(alg: str) -> _Transform:
    return DIGEST_ALGORITHMS.get(alg) or SHA1_DIGEST_ALGORITHMS[alg]


@lru_cache(maxsize=256)
def _load_certificate_key(pem: str) -> xmlsec.Key:
    """The public key of one PEM certificate, cached; xmlsec copies the key into each context.

    Loaded as a bare public key: a key loaded from the certificate carries the certificate along, and xmlsec
    duplicates it (twice, each a DER round trip) and derives its type anew on every verification, about a
    tenth of an ACS request's work. Nothing reads the certificate there: KeyInfo is off and no keys manager
    checks trust. A certificate cryptography cannot read is loaded as before, whole."""
    try:
        data = pem.encode("ascii")
    except UnicodeEncodeError as exc:
        raise _refuse("saml_signature_invalid", f"unusable trusted certificate: {exc}") from None
    try:
        with warnings.catch_warnings():  # a non-RFC 5280 certificate (negative serial...) is the IdP's; still used
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            public_key = x509.load_pem_x509_certificate(data).public_key()
        spki = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        return xmlsec.Key.from_memory(spki, xmlsec.constants.KeyDataFormatPem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm, xmlsec.Error):
        pass
    try:
        return xmlsec.Key.from_memory(data, xmlsec.constants.KeyDataFormatCertPem, None)
    except (xmlsec.Error, ValueError) as exc:
        raise _refuse("saml_signature_invalid", f"unusable trusted certificate: {exc}") from None

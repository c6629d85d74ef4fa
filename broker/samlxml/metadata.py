"""IdP metadata -> IdpMetadata: entityID, SSO/SLO endpoints, certificates with expiry, and warnings.

Reads SAML 2.0 metadata (saml-metadata-2.0-os) as uploaded by an admin or fetched from a metadata URL:
an EntityDescriptor, or an EntitiesDescriptor aggregate from which one IdP is picked by entityID. Only the
SAML 2.0 IDPSSODescriptor is read; WS-Federation RoleDescriptors, SP and attribute-authority roles are
ignored.
The metadata signature is not checked here: the uploaded document itself is the trust anchor.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import warnings as pywarnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from lxml import etree

from broker.samlxml.errors import SamlError
from broker.samlxml.parser import parse_xml

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SAML2_PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
BINDING_HTTP_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_HTTP_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
LOGIN_BINDINGS = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST)

EXPIRY_WARNING_DAYS = 30
WEAK_CERT_HASHES = frozenset({"sha1", "md5", "md2", "md4"})
DEFAULT_MAX_BYTES = 2 * 1024 * 1024

_MD = f"{{{MD_NS}}}"
_DS = f"{{{DS_NS}}}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    binding: str
    location: str


@dataclass(frozen=True, slots=True)
class IdpCertificate:
    pem: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    sha256_fingerprint: str  # "AB:CD:..." upper-case hex, as admin consoles show it
    signature_hash: str  # hash of the certificate's own signature: "sha256", "sha1", "md5", or an OID


@dataclass(frozen=True, slots=True)
class IdpMetadata:
    entity_id: str
    sso_endpoints: tuple[Endpoint, ...]
    slo_endpoints: tuple[Endpoint, ...]
    signing_certificates: tuple[IdpCertificate, ...]
    encryption_certificates: tuple[IdpCertificate, ...]
    name_id_formats: tuple[str, ...]
    want_authn_requests_signed: bool
    valid_until: datetime | None
    cache_duration_seconds: int | None
    warnings: tuple[str, ...]

    def sso_endpoint(self, binding: str) -> Endpoint | None:
        """The first SSO endpoint for `binding` (a full binding URN), or None."""
        for ep in self.sso_endpoints:
            if ep.binding == binding:
                return ep
        return None


# Every signature of a Response is tried against each signing certificate: a metadata document with hundreds
# would make any anonymous post cost seconds of CPU.
MAX_SIGNING_CERTIFICATES = 10


def _invalid(message: str, detail: str | None = None) -> SamlError:
    return SamlError("metadata_invalid", message, detail)


# --- entry point ------------------------------------------------------------------------------


def parse_idp_metadata(
    data: bytes, *, entity_id: str | None = None, now: datetime, max_bytes: int = DEFAULT_MAX_BYTES
) -> IdpMetadata:
    """Parse IdP metadata with the hardened parser. Raises SamlError("metadata_invalid", <what is wrong>)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    root = _parse(data, max_bytes)
    entity = _select_entity(root, entity_id)
    eid = entity.get("entityID") or ""
    if not eid.strip():  # required by saml-metadata §2.3.2; it is the Issuer every response is checked against
        raise _invalid("The metadata's EntityDescriptor has no entityID: an identity provider must have one.")
    idp = _idp_descriptor(entity)
    if idp is None:
        raise _invalid(
            f"The metadata for {eid!r} has no IDPSSODescriptor for SAML 2.0: it does not describe an "
            "identity provider (is it a service provider's metadata?)."
        )

    warnings: list[str] = []
    sso = _endpoints(idp, "SingleSignOnService", warnings)
    slo = _endpoints(idp, "SingleLogoutService", warnings)
    signing, encryption, unreadable = _certificates(idp, warnings)
    if not signing and unreadable:
        were = "certificate was" if len(unreadable) == 1 else "certificates were"
        raise _invalid(
            f"The IDPSSODescriptor of {eid!r} has no usable signing certificate: {len(unreadable)} signing "
            f"{were} present but unreadable or unusable ({'; '.join(unreadable)}); responses from this IdP could "
            "not be verified."
        )
    if not signing:
        raise _invalid(
            f"The IDPSSODescriptor of {eid!r} has no signing certificate (KeyDescriptor with an "
            "X509Certificate): responses from this IdP could not be verified."
        )
    if len(signing) > MAX_SIGNING_CERTIFICATES:
        raise _invalid(
            f"The IDPSSODescriptor of {eid!r} lists {len(signing)} different signing certificates; at most "
            f"{MAX_SIGNING_CERTIFICATES} are accepted (a signature is tried against each one, on every sign-in). "
            "An IdP rolling over its key lists two or three."
        )
    name_id_formats = tuple(
        dict.fromkeys(t for t in (_text(e) for e in idp.iterchildren(f"{_MD}NameIDFormat")) if t)
    )
    want_signed = _xs_bool(idp.get("WantAuthnRequestsSigned"), "WantAuthnRequestsSigned")
    valid_until, cache_duration = _validity(entity, warnings)

    if not any(ep.binding in LOGIN_BINDINGS for ep in sso):
        warnings.append(
            "no_sso_endpoint: the IdP publishes no SingleSignOnService with the HTTP-Redirect or HTTP-POST "
            "binding; logins cannot start."
        )
    if valid_until is not None and valid_until <= now:
        warnings.append(f"metadata_expired: the metadata's validUntil {_iso(valid_until)} is in the past.")
    warnings.extend(_sha1_warnings(entity, idp))
    seen: set[str] = set()
    for cert in (*signing, *encryption):
        if cert.sha256_fingerprint in seen:
            continue
        seen.add(cert.sha256_fingerprint)
        warnings.extend(_certificate_warnings(cert, now))

    return IdpMetadata(
        entity_id=eid,
        sso_endpoints=sso,
        slo_endpoints=slo,
        signing_certificates=signing,
        encryption_certificates=encryption,
        name_id_formats=name_id_formats,
        want_authn_requests_signed=want_signed,
        valid_until=valid_until,
        cache_duration_seconds=cache_duration,
        warnings=tuple(warnings),
    )


def signing_certificate_expiry(data: bytes, entity_id: str | None = None, *,
                               max_bytes: int = 64 * 1024 * 1024) -> dict[str, float]:
    """The IdP signing certificates of a metadata document: SHA-256 fingerprint -> notAfter (epoch seconds).
    For the expiry gauge, of documents checked against the operator's size limit when they were saved (hence
    the generous cap); empty when the document cannot be used."""
    try:
        meta = parse_idp_metadata(data, entity_id=entity_id, now=datetime.now(UTC), max_bytes=max_bytes)
    except SamlError:
        return {}
    return {c.sha256_fingerprint: c.not_after.timestamp() for c in meta.signing_certificates}


def to_json(meta: IdpMetadata, *, now: datetime | None = None) -> dict[str, Any]:
    """What the admin API reports after a metadata upload: what was understood, with expiry and warnings."""
    now = now or datetime.now(UTC)
    certs: dict[str, dict[str, Any]] = {}
    for use, group in (("signing", meta.signing_certificates), ("encryption", meta.encryption_certificates)):
        for cert in group:
            entry = certs.get(cert.sha256_fingerprint)
            if entry is None:
                entry = certs[cert.sha256_fingerprint] = {
                    "use": [],
                    "subject": cert.subject,
                    "issuer": cert.issuer,
                    "not_before": _iso(cert.not_before),
                    "not_after": _iso(cert.not_after),
                    "fingerprint": cert.sha256_fingerprint,
                    "signature_hash": cert.signature_hash,
                    "expired": cert.not_after <= now,
                    "days_left": (cert.not_after - now).days,
                }
            entry["use"].append(use)
    signing = {c.sha256_fingerprint for c in meta.signing_certificates}
    return {
        "entity_id": meta.entity_id,
        "entityID": meta.entity_id,  # the same, spelled as in SAML metadata
        "sso": [{"binding": ep.binding, "url": ep.location} for ep in meta.sso_endpoints],
        "slo": [{"binding": ep.binding, "url": ep.location} for ep in meta.slo_endpoints],
        "certificates": list(certs.values()),
        "signing_certificates": [c for fp, c in certs.items() if fp in signing],
        "name_id_formats": list(meta.name_id_formats),
        "want_authn_requests_signed": meta.want_authn_requests_signed,
        "valid_until": _iso(meta.valid_until) if meta.valid_until else None,
        "cache_duration": meta.cache_duration_seconds,
        "warnings": list(meta.warnings),
    }


ALG_NS = "urn:oasis:names:tc:SAML:metadata:algsupport"
SHA1_ALGORITHMS = frozenset({
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    "http://www.w3.org/2000/09/xmldsig#dsa-sha1",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1",
    "http://www.w3.org/2000/09/xmldsig#sha1",
})


def _sha1_warnings(entity: etree._Element, idp: etree._Element) -> list[str]:
    """SHA-1 only: the IdP advertises only SHA-1 signature methods (SAML metadata algsupport), or its metadata
    is itself signed with SHA-1 — logins will be refused unless the connection sets allow_sha1."""
    out: list[str] = []
    advertised = [
        e.get("Algorithm") or ""
        for holder in (entity, idp)
        for ext in holder.iterchildren(f"{_MD}Extensions")
        for e in ext.iterchildren(f"{{{ALG_NS}}}SigningMethod")
    ]
    if advertised and all(a in SHA1_ALGORITHMS for a in advertised):
        out.append("sha1_only: the IdP advertises only SHA-1 signature methods; its logins are refused unless "
                   "the connection sets allow_sha1.")
    methods = [
        e.get("Algorithm") or ""
        for sig in entity.getroottree().getroot().iterchildren(f"{_DS}Signature")
        for e in sig.iter(f"{_DS}SignatureMethod", f"{_DS}DigestMethod")
    ]
    if methods and all(m in SHA1_ALGORITHMS for m in methods):
        out.append("metadata_signed_with_sha1: the metadata document itself is signed with SHA-1; the IdP "
                   "probably signs responses with SHA-1 too (refused unless the connection sets allow_sha1).")
    return out


# --- document and entity selection ------------------------------------------------------------


def metadata_text(data: bytes) -> str | None:
    """IdP metadata as the text it is kept as: UTF-8, a BOM dropped; None for any other encoding (UTF-16,
    Latin-1 with accents, or UTF-16 without a BOM, which decodes with NULs)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _parse(data: bytes, max_bytes: int) -> etree._Element:
    if len(data) > max_bytes:
        raise _invalid(f"The metadata is larger than {max_bytes} bytes.", "xml_too_large")
    # Entra ID serves a UTF-8 BOM; copy-paste adds leading whitespace before the XML declaration.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data = data.lstrip(b" \t\r\n")
    if metadata_text(data) is None:  # kept and shown as UTF-8 text: another encoding would be mangled there
        raise _invalid("The metadata is not UTF-8 text (UTF-16 and other encodings are not accepted); it must be "
                       "served or saved as UTF-8.", "not UTF-8")
    try:
        root = parse_xml(data, max_bytes=max_bytes)
    except SamlError as e:
        raise _invalid(f"The metadata is not acceptable XML: {e.message}", f"{e.code}: {e.detail}") from e
    if root.tag not in (f"{_MD}EntityDescriptor", f"{_MD}EntitiesDescriptor"):
        raise _invalid(
            "The document is not SAML 2.0 metadata: its root element is "
            f"{etree.QName(root).localname!r}, not EntityDescriptor or EntitiesDescriptor."
        )
    return root


def _entities(root: etree._Element) -> list[etree._Element]:
    if root.tag == f"{_MD}EntityDescriptor":
        return [root]
    return [e for e in root.iter(f"{_MD}EntityDescriptor")]


def _select_entity(root: etree._Element, entity_id: str | None) -> etree._Element:
    entities = _entities(root)
    if entity_id is not None:
        for e in entities:
            if e.get("entityID") == entity_id:
                return e
        found = _some_entity_ids(entities) or "none"
        raise _invalid(f"The metadata does not describe the entity {entity_id!r} (it describes: {found}).")
    if len(entities) == 1:
        return entities[0]
    idps = [e for e in entities if _idp_descriptor(e) is not None]
    if len(idps) == 1:
        return idps[0]
    if not idps:
        raise _invalid("The metadata describes no SAML 2.0 identity provider (no IDPSSODescriptor).")
    names = _some_entity_ids(idps)
    raise _invalid(f"The metadata describes several identity providers ({names}); name the entityID to use.")


def _some_entity_ids(entities: list[etree._Element], shown: int = 10) -> str:
    """The first entityIDs of a list, for a message: a federation aggregate holds thousands."""
    names = ", ".join(repr(e.get("entityID"))[:300] for e in entities[:shown])
    return names + (f" and {len(entities) - shown} more" if len(entities) > shown else "")


def _idp_descriptor(entity: etree._Element) -> etree._Element | None:
    for d in entity.iterchildren(f"{_MD}IDPSSODescriptor"):
        if SAML2_PROTOCOL in (d.get("protocolSupportEnumeration") or "").split():
            return d
    return None


def _endpoints(idp: etree._Element, name: str, warnings: list[str]) -> tuple[Endpoint, ...]:
    out: list[Endpoint] = []
    for e in idp.iterchildren(f"{_MD}{name}"):
        binding = (e.get("Binding") or "").strip()
        location = (e.get("Location") or "").strip()
        if not (binding and location):
            continue
        if not _is_web_url(location):
            # The browser is sent to this URL (a 302, or a form the page submits itself): a `javascript:` or
            # `data:` Location from an uploaded document would run script on the broker's origin.
            warnings.append(
                f"endpoint_location_invalid: a {name} Location {location[:200]!r} is not an absolute https:// "
                "or http:// URL and was ignored."
            )
            continue
        if Endpoint(binding, location) not in out:
            out.append(Endpoint(binding, location))
    cleartext = sorted({e.location for e in out if _cleartext(e.location)})
    if cleartext:
        warnings.append(
            f"endpoint_not_https: the {name} Location {cleartext[0][:200]!r} is http://: the browser's way to the "
            "IdP (and back) would travel unencrypted. Ask the IdP's admin for https:// metadata."
        )
    return tuple(out)


def _cleartext(location: str) -> bool:
    """An http:// URL to a host other than this machine (a local test IdP is fine). Loopback as
    broker.upstream.sources.is_loopback_host has it (samlxml stands alone, so it is not imported)."""
    parts = urlsplit(location)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _is_web_url(location: str) -> bool:
    """An absolute http(s) URL with a host, and nothing a browser would silently strip or re-interpret
    (whitespace, control characters, backslashes)."""
    if any(c <= " " or c in "\\\x7f" for c in location):
        return False
    try:
        parts = urlsplit(location)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return False
    return parts.scheme.lower() in ("https", "http") and bool(host)


# --- certificates -----------------------------------------------------------------------------


class _Unreadable(Exception):
    """An X509Certificate that cannot be used; `reason` says why, for the admin."""

    code = "certificate_unreadable"
    verb = "could not be read and was ignored"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Unusable(_Unreadable):
    """A well-formed certificate whose key no accepted signature algorithm uses (dsig.py: RSA and ECDSA)."""

    code = "certificate_unusable"
    verb = "was ignored"


def _certificates(
    idp: etree._Element, warnings: list[str]
) -> tuple[tuple[IdpCertificate, ...], tuple[IdpCertificate, ...], tuple[str, ...]]:
    """(signing certificates, encryption certificates, what was wrong with each unreadable signing one).

    Every X509Certificate that cannot be read is ignored with a certificate_unreadable warning naming it by
    its place among the signing (use="signing" or no use) or encryption (use="encryption") certificates."""
    found: list[tuple[str, str]] = []  # (use, base64 text) in document order
    for kd in idp.iterchildren(f"{_MD}KeyDescriptor"):
        use = (kd.get("use") or "").strip()
        if use not in ("", "signing", "encryption"):
            warnings.append(f"key_use_unknown: a KeyDescriptor with use={use!r} was ignored.")
            continue
        found.extend(
            (use, _text(el) or "") for el in kd.iterfind(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
        )
    n_signing = sum(1 for use, _ in found if use != "encryption")
    n_encryption = len(found) - n_signing
    signing: dict[str, IdpCertificate] = {}
    encryption: dict[str, IdpCertificate] = {}
    unreadable: list[str] = []
    i_signing = i_encryption = 0
    for use, b64 in found:
        if use == "encryption":
            i_encryption += 1
            label = f"encryption certificate {i_encryption} of {n_encryption}"
        else:
            i_signing += 1
            label = f"signing certificate {i_signing} of {n_signing}"
            if not use:
                label += " (a KeyDescriptor without use, so also for encryption)"
        try:
            cert = _load_certificate(b64, warnings)
        except _Unreadable as e:
            warnings.append(f"{e.code}: {label} in the IDPSSODescriptor {e.verb}: {e.reason}")
            if use != "encryption":
                unreadable.append(f"{label}: {e.reason}")
            continue
        if use in ("", "signing"):  # no `use` means both (saml-metadata §2.4.1.1)
            signing.setdefault(cert.sha256_fingerprint, cert)
        if use in ("", "encryption"):
            encryption.setdefault(cert.sha256_fingerprint, cert)
    return tuple(signing.values()), tuple(encryption.values()), tuple(unreadable)


_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _decode_base64(b64: str) -> bytes:
    """The DER bytes of an X509Certificate's text, or _Unreadable saying what is wrong with the base64."""
    text = "".join(b64.split())
    if not text:
        raise _Unreadable("the X509Certificate element is empty")
    if "-----BEGIN" in text:
        raise _Unreadable(
            "not valid base64: it holds PEM text with '-----BEGIN ...-----' lines; an X509Certificate holds only "
            "the base64 between them"
        )
    bad = next((c for c in text if c not in _BASE64_CHARS), None)
    if bad is not None:
        raise _Unreadable(f"not valid base64 (it contains the character {bad!r})")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Unreadable(f"not valid base64 ({str(e).lower()})") from None


def _load_certificate(b64: str, warnings: list[str]) -> IdpCertificate:
    """The certificate of an X509Certificate's text; raises _Unreadable when it cannot be used."""
    der = _decode_base64(b64)
    if der.lstrip().startswith(b"-----BEGIN"):
        raise _Unreadable(
            "not an X.509 certificate: the base64 decodes to PEM text, not to the DER certificate (encoded twice?)"
        )
    try:
        # cryptography warns (deprecation) about non-RFC 5280 certificates, e.g. a negative serial number,
        # which some IdPs still publish: report that to the admin instead of raising it as a Python warning.
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise _Unreadable(
            f"not an X.509 certificate (its {len(der)} bytes, once base64-decoded, are not a DER-encoded "
            "certificate)"
        ) from None
    try:
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        pem = cert.public_bytes(Encoding.PEM).decode("ascii")
        fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    except ValueError as e:  # fields cryptography parses only when asked for them
        raise _Unreadable(f"not a well-formed X.509 certificate ({e})") from None
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _Unusable("its public key is of a kind that cannot be read; only RSA and EC keys are accepted") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
        raise _Unusable(f"its public key is {kind}; only RSA and EC keys are accepted (RSA-SHA256 or ECDSA)")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        warnings.append(f"certificate_weak_key: {subject}: an RSA key of {key.key_size} bits (2048 or more is "
                        "the minimum advised, NIST SP 800-131A); ask the IdP to roll over to a larger key.")
    for w in caught:
        if issubclass(w.category, CryptographyDeprecationWarning):
            warnings.append(f"certificate_nonconforming: {subject}: {w.message}")
    try:
        algo = cert.signature_hash_algorithm
        sig_hash = algo.name if algo is not None else "none"
    except UnsupportedAlgorithm:
        sig_hash = cert.signature_algorithm_oid.dotted_string
    return IdpCertificate(
        pem=pem,
        subject=subject,
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        sha256_fingerprint=fingerprint,
        signature_hash=sig_hash,
    )


def _certificate_warnings(cert: IdpCertificate, now: datetime) -> list[str]:
    out: list[str] = []
    if cert.not_before > now:  # still used (the key is what is trusted); an IdP that has not rolled over yet
        out.append(f"certificate_not_yet_valid: {cert.subject} is valid from {_iso(cert.not_before)} only; "
                   "the IdP may not sign with it before then")
    if cert.not_after <= now:
        out.append(f"certificate_expired: {cert.subject} expired {_iso(cert.not_after)}")
    elif cert.not_after - now <= timedelta(days=EXPIRY_WARNING_DAYS):
        days = (cert.not_after - now).days
        out.append(f"certificate_expiring: {cert.subject} expires {_iso(cert.not_after)} (in {days} days)")
    if cert.signature_hash in WEAK_CERT_HASHES:
        out.append(
            f"certificate_weak_hash: {cert.subject} is signed with {cert.signature_hash.upper()}; "
            "ask the IdP for a SHA-256 certificate"
        )
    return out


# --- validity ---------------------------------------------------------------------------------


def _validity(entity: etree._Element, warnings: list[str]) -> tuple[datetime | None, int | None]:
    """The tightest validUntil and cacheDuration of the entity and the aggregates that enclose it."""
    valid_until: datetime | None = None
    cache: int | None = None
    node: etree._Element | None = entity
    while node is not None and node.tag in (f"{_MD}EntityDescriptor", f"{_MD}EntitiesDescriptor"):
        vu = node.get("validUntil")
        if vu is not None:
            t = parse_xs_datetime(vu)
            if t is None:
                raise _invalid(f"The metadata's validUntil {vu!r} is not an xs:dateTime.")
            valid_until = t if valid_until is None else min(valid_until, t)
        cd = node.get("cacheDuration")
        if cd is not None:
            secs = parse_duration(cd)
            if secs is None:
                warnings.append(f"cache_duration_unreadable: cacheDuration {cd!r} was ignored.")
            else:
                cache = secs if cache is None else min(cache, secs)
        node = node.getparent()
    return valid_until, cache


_DURATION_RE = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: str) -> int | None:
    """An xs:duration (ISO 8601, e.g. PT6H, P1D, P1DT12H30M) in whole seconds; None if unreadable or negative.

    Years count as 365 days and months as 30 days: cacheDuration is a refresh hint, not a calendar.
    """
    m = _DURATION_RE.match(value.strip())
    if m is None:
        return None
    y, mo, w, d, h, mi, s = m.groups()
    try:
        total = (
            int(y or 0) * 365 * 86400
            + int(mo or 0) * 30 * 86400
            + int(w or 0) * 7 * 86400
            + int(d or 0) * 86400
            + int(h or 0) * 3600
            + int(mi or 0) * 60
            + float(s or 0)
        )
        return int(total)
    except (OverflowError, ValueError):  # hundreds of digits: beyond a float, no usable hint
        return None


def parse_xs_datetime(value: str) -> datetime | None:
    """An xs:dateTime (any fractional precision, Z or an offset; none means UTC) as an aware datetime."""
    v = value.strip()
    m = re.match(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?\Z",
                 v)
    if m is None:
        return None
    base, frac, tz = m.groups()
    frac = (frac or "")[:7]  # '.' plus at most microseconds
    try:
        t = datetime.fromisoformat(base + frac + ("+00:00" if tz in (None, "Z") else tz))
    except ValueError:
        return None
    try:
        return t.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past datetime.max in UTC: the ends of time
        return datetime.max.replace(tzinfo=UTC) if t.year == datetime.max.year else datetime.min.replace(tzinfo=UTC)


# --- small helpers ----------------------------------------------------------------------------


def _text(el: etree._Element) -> str | None:
    return el.text.strip() if el.text is not None else None


def _xs_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    v = value.strip()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise _invalid(f"The metadata attribute {name}={value!r} is not a boolean.")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")

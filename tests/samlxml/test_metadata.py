"""IdP metadata parsing: every vendor sample, aggregates, certificates and their warnings, hostile XML."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import (
    BINDING_HTTP_POST,
    BINDING_HTTP_REDIRECT,
    IdpMetadata,
    parse_duration,
    parse_idp_metadata,
    parse_xs_datetime,
    to_json,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "vendor-samples" / "saml" / "metadata"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"vendor samples not present at {SAMPLES} (shared checkout only)"
)

SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
ARTIFACT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"

# file -> (entityID, signing certs, encryption certs, SSO bindings usable for login)
VENDOR_IDPS = {
    "adfs-1.xml": ("http://fs.msidlab7.com/adfs/services/trust", 1, 1, True),
    "adfs-2.xml": ("http://fs.msidlab2.com/adfs/services/trust", 1, 1, True),
    "adfs-3.xml": ("http://fs.msidlab11.com/adfs/services/trust", 1, 1, True),
    "aggregate-testshib-1.xml": ("https://idp.testshib.org/idp/shibboleth", 1, 1, True),
    "entra-id-1.xml": ("https://sts.windows.net/a9054a0f-2011-4e31-b3ac-fd8c354146ec/", 1, 0, True),
    "google-1.xml": ("https://accounts.google.com/o/saml2?idpid=C029op2ga", 1, 0, True),
    "jumpcloud-1.xml": ("IdP Entity ID", 1, 0, True),
    "keycloak-1.xml": ("http://localhost:8085/realms/master", 1, 0, True),
    "okta-1.xml": ("http://www.okta.com/exkdoocxa1VmjpXmX697", 1, 0, True),
    "okta-2.xml": ("http://www.okta.com/exkppsa1qwuFV4D7z0h7", 1, 0, True),
    "onelogin-1.xml": ("https://app.onelogin.com/saml/metadata/503983", 1, 0, True),
    "onelogin-2.xml": ("https://app.onelogin.com/saml/metadata/383123", 1, 0, True),
    "pingone-1.xml": ("https://auth.pingone.com/3030059e-440b-4ad0-9217-44326f1757f6", 1, 0, True),
    "shibboleth-1.xml": ("https://idp.msidlab13.com/idp/shibboleth", 1, 1, True),
    "shibboleth-2.xml": ("https://samltest.id/saml/idp", 2, 1, True),
    "shibboleth-3.xml": ("https://idp.testshib.org/idp/shibboleth", 1, 1, True),
    "simplesamlphp-1.xml": ("http://xenosmilus.umdc.umu.se/simplesaml/saml2/idp/metadata.php", 1, 1, True),
}
VENDOR_REFUSED = {"microsoft-online-sp-1.xml": "no IDPSSODescriptor"}


# --- vendor samples ---------------------------------------------------------------------------


@needs_samples
def test_every_vendor_sample_is_covered() -> None:
    present = {p.name for p in SAMPLES.glob("*.xml")}
    assert present == set(VENDOR_IDPS) | set(VENDOR_REFUSED), "a vendor sample has no expectation here"


@needs_samples
@pytest.mark.parametrize("name", sorted(VENDOR_IDPS))
def test_vendor_idp_metadata_parses(name: str) -> None:
    entity_id, n_signing, n_encryption, login_ok = VENDOR_IDPS[name]
    meta = parse_idp_metadata((SAMPLES / name).read_bytes(), now=NOW)
    assert meta.entity_id == entity_id
    assert len(meta.signing_certificates) == n_signing
    assert len(meta.encryption_certificates) == n_encryption
    assert all(c.pem.startswith("-----BEGIN CERTIFICATE-----") for c in meta.signing_certificates)
    has_login = any(ep.binding in (BINDING_HTTP_POST, BINDING_HTTP_REDIRECT) for ep in meta.sso_endpoints)
    assert has_login is login_ok
    assert not any(w.startswith("no_sso_endpoint") for w in meta.warnings)
    doc = to_json(meta, now=NOW)
    assert doc["entity_id"] == entity_id and doc["sso"]


@needs_samples
@pytest.mark.parametrize("name", sorted(VENDOR_REFUSED))
def test_vendor_non_idp_metadata_is_refused_with_a_reason(name: str) -> None:
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata((SAMPLES / name).read_bytes(), now=NOW)
    assert exc.value.code == "metadata_invalid"
    assert VENDOR_REFUSED[name] in exc.value.message
    assert "urn:federation:MicrosoftOnline" in exc.value.message


@needs_samples
def test_entra_id_bom_and_ws_fed_role_descriptors() -> None:
    raw = (SAMPLES / "entra-id-1.xml").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    meta = parse_idp_metadata(raw, now=NOW)
    # RoleDescriptors (WS-Fed) carry the same certificate; only the IDPSSODescriptor is read.
    assert [c.subject for c in meta.signing_certificates] == ["CN=Microsoft Azure Federated SSO Certificate"]
    assert meta.sso_endpoint(BINDING_HTTP_POST) is not None
    assert meta.slo_endpoints and meta.slo_endpoints[0].binding == BINDING_HTTP_REDIRECT


@needs_samples
def test_adfs_ignores_sp_role_and_reports_expired_certificates() -> None:
    meta = parse_idp_metadata((SAMPLES / "adfs-1.xml").read_bytes(), now=NOW)
    assert [c.subject for c in meta.signing_certificates] == ["CN=ADFS Signing - fs.msidlab7.com"]
    assert [c.subject for c in meta.encryption_certificates] == ["CN=ADFS Encryption - fs.msidlab7.com"]
    assert len(meta.name_id_formats) == 3
    expired = [w for w in meta.warnings if w.startswith("certificate_expired:")]
    assert len(expired) == 2 and "ADFS Signing" in expired[0] and "2017-12-03" in expired[0]


@needs_samples
def test_google_valid_until_and_keycloak_wants_signed_requests() -> None:
    google = parse_idp_metadata((SAMPLES / "google-1.xml").read_bytes(), now=NOW)
    assert google.valid_until == datetime(2028, 7, 19, 17, 28, 34, tzinfo=UTC)
    assert not google.want_authn_requests_signed
    assert google.name_id_formats == ("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",)
    keycloak = parse_idp_metadata((SAMPLES / "keycloak-1.xml").read_bytes(), now=NOW)
    assert keycloak.want_authn_requests_signed
    assert {ep.binding for ep in keycloak.sso_endpoints} >= {SOAP, ARTIFACT, BINDING_HTTP_POST}


@needs_samples
def test_sha1_signed_certificate_is_flagged() -> None:
    meta = parse_idp_metadata((SAMPLES / "onelogin-2.xml").read_bytes(), now=NOW)
    assert meta.signing_certificates[0].signature_hash == "sha1"
    assert any(w.startswith("certificate_weak_hash:") and "SHA1" in w for w in meta.warnings)


@needs_samples
def test_rollover_keeps_every_signing_certificate() -> None:
    meta = parse_idp_metadata((SAMPLES / "shibboleth-2.xml").read_bytes(), now=NOW)
    fingerprints = {c.sha256_fingerprint for c in meta.signing_certificates}
    assert len(fingerprints) == 2


@needs_samples
def test_aggregate_picks_by_entity_id() -> None:
    raw = (SAMPLES / "aggregate-testshib-1.xml").read_bytes()
    meta = parse_idp_metadata(raw, entity_id="https://idp.testshib.org/idp/shibboleth", now=NOW)
    assert meta.entity_id == "https://idp.testshib.org/idp/shibboleth"
    with pytest.raises(SamlError, match="no IDPSSODescriptor"):
        parse_idp_metadata(raw, entity_id="https://sp.testshib.org/shibboleth-sp", now=NOW)
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, entity_id="https://nope.example/idp", now=NOW)
    assert "https://idp.testshib.org/idp/shibboleth" in exc.value.message


@needs_samples
def test_negative_serial_certificate_is_reported_not_raised() -> None:
    meta = parse_idp_metadata((SAMPLES / "shibboleth-3.xml").read_bytes(), now=NOW)
    assert any(w.startswith("certificate_nonconforming:") for w in meta.warnings)


# --- synthetic metadata -----------------------------------------------------------------------


def make_cert(
    cn: str = "idp.example.com",
    *,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=365),
    weak_hash: str | None = None,
) -> str:
    """Base64 DER of a self-signed certificate; `weak_hash` relabels its signature OID (sha1/md5)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(Encoding.DER)
    if weak_hash:  # cryptography no longer signs with these: swap sha256WithRSAEncryption's OID (same length)
        sha256_rsa = bytes.fromhex("2a864886f70d01010b")
        new = {"sha1": "2a864886f70d010105", "md5": "2a864886f70d010104"}[weak_hash]
        der = der.replace(sha256_rsa, bytes.fromhex(new))
    return base64.b64encode(der).decode()


def key_descriptor(b64: str, use: str | None = "signing") -> str:
    use_attr = f' use="{use}"' if use else ""
    return (
        f"<md:KeyDescriptor{use_attr}><ds:KeyInfo><ds:X509Data><ds:X509Certificate>\n{b64}\n"
        "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
    )


def entity(
    entity_id: str = "https://idp.example.com/saml",
    *,
    keys: str | None = None,
    sso: tuple[str, ...] = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST),
    attrs: str = "",
    extra_roles: str = "",
    idp_attrs: str = "",
) -> str:
    keys = keys if keys is not None else key_descriptor(make_cert())
    services = "".join(
        f'<md:SingleSignOnService Binding="{b}" Location="https://idp.example.com/sso/{i}"/>'
        for i, b in enumerate(sso)
    )
    return (
        f'<md:EntityDescriptor entityID="{entity_id}"{attrs}>{extra_roles}'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"{idp_attrs}>'
        f"{keys}<md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>"
        f"{services}</md:IDPSSODescriptor></md:EntityDescriptor>"
    )


NS = 'xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#"'


def doc(body: str) -> bytes:
    """Put the namespace declarations on the root element."""
    tag_end = body.index(" ")
    return (body[:tag_end] + f" {NS}" + body[tag_end:]).encode()


def test_minimal_entity_descriptor() -> None:
    meta = parse_idp_metadata(doc(entity()), now=NOW)
    assert isinstance(meta, IdpMetadata)
    assert meta.entity_id == "https://idp.example.com/saml"
    assert meta.sso_endpoint(BINDING_HTTP_REDIRECT) is not None
    assert meta.sso_endpoint(BINDING_HTTP_POST).location == "https://idp.example.com/sso/1"  # type: ignore[union-attr]
    assert meta.warnings == ()
    assert meta.valid_until is None and meta.cache_duration_seconds is None


def test_bom_and_leading_whitespace_are_accepted() -> None:
    raw = b"\xef\xbb\xbf\n  " + b'<?xml version="1.0" encoding="utf-8"?>' + doc(entity())
    assert parse_idp_metadata(raw, now=NOW).entity_id == "https://idp.example.com/saml"


def test_key_descriptor_without_use_is_both_signing_and_encryption() -> None:
    cert = make_cert()
    meta = parse_idp_metadata(doc(entity(keys=key_descriptor(cert, use=None))), now=NOW)
    assert len(meta.signing_certificates) == 1 and len(meta.encryption_certificates) == 1
    assert meta.signing_certificates[0] == meta.encryption_certificates[0]
    certs = to_json(meta, now=NOW)["certificates"]
    assert len(certs) == 1 and certs[0]["use"] == ["signing", "encryption"]


def test_encryption_only_key_is_not_trusted_for_signatures() -> None:
    keys = key_descriptor(make_cert("sign"), "signing") + key_descriptor(make_cert("enc"), "encryption")
    meta = parse_idp_metadata(doc(entity(keys=keys)), now=NOW)
    assert [c.subject for c in meta.signing_certificates] == ["CN=sign"]
    assert [c.subject for c in meta.encryption_certificates] == ["CN=enc"]


def test_rollover_two_signing_certificates_and_duplicates_collapse() -> None:
    old, new = make_cert("old"), make_cert("new")
    keys = key_descriptor(old) + key_descriptor(new) + key_descriptor(old)
    meta = parse_idp_metadata(doc(entity(keys=keys)), now=NOW)
    assert [c.subject for c in meta.signing_certificates] == ["CN=old", "CN=new"]


def test_no_signing_certificate_is_refused() -> None:
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(doc(entity(keys=key_descriptor(make_cert(), "encryption"))), now=NOW)
    assert exc.value.code == "metadata_invalid" and "signing certificate" in exc.value.message


def test_unreadable_certificate_is_a_warning_when_another_one_works() -> None:
    keys = key_descriptor("bm90IGEgY2VydA==") + key_descriptor(make_cert())
    meta = parse_idp_metadata(doc(entity(keys=keys)), now=NOW)
    assert len(meta.signing_certificates) == 1
    assert any(w.startswith("certificate_unreadable:") for w in meta.warnings)


def test_certificate_warnings() -> None:
    keys = (
        key_descriptor(
            make_cert("expired", not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1))
        )
        + key_descriptor(make_cert("soon", not_after=NOW + timedelta(days=10)))
        + key_descriptor(make_cert("fine", not_after=NOW + timedelta(days=31)))
        + key_descriptor(make_cert("md5", weak_hash="md5"))
    )
    meta = parse_idp_metadata(doc(entity(keys=keys)), now=NOW)
    assert [w.split(":", 1)[0] for w in meta.warnings] == [
        "certificate_expired",
        "certificate_expiring",
        "certificate_weak_hash",
    ]
    expired, expiring, weak = meta.warnings
    assert "CN=expired expired 2024-05-31" in expired
    assert "CN=soon expires" in expiring and "(in 10 days)" in expiring
    assert "CN=md5 is signed with MD5" in weak
    by_subject = {c["subject"]: c for c in to_json(meta, now=NOW)["certificates"]}
    assert by_subject["CN=expired"]["expired"] is True and by_subject["CN=expired"]["days_left"] < 0
    assert by_subject["CN=soon"]["expired"] is False and by_subject["CN=soon"]["days_left"] == 10
    assert by_subject["CN=md5"]["signature_hash"] == "md5"


def test_a_certificate_not_valid_yet_is_used_with_a_warning() -> None:
    future = make_cert("next", not_before=NOW + timedelta(days=3), not_after=NOW + timedelta(days=400))
    meta = parse_idp_metadata(doc(entity(keys=key_descriptor(future))), now=NOW)
    assert [w.split(":", 1)[0] for w in meta.warnings] == ["certificate_not_yet_valid"]
    assert "CN=next is valid from" in meta.warnings[0] and len(meta.signing_certificates) == 1


def test_sha1_relabelled_certificate_is_flagged() -> None:
    meta = parse_idp_metadata(doc(entity(keys=key_descriptor(make_cert("old", weak_hash="sha1")))), now=NOW)
    assert meta.signing_certificates[0].signature_hash == "sha1"
    assert [w.split(":")[0] for w in meta.warnings] == ["certificate_weak_hash"]


def test_no_login_capable_sso_endpoint_is_a_warning() -> None:
    meta = parse_idp_metadata(doc(entity(sso=(SOAP, ARTIFACT))), now=NOW)
    assert any(w.startswith("no_sso_endpoint:") for w in meta.warnings)
    assert to_json(meta, now=NOW)["sso"][0]["binding"] == SOAP


def _with_locations(sso: tuple[str, str], slo: str | None = None) -> bytes:
    """The minimal entity with its Redirect and POST SingleSignOnService Locations (and an SLO) replaced."""
    body = entity().replace("https://idp.example.com/sso/0", sso[0]).replace("https://idp.example.com/sso/1", sso[1])
    if slo is not None:
        body = body.replace("</md:IDPSSODescriptor>", f'<md:SingleLogoutService Binding="{BINDING_HTTP_POST}" '
                                                      f'Location="{slo}"/></md:IDPSSODescriptor>')
    return doc(body)


@pytest.mark.parametrize(
    "location",
    [
        "javascript:alert(1)",
        " JavaScript:alert(document.domain)",
        "java&#9;script:alert(1)",  # a tab inside the scheme: browsers strip it
        "data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;",
        "vbscript:msgbox(1)",
        "/relative/sso",
        "//idp.example.com/sso",  # scheme-relative
        "https:///no-host",
        "https://[::1/sso",  # unparseable
        "ftp://idp.example.com/sso",
        "https://idp.example.com\\@evil.example/sso",
    ],
)
def test_sso_location_that_is_not_a_web_url_is_ignored_with_a_warning(location: str) -> None:
    meta = parse_idp_metadata(_with_locations((location, location), slo=location), now=NOW)
    assert meta.sso_endpoints == () and meta.slo_endpoints == ()
    assert meta.sso_endpoint(BINDING_HTTP_POST) is None and meta.sso_endpoint(BINDING_HTTP_REDIRECT) is None
    codes = [w.split(":", 1)[0] for w in meta.warnings]
    assert codes.count("endpoint_location_invalid") == 3  # two SSO and one SLO
    assert "no_sso_endpoint" in codes  # nothing left to log in with: the usual warning
    out = to_json(meta, now=NOW)
    assert out["sso"] == [] and out["slo"] == []


def test_bad_location_is_dropped_and_the_good_one_kept() -> None:
    meta = parse_idp_metadata(_with_locations(("https://idp.example.com/sso", "javascript:alert(1)")), now=NOW)
    assert [ep.binding for ep in meta.sso_endpoints] == [BINDING_HTTP_REDIRECT]
    assert meta.sso_endpoint(BINDING_HTTP_POST) is None
    assert [w.split(":", 1)[0] for w in meta.warnings] == ["endpoint_location_invalid"]
    assert "'javascript:alert(1)'" in meta.warnings[0]


def test_http_and_https_locations_with_ports_and_queries_are_kept() -> None:
    urls = ("http://localhost:8085/realms/master/protocol/saml", "HTTPS://idp.example.com:8443/sso?idpid=C02")
    meta = parse_idp_metadata(_with_locations(urls), now=NOW)
    assert [ep.location for ep in meta.sso_endpoints] == list(urls)
    assert meta.warnings == ()


@pytest.mark.parametrize("locations, warned", [
    (("http://idp.example.com/sso", "https://idp.example.com/sso"), True),
    (("http://10.0.0.5/sso", "http://10.0.0.5/sso"), True),
    (("http://127.0.0.1:8085/sso", "http://[::1]:8085/sso"), False),
    (("http://localhost:8085/sso", "https://idp.example.com/sso"), False),
])
def test_an_http_sso_location_off_this_machine_is_kept_with_a_warning(locations: tuple[str, str],
                                                                       warned: bool) -> None:
    meta = parse_idp_metadata(_with_locations(locations), now=NOW)
    assert {ep.location for ep in meta.sso_endpoints} == set(locations), "kept: a warning, not a refusal"
    codes = [w.split(":", 1)[0] for w in meta.warnings]
    assert codes == (["endpoint_not_https"] if warned else [])


@pytest.mark.parametrize("attrs", [' entityID=""', ' entityID="   "', ' cacheDuration="PT1H"'])
def test_entity_without_entity_id_is_refused(attrs: str) -> None:
    raw = doc(entity().replace(' entityID="https://idp.example.com/saml"', attrs, 1))
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid" and "entityID" in exc.value.message


def test_valid_until_in_the_past_is_a_warning_and_fractional_seconds_parse() -> None:
    meta = parse_idp_metadata(doc(entity(attrs=' validUntil="2024-05-31T23:59:59.1234567Z"')), now=NOW)
    assert meta.valid_until == datetime(2024, 5, 31, 23, 59, 59, 123456, tzinfo=UTC)
    assert any(w.startswith("metadata_expired:") for w in meta.warnings)
    assert to_json(meta, now=NOW)["valid_until"] == "2024-05-31T23:59:59.123456Z"


@pytest.mark.parametrize(("value", "year"), [("9999-12-31T23:59:59-01:00", 9999), ("0001-01-01T00:00:00+01:00", 1)])
def test_a_valid_until_past_the_ends_of_time_is_read_as_them(value: str, year: int) -> None:
    """Legal xs:dateTimes that leave Python's datetime range once in UTC (were a 500 on upload and refresh)."""
    meta = parse_idp_metadata(doc(entity(attrs=f' validUntil="{value}"')), now=NOW)
    assert meta.valid_until is not None and meta.valid_until.year == year
    assert to_json(meta, now=NOW)["valid_until"].startswith(f"{year:04d}-")


def test_unreadable_valid_until_is_refused() -> None:
    with pytest.raises(SamlError, match="validUntil"):
        parse_idp_metadata(doc(entity(attrs=' validUntil="tomorrow"')), now=NOW)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("PT6H", 21600),
        ("P1D", 86400),
        ("PT1H30M", 5400),
        ("P1DT12H", 129600),
        ("PT300S", 300),
        ("PT0.5S", 0),
        ("P1W", 604800),
        ("P1M", 2592000),
        ("P1Y", 31536000),
        ("P0Y0M1DT0H0M0.000S", 86400),
    ],
)
def test_cache_duration(value: str, seconds: int) -> None:
    assert parse_duration(value) == seconds
    meta = parse_idp_metadata(doc(entity(attrs=f' cacheDuration="{value}"')), now=NOW)
    assert meta.cache_duration_seconds == seconds


@pytest.mark.parametrize("value", ["", "P", "PT", "6h", "-PT6H", "P1H", "PT1D", "P1.5D",
                                   "PT" + "9" * 400 + "S", "P" + "9" * 400 + "Y", "P" + "9" * 400 + "D"])
def test_bad_cache_duration_is_ignored_with_a_warning(value: str) -> None:
    assert parse_duration(value) is None
    meta = parse_idp_metadata(doc(entity(attrs=f' cacheDuration="{value}"')), now=NOW)
    assert meta.cache_duration_seconds is None
    assert any(w.startswith("cache_duration_unreadable:") for w in meta.warnings)


def test_xs_datetime_forms() -> None:
    assert parse_xs_datetime("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_xs_datetime("2024-01-01T01:00:00+01:00") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_xs_datetime("2024-01-01T00:00:00") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_xs_datetime("2024-01-01T00:00:00.5Z") == datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert parse_xs_datetime("2024-13-01T00:00:00Z") is None
    assert parse_xs_datetime("yesterday") is None


def test_aggregate_with_several_idps_needs_an_entity_id() -> None:
    raw = (
        f'<md:EntitiesDescriptor {NS} cacheDuration="PT1H" validUntil="2030-01-01T00:00:00Z">'
        + entity("https://a.example/idp", attrs=' cacheDuration="PT2H"')
        + entity("https://b.example/idp")
        + "</md:EntitiesDescriptor>"
    ).encode()
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid"
    assert "https://a.example/idp" in exc.value.message and "https://b.example/idp" in exc.value.message
    meta = parse_idp_metadata(raw, entity_id="https://a.example/idp", now=NOW)
    assert meta.entity_id == "https://a.example/idp"
    # the tightest of the entity's and the enclosing aggregate's validity wins
    assert meta.cache_duration_seconds == 3600
    assert meta.valid_until == datetime(2030, 1, 1, tzinfo=UTC)


def test_an_aggregate_of_thousands_names_a_few_in_its_message() -> None:
    """A federation aggregate without the entityID to use: the message names ten, not every one (554 KB)."""
    raw = (f'<md:EntitiesDescriptor {NS}>' + "".join(entity(f"https://idp{i}.example/idp") for i in range(60))
           + "</md:EntitiesDescriptor>").encode()
    for entity_id in (None, "https://missing.example/idp"):
        with pytest.raises(SamlError) as exc:
            parse_idp_metadata(raw, entity_id=entity_id, now=NOW)
        message = exc.value.message
        assert "'https://idp9.example/idp'" in message and "https://idp10.example/idp" not in message
        assert "and 50 more" in message and len(message) < 1000


def test_nested_aggregate_with_one_idp_needs_no_entity_id() -> None:
    sp = (
        '<md:EntityDescriptor entityID="https://sp.example"><md:SPSSODescriptor '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"/></md:EntityDescriptor>'
    )
    raw = (
        f"<md:EntitiesDescriptor {NS}>{sp}<md:EntitiesDescriptor>"
        + entity("https://only.example/idp")
        + "</md:EntitiesDescriptor></md:EntitiesDescriptor>"
    ).encode()
    assert parse_idp_metadata(raw, now=NOW).entity_id == "https://only.example/idp"


def test_saml1_only_idp_is_refused() -> None:
    raw = doc(entity()).replace(
        b"urn:oasis:names:tc:SAML:2.0:protocol", b"urn:oasis:names:tc:SAML:1.1:protocol"
    )
    with pytest.raises(SamlError, match="no IDPSSODescriptor"):
        parse_idp_metadata(raw, now=NOW)


def test_want_authn_requests_signed_must_be_boolean() -> None:
    assert parse_idp_metadata(
        doc(entity(idp_attrs=' WantAuthnRequestsSigned="1"')), now=NOW
    ).want_authn_requests_signed
    with pytest.raises(SamlError, match="WantAuthnRequestsSigned"):
        parse_idp_metadata(doc(entity(idp_attrs=' WantAuthnRequestsSigned="yes"')), now=NOW)


def test_to_json_shape() -> None:
    meta = parse_idp_metadata(doc(entity(attrs=' cacheDuration="PT6H"')), now=NOW)
    out = to_json(meta, now=NOW)
    assert set(out) == {
        "entity_id",
        "entityID",
        "signing_certificates",
        "sso",
        "slo",
        "certificates",
        "name_id_formats",
        "want_authn_requests_signed",
        "valid_until",
        "cache_duration",
        "warnings",
    }
    assert out["sso"][0] == {"binding": BINDING_HTTP_REDIRECT, "url": "https://idp.example.com/sso/0"}
    assert out["entityID"] == out["entity_id"]
    assert out["signing_certificates"] == [c for c in out["certificates"] if "signing" in c["use"]]
    cert = out["certificates"][0]
    assert set(cert) == {
        "use",
        "subject",
        "issuer",
        "not_before",
        "not_after",
        "fingerprint",
        "signature_hash",
        "expired",
        "days_left",
    }
    assert cert["not_after"].endswith("Z") and len(cert["fingerprint"]) == 95
    assert out["cache_duration"] == 21600 and out["valid_until"] is None


# --- refused documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"<html><body>Sign in</body></html>",
        b'<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"/>',
        b"<EntityDescriptor entityID='x'/>",  # no metadata namespace
    ],
)
def test_not_metadata_is_refused(raw: bytes) -> None:
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid" and "root element" in exc.value.message


@pytest.mark.parametrize("raw", [b"", b"   ", b"<md:EntityDescriptor", b"\x00\x01garbage"])
def test_malformed_xml_is_refused(raw: bytes) -> None:
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid"


def test_xxe_metadata_is_refused() -> None:
    raw = b'<?xml version="1.0"?><!DOCTYPE md [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + doc(
        entity("&xxe;")
    )
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid"
    assert exc.value.detail is not None and exc.value.detail.startswith("xml_forbidden")
    assert "passwd" not in exc.value.message


def test_billion_laughs_metadata_is_refused() -> None:
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    raw = (
        f'<?xml version="1.0"?><!DOCTYPE md [<!ENTITY l0 "lol">{lol}]>' + doc(entity("&l9;")).decode()
    ).encode()
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.code == "metadata_invalid"
    assert exc.value.detail is not None and exc.value.detail.startswith("xml_forbidden")


def test_external_dtd_is_refused() -> None:
    raw = b'<!DOCTYPE md SYSTEM "http://attacker.example/x.dtd">' + doc(entity())
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW)
    assert exc.value.detail is not None and exc.value.detail.startswith("xml_forbidden")


def test_oversized_metadata_is_refused() -> None:
    raw = doc(entity(extra_roles="<!--" + "x" * 5000 + "-->"))
    with pytest.raises(SamlError) as exc:
        parse_idp_metadata(raw, now=NOW, max_bytes=4096)
    assert exc.value.code == "metadata_invalid" and "larger" in exc.value.message


def _with_signing_methods(*algorithms: str) -> bytes:
    methods = "".join(f'<alg:SigningMethod xmlns:alg="urn:oasis:names:tc:SAML:metadata:algsupport" '
                      f'Algorithm="{a}"/>' for a in algorithms)
    body = entity().replace('<md:IDPSSODescriptor', f"<md:Extensions>{methods}</md:Extensions><md:IDPSSODescriptor", 1)
    return doc(body)


def test_sha1_only_signing_methods_are_a_warning() -> None:
    meta = parse_idp_metadata(_with_signing_methods("http://www.w3.org/2000/09/xmldsig#rsa-sha1"), now=NOW)
    assert any(w.startswith("sha1_only:") for w in meta.warnings)


def test_sha1_among_stronger_methods_is_no_warning() -> None:
    meta = parse_idp_metadata(_with_signing_methods("http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                                                    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"), now=NOW)
    assert not any(w.startswith("sha1_only:") for w in meta.warnings)

"""IdP metadata whose certificates cannot be read: each broken KeyDescriptor certificate gets a warning that
says which one and what is wrong with it, the good certificates beside it are still used, and metadata
left with no usable signing certificate is refused with a message that counts the unreadable ones."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import (
    IdpMetadata,
    parse_idp_metadata,
    signing_certificate_expiry,
    to_json,
)
from tests.conftest import AdminClient

from .idp_fixtures import make_idp
from .test_metadata import doc, entity, key_descriptor, make_cert

NOW = datetime.now(UTC)  # make_idp's certificates are valid from yesterday for ten years


def cert_b64(name: str) -> str:
    """The base64 DER (as metadata carries it) of a generated test IdP's certificate."""
    pem = make_idp(f"https://{name}.idp.example.test/saml").cert_pem
    return "".join(line for line in pem.strip().splitlines() if "-----" not in line)


def fingerprint(b64: str) -> str:
    cert = x509.load_der_x509_certificate(base64.b64decode(b64))
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def expired_cert_b64(cn: str = "expired") -> str:
    return make_cert(cn, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=2))


def bad_base64() -> str:
    """A real certificate with one character that base64 does not have."""
    good = cert_b64("corrupted")
    return good[:40] + "!" + good[41:]


def random_bytes_base64() -> str:
    """Valid base64 of bytes that are not a certificate."""
    return base64.b64encode(os.urandom(600)).decode()


def parse(keys: str) -> IdpMetadata:
    return parse_idp_metadata(doc(entity(keys=keys)), now=NOW)


def unreadable(meta: IdpMetadata) -> list[str]:
    return [w for w in meta.warnings if w.startswith("certificate_unreadable:")]


# --- one broken certificate among good ones ---------------------------------------------------


def test_bad_base64_certificate_is_named_and_the_others_are_kept() -> None:
    first, third = cert_b64("first"), cert_b64("third")
    meta = parse(key_descriptor(first) + key_descriptor(bad_base64()) + key_descriptor(third))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(first), fingerprint(third)]
    assert unreadable(meta) == [
        "certificate_unreadable: signing certificate 2 of 3 in the IDPSSODescriptor could not be read and was "
        "ignored: not valid base64 (it contains the character '!')"
    ]
    out = to_json(meta, now=NOW)
    assert out["warnings"] == list(meta.warnings)
    assert [c["fingerprint"] for c in out["signing_certificates"]] == [fingerprint(first), fingerprint(third)]


def test_base64_of_random_bytes_is_not_an_x509_certificate() -> None:
    good = cert_b64("good")
    meta = parse(key_descriptor(random_bytes_base64()) + key_descriptor(good))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(good)]
    [warning] = unreadable(meta)
    assert warning.startswith(
        "certificate_unreadable: signing certificate 1 of 2 in the IDPSSODescriptor could not be read and was "
        "ignored: not an X.509 certificate ("
    )
    assert "600 bytes" in warning


def test_truncated_certificate_is_not_an_x509_certificate() -> None:
    good = cert_b64("good")
    der = base64.b64decode(cert_b64("truncated"))
    truncated = base64.b64encode(der[: len(der) // 2]).decode()
    meta = parse(key_descriptor(good) + key_descriptor(truncated))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(good)]
    [warning] = unreadable(meta)
    assert "signing certificate 2 of 2" in warning and warning.endswith(
        f"not an X.509 certificate (its {len(der) // 2} bytes, once base64-decoded, are not a DER-encoded "
        "certificate)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the X509Certificate element is empty"),
        ("   \n\t  ", "the X509Certificate element is empty"),
        ("MIIC", "not an X.509 certificate"),  # decodes to 3 bytes
        ("MIICa", "not valid base64 ("),  # bad length / padding
        ("MIIC\u00e9MIIC", "not valid base64 (it contains the character 'é')"),
        ("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----", "PEM text"),
        (base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n").decode(),
         "decodes to PEM text"),
    ],
)
def test_each_kind_of_unreadable_certificate_has_its_reason(text: str, reason: str) -> None:
    good = cert_b64("good")
    meta = parse(key_descriptor(good) + key_descriptor(text))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(good)]
    [warning] = unreadable(meta)
    assert "signing certificate 2 of 2 in the IDPSSODescriptor could not be read and was ignored: " in warning
    assert reason in warning


def test_a_certificate_without_use_is_named_as_both() -> None:
    good = cert_b64("good")
    meta = parse(key_descriptor(bad_base64(), use=None) + key_descriptor(good))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(good)]
    assert meta.encryption_certificates == ()
    [warning] = unreadable(meta)
    assert "signing certificate 1 of 2 (a KeyDescriptor without use, so also for encryption)" in warning


def test_unreadable_encryption_certificate_is_named_and_signing_is_unaffected() -> None:
    signing, enc = cert_b64("signing"), cert_b64("enc")
    keys = (
        key_descriptor(signing)
        + key_descriptor(enc, use="encryption")
        + key_descriptor(random_bytes_base64(), use="encryption")
    )
    meta = parse(keys)
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(signing)]
    assert [c.sha256_fingerprint for c in meta.encryption_certificates] == [fingerprint(enc)]
    [warning] = unreadable(meta)
    assert warning.startswith(
        "certificate_unreadable: encryption certificate 2 of 2 in the IDPSSODescriptor could not be read and "
        "was ignored: not an X.509 certificate"
    )


def test_every_broken_certificate_gets_its_own_warning_beside_the_existing_ones() -> None:
    good = cert_b64("good")
    keys = (
        key_descriptor(bad_base64())
        + key_descriptor(good)
        + key_descriptor(random_bytes_base64())
        + key_descriptor(expired_cert_b64())
        + key_descriptor(good, use="bogus")
    )
    meta = parse_idp_metadata(doc(entity(keys=keys, sso=())), now=NOW)
    assert [w.split(":", 1)[0] for w in meta.warnings] == [
        "key_use_unknown",
        "certificate_unreadable",
        "certificate_unreadable",
        "no_sso_endpoint",
        "certificate_expired",
    ]
    first, second = unreadable(meta)
    assert "signing certificate 1 of 4" in first and "not valid base64" in first
    assert "signing certificate 3 of 4" in second and "not an X.509 certificate" in second
    assert [c.subject for c in meta.signing_certificates] == ["CN=test idp", "CN=expired"]


def test_signing_certificate_expiry_sees_only_the_readable_certificates() -> None:
    good = cert_b64("good")
    xml = doc(entity(keys=key_descriptor(random_bytes_base64()) + key_descriptor(good)))
    assert list(signing_certificate_expiry(xml)) == [fingerprint(good)]


# --- nothing usable left ----------------------------------------------------------------------


def test_no_usable_signing_certificate_counts_the_unreadable_ones() -> None:
    keys = key_descriptor(bad_base64()) + key_descriptor(random_bytes_base64())
    with pytest.raises(SamlError) as exc:
        parse(keys)
    assert exc.value.code == "metadata_invalid"
    message = exc.value.message
    assert "has no usable signing certificate: 2 signing certificates were present but unreadable" in message
    assert "signing certificate 1 of 2: not valid base64" in message
    assert "signing certificate 2 of 2: not an X.509 certificate" in message
    assert message.endswith("responses from this IdP could not be verified.")


def test_one_unreadable_signing_certificate_beside_a_good_encryption_one_is_refused() -> None:
    keys = key_descriptor(random_bytes_base64()) + key_descriptor(cert_b64("enc"), use="encryption")
    with pytest.raises(SamlError) as exc:
        parse(keys)
    assert "1 signing certificate was present but unreadable or unusable (signing certificate 1 of 1: not an X.509" in (
        exc.value.message
    )


def test_unreadable_encryption_certificate_alone_keeps_the_old_message() -> None:
    with pytest.raises(SamlError) as exc:
        parse(key_descriptor(random_bytes_base64(), use="encryption"))
    assert "has no signing certificate (KeyDescriptor with an X509Certificate)" in exc.value.message
    assert "unreadable" not in exc.value.message


# --- expired but readable: as before ----------------------------------------------------------


def test_expired_but_parseable_certificate_is_kept_with_the_expiry_warning() -> None:
    expired, good = expired_cert_b64(), cert_b64("good")
    meta = parse(key_descriptor(expired) + key_descriptor(good))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(expired), fingerprint(good)]
    assert [w.split(":", 1)[0] for w in meta.warnings] == ["certificate_expired"]
    assert "CN=expired expired" in meta.warnings[0]


def test_only_an_expired_certificate_is_still_accepted() -> None:
    expired = expired_cert_b64()
    meta = parse(key_descriptor(expired))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(expired)]
    assert unreadable(meta) == []
    assert to_json(meta, now=NOW)["certificates"][0]["expired"] is True


# --- over HTTP: the metadata upload answers with the warnings ---------------------------------

PUT_METADATA = "/admin/v1/tenants/acme/connections/okta/metadata"


def _put(admin: AdminClient, xml: bytes) -> Any:
    return admin.client.put(PUT_METADATA, data=xml,
                            headers={**admin.headers, "Content-Type": "application/samlmetadata+xml"})


def test_metadata_upload_reports_the_unreadable_certificate(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections",
                      {"slug": "okta", "protocol": "saml", "mapping": {"preset": "okta"}}).status_code == 201
    good = cert_b64("good")
    r = _put(admin, doc(entity(keys=key_descriptor(good) + key_descriptor(random_bytes_base64()))))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [c["fingerprint"] for c in body["signing_certificates"]] == [fingerprint(good)]
    assert [w for w in body["warnings"] if w.startswith("certificate_unreadable:")] == [
        "certificate_unreadable: signing certificate 2 of 2 in the IDPSSODescriptor could not be read and was "
        "ignored: not an X.509 certificate (its 600 bytes, once base64-decoded, are not a DER-encoded "
        "certificate)"
    ]

    r = _put(admin, doc(entity(keys=key_descriptor(bad_base64()))))
    assert r.status_code == 400, r.get_json()
    err = r.get_json()
    assert err["error"] == "metadata_invalid"
    assert "1 signing certificate was present but unreadable" in err["message"]
    assert "not valid base64" in err["message"]


# --- certificates whose key no accepted signature algorithm uses ----------------------------------------------


def cert_with_key_b64(kind: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ed25519

    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "dsa":
        public: Any = dsa.generate_private_key(key_size=2048).public_key()
    elif kind == "ed25519":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
    else:
        public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{kind} idp")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=365))
        .sign(signer, hashes.SHA256())  # signed by another key: only the subject key matters here
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


@pytest.mark.parametrize(("kind", "named"), [("dsa", "DSA"), ("ed25519", "Ed25519")])
def test_a_signing_certificate_with_a_key_no_signature_here_uses_is_named_and_ignored(kind: str, named: str) -> None:
    good = cert_b64("beside-odd-key")
    meta = parse(key_descriptor(cert_with_key_b64(kind), "signing") + key_descriptor(good, "signing"))
    assert [c.sha256_fingerprint for c in meta.signing_certificates] == [fingerprint(good)]
    (warning,) = [w for w in meta.warnings if w.startswith("certificate_unusable:")]
    assert warning.startswith("certificate_unusable: signing certificate 1 of 2 in the IDPSSODescriptor was ignored: ")
    assert f"its public key is {named}; only RSA and EC keys are accepted" in warning
    # alone, it leaves nothing to verify responses with: refused, saying why
    with pytest.raises(SamlError) as exc:
        parse(key_descriptor(cert_with_key_b64(kind), "signing"))
    assert "no usable signing certificate" in exc.value.message and named in exc.value.message


def test_a_small_rsa_key_is_used_with_a_warning() -> None:
    meta = parse(key_descriptor(cert_with_key_b64("rsa1024"), "signing"))
    assert len(meta.signing_certificates) == 1
    (warning,) = [w for w in meta.warnings if w.startswith("certificate_weak_key:")]
    assert "1024 bits" in warning and "CN=rsa1024 idp" in warning
    assert not [w for w in parse(key_descriptor(cert_b64("big"), "signing")).warnings
                if w.startswith("certificate_weak_key")]


# --- too many to try ---------------------------------------------------------------------------


def test_more_signing_certificates_than_can_be_tried_on_every_sign_in_are_refused() -> None:
    """Each signature is tried against every signing certificate: hundreds would make any anonymous post to
    the ACS cost seconds of CPU."""
    certs = [make_cert(f"idp{i}.example.com") for i in range(11)]
    with pytest.raises(SamlError) as exc:
        parse("".join(key_descriptor(c) for c in certs))
    assert exc.value.code == "metadata_invalid" and "lists 11 different signing certificates" in exc.value.message
    meta = parse("".join(key_descriptor(c) for c in certs[:10]) + key_descriptor(certs[0]))  # the same one twice
    assert len(meta.signing_certificates) == 10

"""SP key pairs: RSA-2048, self-signed SHA-256 certificates valid ten years, signing and encryption apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from broker.model import SpCredentials
from broker.upstream.saml_keys import generate_sp_credentials


def _pair(key_pem: bytes, cert_pem: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, x509.load_pem_x509_certificate(cert_pem.encode())


def test_generate_sp_credentials() -> None:
    creds = generate_sp_credentials("acme / okta")
    assert isinstance(creds, SpCredentials)
    now = datetime.now(UTC)
    pairs = [
        _pair(creds.signing_key_pem, creds.signing_cert_pem),
        _pair(creds.encryption_key_pem, creds.encryption_cert_pem),
    ]
    for key, cert in pairs:
        assert key.key_size == 2048
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        assert cert.subject == cert.issuer
        assert "acme / okta" in cert.subject.rfc4514_string()
        assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
        assert cert.not_valid_before_utc <= now
        assert cert.not_valid_after_utc - now > timedelta(days=3640)
        assert cert.serial_number > 0
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    (sign_key, sign_cert), (enc_key, enc_cert) = pairs
    assert sign_key.private_numbers() != enc_key.private_numbers()
    assert sign_cert.serial_number != enc_cert.serial_number
    assert creds.signing_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert creds.signing_cert_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_each_call_gives_new_keys() -> None:
    a, b = generate_sp_credentials("x"), generate_sp_credentials("x")
    assert a.signing_key_pem != b.signing_key_pem and a.encryption_cert_pem != b.encryption_cert_pem


def test_long_common_name_is_cut_to_the_x509_limit() -> None:
    cert = x509.load_pem_x509_certificate(generate_sp_credentials("t" * 200).signing_cert_pem.encode())
    (cn,) = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert cn.value == "t" * 64

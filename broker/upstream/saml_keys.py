"""The broker's own SAML SP key pairs: one for signing AuthnRequests, one IdPs encrypt assertions to."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from broker.model import SpCredentials

RSA_BITS = 2048
VALIDITY = timedelta(days=3652)  # ten years: IdPs pin SP certificates, and rolling them is manual work


def generate_sp_credentials(common_name: str) -> SpCredentials:
    """Two fresh RSA-2048 key pairs with self-signed SHA-256 certificates valid for ten years."""
    sign_key, sign_cert = _key_pair(common_name, "signing")
    enc_key, enc_cert = _key_pair(common_name, "encryption")
    return SpCredentials(
        signing_key_pem=sign_key,
        signing_cert_pem=sign_cert,
        encryption_key_pem=enc_key,
        encryption_cert_pem=enc_cert,
    )


def _key_pair(common_name: str, purpose: str) -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "saml-sp"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"SAML SP {purpose}"),
        ]
    )
    now = datetime.now(UTC).replace(microsecond=0)
    usage = (
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        )
        if purpose == "signing"
        else x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=True,
            data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        )
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 | 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

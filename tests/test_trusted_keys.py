"""Broker-generated RSA keys load without cryptography's re-validation, and still sign what their public halves
verify: tenant token-signing keys through the KeyRing, SP keys through `load_trusted_rsa_key`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from joserfc import jwt

from broker.errors import ConfigError
from broker.issuer.keys import KeyRing, generate_signing_key
from broker.model import SigningKey
from broker.trusted_keys import load_trusted_rsa_key
from broker.upstream.saml_keys import generate_sp_credentials


def test_an_sp_key_loads_and_signs_for_its_certificate() -> None:
    sp = generate_sp_credentials("trusted-keys")
    key = load_trusted_rsa_key(sp.signing_key_pem)
    signature = key.sign(b"message", padding.PKCS1v15(), hashes.SHA256())
    public = x509.load_pem_x509_certificate(sp.signing_cert_pem.encode()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


def test_a_key_that_is_not_rsa_is_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ConfigError):
        load_trusted_rsa_key(pem)


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        load_trusted_rsa_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_the_keyring_signs_with_a_private_key_its_public_jwk_verifies() -> None:
    g = generate_signing_key("RS256")
    key = SigningKey(kid=g.kid, tenant_id="t1", alg=g.alg, private_pem=g.private_pem, public_jwk=g.public_jwk,
                     active=True, created_at=datetime.now(UTC))
    ring = KeyRing()
    token = jwt.encode({"alg": "RS256", "kid": g.kid}, {"sub": "ann"}, ring.private(key))
    assert jwt.decode(token, ring.public(key)).claims == {"sub": "ann"}
    assert ring.private(key) is ring.private(key), "parsed once, then cached by kid"

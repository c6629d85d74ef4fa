"""Loading RSA private keys that the broker generated itself and keeps sealed: tenant token-signing keys
(broker.issuer.keys) and SAML SP signing keys (broker.upstream.saml_keys)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.errors import ConfigError


def load_trusted_rsa_key(pem: bytes) -> RSAPrivateKey:
    """A PEM RSA private key of the broker's own making, without cryptography's load-time re-validation.

    That validation is a primality check of p and q costing about 37 ms on this class of machine, more than a
    hundred RS256 signatures, paid on the first login of every tenant in every worker. It proves nothing about
    a key the broker generated and stored under authenticated encryption (the sealed columns), the case
    cryptography documents for `unsafe_skip_rsa_key_validation`. Never call this with a key from outside.
    """
    key = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("The key is not an RSA private key.")
    return key

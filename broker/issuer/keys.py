"""Tenant token-signing keys: generation (RS256 by default, ES256 on request) and JWKS publication."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from broker.errors import ValidationFailed
from broker.model import SigningKey

SUPPORTED_ALGS = ("RS256", "ES256")
RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    kid: str
    alg: str
    private_pem: bytes
    public_jwk: dict[str, Any]


def generate_signing_key(alg: str = "RS256") -> GeneratedKey:
    """A fresh key pair; kid is the RFC 7638 thumbprint of the public key."""
    key: RSAKey | ECKey
    if alg == "RS256":
        key = RSAKey.generate_key(RSA_BITS, auto_kid=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", auto_kid=True)
    else:
        raise ValidationFailed(f"Unsupported signing algorithm {alg!r}; use one of {', '.join(SUPPORTED_ALGS)}.")
    kid = key.thumbprint()
    public = dict(key.as_dict(private=False))
    public.update({"kid": kid, "alg": alg, "use": "sig"})
    pem = key.as_pem(private=True)
    return GeneratedKey(kid=kid, alg=alg, private_pem=pem, public_jwk=public)


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWKS: every published key (active and retired-but-still-valid)."""
    out: list[Mapping[str, Any]] = []
    for k in keys:
        out.append(dict(k.public_jwk))
    return {"keys": out}

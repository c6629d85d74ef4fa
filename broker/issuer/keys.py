"""Tenant token-signing keys: generation (RS256 by default, ES256 on request) and JWKS publication."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from broker.errors import ConfigError, ValidationFailed
from broker.model import MAX_SIGNED_TOKEN_TTL, SigningKey
from broker.trusted_keys import load_trusted_rsa_key

SUPPORTED_ALGS = ("RS256", "ES256")
RSA_BITS = 2048

RETIRED_KEY_PUBLISHED_SECONDS = MAX_SIGNED_TOKEN_TTL + 3600
"""How long a rotated-out key stays in the JWKS after its rotation: past the expiry of every access and ID token
it can have signed, plus an hour for replicas' clocks and for clients that cache the JWKS. After that it is
unpublished, so a key rotated out because it leaked stops being trusted by the apps too. The key itself is
kept: the broker still reads old id_token_hints signed with it at logout."""

MAX_ACTIVATE_AFTER = 30 * 86400
"""A staged rotation's key starts signing within this many seconds."""


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
        raise ValidationFailed(
            f"Unsupported signing algorithm {alg!r}; use one of {', '.join(SUPPORTED_ALGS)}."
        )
    kid = key.thumbprint()
    public = dict(key.as_dict(private=False))
    public.update({"kid": kid, "alg": alg, "use": "sig"})
    pem = key.as_pem(private=True)
    return GeneratedKey(kid=kid, alg=alg, private_pem=pem, public_jwk=public)


def published_keys(keys: Iterable[SigningKey], now: float) -> list[SigningKey]:
    """The keys whose tokens may be live or are to come: every key not retired (the one signing, and one a
    staged rotation publishes ahead of its activation), and each retired one for RETIRED_KEY_PUBLISHED_SECONDS
    after its retirement. The keys that sign come first: a client that takes the JWKS's first key of an alg
    instead of matching the `kid` still works while a staged rotation's key waits."""
    published = [
        k for k in keys
        if k.revoked_at is None
        and (k.retired_at is None or now < k.retired_at.timestamp() + RETIRED_KEY_PUBLISHED_SECONDS)
    ]
    return sorted(published, key=lambda k: not k.signs_at(now))  # stable: otherwise in the given order


def unrevoked_keys(keys: Iterable[SigningKey]) -> list[SigningKey]:
    """The keys the broker still trusts for its own old ID tokens (id_token_hint): all but the revoked ones."""
    return [k for k in keys if k.revoked_at is None]


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWKS of the given keys (see published_keys)."""
    out: list[Mapping[str, Any]] = []
    for k in keys:
        out.append(dict(k.public_jwk))
    return {"keys": out}


class NoSigningKey(ConfigError):
    """The tenant has no active key for the algorithm an app asks for."""

    status = 500
    default_code = "server_error"


def select_signing_key(keys: Sequence[SigningKey], alg: str, now: float) -> SigningKey:
    """The newest key of `alg` that signs at `now` (keys come active first, newest first)."""
    for k in keys:
        if k.alg == alg and k.signs_at(now):
            return k
    raise NoSigningKey(
        "No signing key is available for this application.",
        detail=f"tenant has no active {alg} signing key",
    )


class KeyRing:
    """Parsed joserfc keys for SigningKey values, cached by (kid, alg).

    A kid is the RFC 7638 thumbprint of its public key, so one kid always names the same key pair and
    a cached entry can never go stale. Parsing a PEM costs far more than signing; the cache is
    bounded (oldest entries dropped first).
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._private: dict[tuple[str, str], RSAKey | ECKey] = {}
        self._public: dict[tuple[str, str], RSAKey | ECKey] = {}
        self._lock = threading.Lock()

    def private(self, key: SigningKey) -> RSAKey | ECKey:
        cache_key = (key.kid, key.alg)
        with self._lock:
            found = self._private.get(cache_key)
        if found is None:
            found = _import(key.alg, key.private_pem)
            self._remember(self._private, cache_key, found)
        return found

    def public(self, key: SigningKey) -> RSAKey | ECKey:
        cache_key = (key.kid, key.alg)
        with self._lock:
            found = self._public.get(cache_key)
        if found is None:
            found = _import(key.alg, dict(key.public_jwk))
            if found.is_private:
                raise ConfigError("A published key contains private material.", detail=f"kid {key.kid}")
            self._remember(self._public, cache_key, found)
        return found

    def _remember(
        self, cache: dict[tuple[str, str], RSAKey | ECKey], k: tuple[str, str], v: RSAKey | ECKey
    ) -> None:
        with self._lock:
            while len(cache) >= self._max:
                cache.pop(next(iter(cache)))
            cache[k] = v


def _import(alg: str, data: bytes | dict[str, Any]) -> RSAKey | ECKey:
    if alg == "RS256":
        if isinstance(data, bytes):
            return RSAKey.import_key(load_trusted_rsa_key(data))
        return RSAKey.import_key(data)
    if alg == "ES256":
        ec = ECKey.import_key(data)
        if ec.curve_name != "P-256":
            raise ConfigError("An ES256 key must be on P-256.", detail=f"curve {ec.curve_name}")
        return ec
    raise ConfigError(f"Unsupported signing algorithm {alg!r}.")


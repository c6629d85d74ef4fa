"""Secrets at rest: sealing (AES-256-GCM) and keyed digests (HMAC-SHA-256), keyed from BROKER_SECRET_KEY.

Each purpose gets its own key, derived from the one secret with HKDF-SHA256 and a distinct `info` label,
so a sealed value can never be confused with a digest and vice versa. Private keys and upstream client
secrets are sealed (they must be read back); codes, refresh tokens, client secrets and admin keys are
stored only as digests and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import ConfigError

__all__ = ["MIN_SECRET_KEY_CHARS", "Sealer", "SecretHasher", "new_secret"]

MIN_SECRET_KEY_CHARS = 32

_SEAL_PREFIX = "v1."
_DIGEST_PREFIX = "h1:"
_NONCE_BYTES = 12  # 96-bit GCM nonce (NIST SP 800-38D, section 8.2.2: random construction)
_TAG_BYTES = 16
_INFO_SEAL_V1 = b"federation-broker/v1/seal/aes-256-gcm"
_INFO_DIGEST_V1 = b"federation-broker/v1/digest/hmac-sha256"
_INFO_TAG_V1 = b"federation-broker/v1/token-tag/hmac-sha256"
TAG_CHARS = 32  # 128 bits, hex


def _derive(secret_key: str, info: bytes) -> bytes:
    """A 256-bit key for one purpose (RFC 5869 HKDF-SHA256; `info` names the purpose)."""
    if not isinstance(secret_key, str) or len(secret_key) < MIN_SECRET_KEY_CHARS:
        raise ValueError(f"BROKER_SECRET_KEY must be at least {MIN_SECRET_KEY_CHARS} characters")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret_key.encode("utf-8"))


def _aad(context: str) -> bytes:
    # The format version is bound too, so a future "v2." can never be replayed as "v1.".
    return _SEAL_PREFIX.encode("ascii") + context.encode("utf-8")


def _unreadable(context: str, why: str) -> ConfigError:
    return ConfigError(
        "A sealed secret could not be read; check BROKER_SECRET_KEY.",
        code="sealed_secret_unreadable",
        detail=f"sealed value for context {context!r} unreadable: {why}",
    )


class Sealer:
    """Seals secrets with AES-256-GCM; `context` (e.g. "signing_key:<tenant id>") is authenticated data,
    so a sealed value only opens where it was sealed for."""

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        self._aead = AESGCM(_derive(secret_key, _INFO_SEAL_V1))
        # after a BROKER_SECRET_KEY rotation, values sealed under earlier keys still open (and get resealed)
        self._previous = tuple(AESGCM(_derive(k, _INFO_SEAL_V1)) for k in previous)

    def seal(self, plaintext: bytes, *, context: str) -> str:
        if not context:
            raise ValueError("seal() needs a non-empty context")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, _aad(context))
        return _SEAL_PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, sealed: str, *, context: str) -> bytes:
        raw = _decode(sealed, context)
        for aead in (self._aead, *self._previous):
            try:
                return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(context))
            except InvalidTag:
                continue
        raise _unreadable(context, "authentication failed (wrong key, wrong context or tampered)")

    def reseal(self, sealed: str, *, context: str) -> str | None:
        """The value sealed under the current key, or None when it already is."""
        raw = _decode(sealed, context)
        try:
            self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(context))
            return None
        except InvalidTag:
            return self.seal(self.open(sealed, context=context), context=context)


def _decode(sealed: str, context: str) -> bytes:
    if not isinstance(sealed, str) or not sealed.startswith(_SEAL_PREFIX):
        raise _unreadable(context, "unknown format")
    body = sealed[len(_SEAL_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _unreadable(context, "not base64url") from exc
    if len(raw) < _NONCE_BYTES + _TAG_BYTES:
        raise _unreadable(context, "too short")
    return raw


class SecretHasher:
    """Keyed digests of bearer secrets: the store keeps only the digest, verify compares in constant time."""

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        self._key = _derive(secret_key, _INFO_DIGEST_V1)
        # digests made under earlier keys keep verifying while those keys are listed (the plaintext needed to
        # re-digest them is never stored: re-issue those secrets to retire an old key)
        self._previous = tuple(_derive(k, _INFO_DIGEST_V1) for k in previous)
        # tags: what the broker writes into a value it issues, to know it again without storing it
        self._tag_keys = (_derive(secret_key, _INFO_TAG_V1), *(_derive(k, _INFO_TAG_V1) for k in previous))

    @staticmethod
    def _tag(key: bytes, value: str) -> str:
        return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:TAG_CHARS]

    def tag(self, value: str) -> str:
        """An HMAC tag of `value` under the current key (TAG_CHARS hex characters)."""
        return self._tag(self._tag_keys[0], value)

    def tag_ok(self, value: str, tag: str) -> bool:
        """Whether `tag` is `value`'s tag under the current or a previous key (constant time)."""
        given = tag.encode("utf-8")
        ok = False
        for key in self._tag_keys:
            ok |= hmac.compare_digest(self._tag(key, value).encode("ascii"), given)
        return ok

    @staticmethod
    def _mac(key: bytes, value: str) -> str:
        return _DIGEST_PREFIX + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def digest(self, value: str) -> str:
        return self._mac(self._key, value)

    def digests(self, value: str) -> list[str]:
        """The digest under the current key, then under each previous key (for lookups by digest)."""
        return [self._mac(k, value) for k in (self._key, *self._previous)]

    def verify(self, value: str, digest: str) -> bool:
        given = digest.encode("utf-8")
        ok = False
        for candidate in self.digests(value):
            ok |= hmac.compare_digest(candidate.encode("ascii"), given)
        return ok


def new_secret(nbytes: int = 32) -> str:
    """A fresh random secret (codes, tokens, ids): `nbytes` of entropy, base64url without padding."""
    if nbytes < 16:
        raise ValueError("a secret needs at least 16 random bytes")
    return secrets.token_urlsafe(nbytes)

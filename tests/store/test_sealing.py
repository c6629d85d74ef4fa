"""Secrets at rest: sealing with AES-256-GCM and keyed digests, both keyed from BROKER_SECRET_KEY."""

from __future__ import annotations

import base64
import hmac

import pytest

from broker.errors import ConfigError
from broker.store import sealing
from broker.store.sealing import Sealer, SecretHasher, new_secret

KEY = "k" * 16 + "0123456789abcdef"  # 32 characters
OTHER_KEY = "another-broker-secret-key-of-32+chars"
CTX = "signing_key:tenant-1"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(KEY)


@pytest.fixture
def hasher() -> SecretHasher:
    return SecretHasher(KEY)


def _unreadable(sealer: Sealer, sealed: str, context: str = CTX) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        sealer.open(sealed, context=context)
    return info.value


# --- Sealer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"-----BEGIN PRIVATE KEY-----\n...", bytes(range(256)) * 64])
def test_seal_then_open_roundtrips(sealer: Sealer, plaintext: bytes) -> None:
    sealed = sealer.seal(plaintext, context=CTX)
    assert sealed.startswith("v1.")
    assert "=" not in sealed
    body = sealed[3:]
    assert set(body) <= set(B64URL)
    assert sealer.open(sealed, context=CTX) == plaintext


def test_another_sealer_with_the_same_key_opens_it(sealer: Sealer) -> None:
    assert Sealer(KEY).open(sealer.seal(b"pem", context=CTX), context=CTX) == b"pem"


def test_sealed_value_does_not_contain_the_plaintext(sealer: Sealer) -> None:
    secret = b"client-secret-value-1234567890"
    sealed = sealer.seal(secret, context=CTX)
    raw = base64.urlsafe_b64decode(sealed[3:] + "=" * (-len(sealed[3:]) % 4))
    assert secret not in raw
    assert len(raw) == 12 + len(secret) + 16, "96-bit nonce + ciphertext + 128-bit tag"


def test_wrong_context_fails(sealer: Sealer) -> None:
    sealed = sealer.seal(b"pem", context="signing_key:tenant-1")
    err = _unreadable(sealer, sealed, context="signing_key:tenant-2")
    assert err.code == "sealed_secret_unreadable"


def test_different_secret_key_fails(sealer: Sealer) -> None:
    sealed = sealer.seal(b"pem", context=CTX)
    assert _unreadable(Sealer(OTHER_KEY), sealed).code == "sealed_secret_unreadable"


@pytest.mark.parametrize("position", [3, 10, 20, -1])
def test_tampered_value_fails(sealer: Sealer, position: int) -> None:
    sealed = sealer.seal(b"private key bytes", context=CTX)
    chars = list(sealed)
    # Flip the high bit of one base64url digit, so the decoded bytes really change.
    chars[position] = B64URL[B64URL.index(chars[position]) ^ 0b100000]
    assert _unreadable(sealer, "".join(chars)).code == "sealed_secret_unreadable"


@pytest.mark.parametrize(
    "bad",
    ["", "v1.", "v1.AAAA", "v2." + "A" * 60, "A" * 60, "v1.!!!!", "v1." + "A" * 41],
)
def test_malformed_value_fails_cleanly(sealer: Sealer, bad: str) -> None:
    assert _unreadable(sealer, bad).code == "sealed_secret_unreadable"


def test_failure_message_is_safe(sealer: Sealer) -> None:
    sealed = sealer.seal(b"TOP-SECRET-PLAINTEXT", context=CTX)
    err = _unreadable(Sealer(OTHER_KEY), sealed)
    for text in (err.message, str(err), err.detail or ""):
        assert "TOP-SECRET" not in text
        assert KEY not in text and OTHER_KEY not in text
        assert sealed not in text
    assert "BROKER_SECRET_KEY" in err.message


def test_nonces_are_unique(sealer: Sealer) -> None:
    sealed = [sealer.seal(b"same", context=CTX) for _ in range(500)]
    assert len(set(sealed)) == 500
    nonces = {base64.urlsafe_b64decode(s[3:] + "=" * (-len(s[3:]) % 4))[:12] for s in sealed}
    assert len(nonces) == 500


def test_empty_context_is_refused(sealer: Sealer) -> None:
    with pytest.raises(ValueError):
        sealer.seal(b"x", context="")


# --- SecretHasher ------------------------------------------------------------------------------


def test_digest_is_stable_and_prefixed(hasher: SecretHasher) -> None:
    d = hasher.digest("refresh-token-abc")
    assert d == hasher.digest("refresh-token-abc") == SecretHasher(KEY).digest("refresh-token-abc")
    assert d.startswith("h1:")
    assert len(d) == 3 + 64
    int(d[3:], 16)


def test_digest_depends_on_value_and_key(hasher: SecretHasher) -> None:
    assert hasher.digest("a") != hasher.digest("b")
    assert hasher.digest("a") != SecretHasher(OTHER_KEY).digest("a")


def test_digest_key_differs_from_a_plain_hash(hasher: SecretHasher) -> None:
    import hashlib

    assert hasher.digest("a")[3:] != hashlib.sha256(b"a").hexdigest()


def test_verify_accepts_the_right_value_only(hasher: SecretHasher) -> None:
    d = hasher.digest("admin-key-1")
    assert hasher.verify("admin-key-1", d) is True
    assert hasher.verify("admin-key-2", d) is False
    assert SecretHasher(OTHER_KEY).verify("admin-key-1", d) is False
    assert hasher.verify("admin-key-1", d[3:]) is False, "the version prefix is part of the digest"
    assert hasher.verify("admin-key-1", "") is False
    assert hasher.verify("admin-key-1", "h1:é") is False, "non-ASCII input is a mismatch, not an error"


def test_verify_compares_in_constant_time(hasher: SecretHasher, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    d = hasher.digest("v")
    assert hasher.verify("v", d) is True
    assert hasher.verify("w", d) is False
    assert len(calls) == 2


def test_unicode_values_digest(hasher: SecretHasher) -> None:
    assert hasher.verify("pässwörd", hasher.digest("pässwörd"))


# --- the secret key ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Sealer, SecretHasher])
@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_too_short_secret_key_is_refused(cls: type, secret: str) -> None:
    with pytest.raises(ValueError):
        cls(secret)


def test_seal_and_digest_keys_are_independent() -> None:
    # Same BROKER_SECRET_KEY, distinct HKDF labels: the derived keys differ.
    seal_key = sealing._derive(KEY, sealing._INFO_SEAL_V1)
    digest_key = sealing._derive(KEY, sealing._INFO_DIGEST_V1)
    assert seal_key != digest_key
    assert len(seal_key) == len(digest_key) == 32


# --- new_secret --------------------------------------------------------------------------------


def test_new_secret_is_random_urlsafe_and_long_enough() -> None:
    values = {new_secret() for _ in range(100)}
    assert len(values) == 100
    for v in values:
        assert len(v) == 43  # 32 bytes, base64url without padding
        assert set(v) <= set(B64URL)
    assert len(new_secret(48)) == 64


def test_new_secret_refuses_too_little_entropy() -> None:
    with pytest.raises(ValueError):
        new_secret(8)


def test_previous_keys_open_and_reseal_moves_to_the_current_key() -> None:
    old, new = "o" * 40, "n" * 40
    sealed = Sealer(old).seal(b"secret", context="ctx")
    rotated = Sealer(new, [old])
    assert rotated.open(sealed, context="ctx") == b"secret"
    moved = rotated.reseal(sealed, context="ctx")
    assert moved is not None and Sealer(new).open(moved, context="ctx") == b"secret"
    assert rotated.reseal(moved, context="ctx") is None
    with pytest.raises(ConfigError):
        Sealer(new).open(sealed, context="ctx")


def test_digests_under_previous_keys_still_verify() -> None:
    old, new = "o" * 40, "n" * 40
    digest = SecretHasher(old).digest("client-secret")
    assert SecretHasher(new, [old]).verify("client-secret", digest)
    assert not SecretHasher(new).verify("client-secret", digest)
    assert SecretHasher(new, [old]).digests("client-secret")[1] == digest

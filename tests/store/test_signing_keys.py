"""Signing-key rotation in the store, at once and staged: which key signs when, and until when each stays
published. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from broker.errors import Conflict, NotFound
from broker.issuer.keys import RETIRED_KEY_PUBLISHED_SECONDS, generate_signing_key, published_keys, select_signing_key
from broker.model import SigningKey
from broker.ports import NewSigningKey
from broker.store.config_repo import SqlConfigStore
from broker.store.sealing import Sealer

HOUR = 3600.0


def _new(alg: str = "RS256", activates_at: datetime | None = None) -> NewSigningKey:
    g = generate_signing_key(alg)
    return NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk, activates_at=activates_at)


def _signer(keys: Sequence[SigningKey], at: float, alg: str = "RS256") -> str:
    return select_signing_key(keys, alg, at).kid


def _published(keys: Sequence[SigningKey], at: float) -> set[str]:
    return {k.kid for k in published_keys(keys, at)}


def _setup(engine: Engine) -> tuple[SqlConfigStore, str, str, float]:
    store = SqlConfigStore(engine, Sealer("s" * 40))
    first = _new()
    tenant = store.create_tenant("acme", "Acme", first)
    return store, tenant.id, first.kid, datetime.now(UTC).timestamp()


def test_a_staged_key_is_published_at_once_and_signs_from_its_time(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    starts = datetime.fromtimestamp(now + HOUR, UTC)
    staged = store.add_signing_key(tid, _new(activates_at=starts))
    assert staged.activates_at == starts and staged.active
    keys = store.signing_keys(tid)
    assert _published(keys, now) == {first, staged.kid}
    assert _signer(keys, now) == first and _signer(keys, now + HOUR - 1) == first
    assert _signer(keys, now + HOUR) == staged.kid, "the new key signs from its activation on"
    old = next(k for k in keys if k.kid == first)
    assert old.retired_at == starts, "the old key's retirement is the new key's start"
    assert _published(keys, now + HOUR + RETIRED_KEY_PUBLISHED_SECONDS - 1) == {first, staged.kid}
    assert _published(keys, now + HOUR + RETIRED_KEY_PUBLISHED_SECONDS) == {staged.kid}
    # the key that signs comes first in the JWKS: before the activation the current one, then the new one
    assert [k.kid for k in published_keys(keys, now)] == [first, staged.kid]
    assert [k.kid for k in published_keys(keys, now + HOUR)] == [staged.kid, first]


def test_a_rotation_at_once_overrides_a_staged_one(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    staged = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    at_once = store.add_signing_key(tid, _new())
    keys = store.signing_keys(tid)
    for t in (now + 1, now + 2 * HOUR):
        assert _signer(keys, t) == at_once.kid, "the staged key never signs"
    by_kid = {k.kid: k for k in keys}
    assert not by_kid[first].active and not by_kid[staged.kid].active
    # both retired now, so both published only for the tokens they might have signed
    assert _published(keys, now + RETIRED_KEY_PUBLISHED_SECONDS + 60) == {at_once.kid}


def test_an_earlier_staged_rotation_supersedes_a_later_one(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    late = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + 2 * HOUR, UTC)))
    early = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    keys = store.signing_keys(tid)
    assert _signer(keys, now) == first
    assert _signer(keys, now + HOUR) == early.kid and _signer(keys, now + 3 * HOUR) == early.kid
    withdrawn = {k.kid: k for k in keys}[late.kid]
    assert not withdrawn.active and withdrawn.retired_at is not None
    assert withdrawn.retired_at.timestamp() <= datetime.now(UTC).timestamp(), "withdrawn now, not at a later time"


def test_a_later_staged_rotation_follows_an_earlier_one(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    one = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    two = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + 2 * HOUR, UTC)))
    keys = store.signing_keys(tid)
    assert [_signer(keys, t) for t in (now, now + HOUR, now + 2 * HOUR)] == [first, one.kid, two.kid]
    assert _published(keys, now) == {first, one.kid, two.kid}


def test_a_staged_rotation_leaves_the_other_algorithm_alone(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    es = store.add_signing_key(tid, _new("ES256"))
    store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    keys = store.signing_keys(tid)
    assert _signer(keys, now + 2 * HOUR, "ES256") == es.kid and _signer(keys, now, "RS256") == first


def test_an_activation_time_already_past_is_a_rotation_at_once(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    new = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now - 5, UTC)))
    assert new.activates_at is None
    keys = store.signing_keys(tid)
    assert _signer(keys, now) == new.kid and not {k.kid: k for k in keys}[first].active


def test_a_key_a_staged_rotation_has_replaced_is_retired_by_the_next_rotation(engine: Engine) -> None:
    """Once the staged key signs, the key before it stays marked active in the table; a later rotation marks it
    retired without moving its retirement time, so it leaves the JWKS when it would have."""
    store, tid, first, now = _setup(engine)
    starts = datetime.now(UTC) + timedelta(seconds=1.5)
    store.add_signing_key(tid, _new(activates_at=starts))
    time.sleep(max(0.0, starts.timestamp() - time.time()) + 0.1)
    store.add_signing_key(tid, _new())
    old = {k.kid: k for k in store.signing_keys(tid)}[first]
    assert not old.active and old.retired_at == starts


def test_a_staged_rotation_with_no_key_of_its_algorithm_signs_at_once(engine: Engine) -> None:
    """Nothing of that alg signs to stage against (the tenant's first ES256 key): the new key signs at once,
    so an app that asks for ES256 is never left without a key."""
    store, tid, first, now = _setup(engine)
    es = store.add_signing_key(tid, _new("ES256", activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    assert es.activates_at is None
    keys = store.signing_keys(tid)
    assert _signer(keys, now, "ES256") == es.kid and _signer(keys, now, "RS256") == first


# -- revocation ------------------------------------------------------------------------------------

def test_a_revoked_key_is_neither_published_nor_signing(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    second = store.add_signing_key(tid, _new())
    revoked, changed = store.revoke_signing_key(tid, first)
    assert changed and revoked.revoked_at is not None and not revoked.active
    keys = store.signing_keys(tid)
    assert _published(keys, now) == {second.kid} and _signer(keys, now) == second.kid
    again, changed = store.revoke_signing_key(tid, first)
    assert not changed and again.revoked_at == revoked.revoked_at, "a second revocation changes nothing"


def test_the_key_that_signs_cannot_be_revoked(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    with pytest.raises(Conflict) as err:
        store.revoke_signing_key(tid, first)
    assert err.value.code == "key_in_use"
    keys = store.signing_keys(tid)
    assert _signer(keys, now) == first and keys[0].revoked_at is None, "nothing changed"
    with pytest.raises(NotFound):
        store.revoke_signing_key(tid, "no-such-kid")


def test_a_revoked_pending_key_leaves_its_predecessor_signing(engine: Engine) -> None:
    store, tid, first, now = _setup(engine)
    one = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + HOUR, UTC)))
    two = store.add_signing_key(tid, _new(activates_at=datetime.fromtimestamp(now + 2 * HOUR, UTC)))
    store.revoke_signing_key(tid, one.kid)
    keys = store.signing_keys(tid)
    assert [_signer(keys, t) for t in (now, now + HOUR, now + 2 * HOUR)] == [first, first, two.kid]
    assert _published(keys, now) == {first, two.kid}
    store.revoke_signing_key(tid, two.kid)
    keys = store.signing_keys(tid)
    assert [_signer(keys, t) for t in (now, now + 3 * HOUR, now + 30 * 86400)] == [first] * 3, "never left keyless"
    assert _published(keys, now) == {first}

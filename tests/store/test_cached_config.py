"""The config read cache: exact across replicas (a write on one is seen by the next read on another)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.errors import StateStoreError
from broker.issuer.keys import generate_signing_key
from broker.ports import NewSigningKey, StateStore
from broker.store.cached import CachedConfigStore
from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine, upgrade
from broker.store.generation import Generation, generation_for
from broker.store.sealing import Sealer

SECRET = "s" * 40


def _key() -> NewSigningKey:
    g = generate_signing_key()
    return NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk)


@pytest.fixture
def replicas(database_url: str, state_store: StateStore) -> Iterator[tuple[CachedConfigStore, CachedConfigStore]]:
    engine_a = make_engine(database_url)
    upgrade(engine_a)
    engine_b = make_engine(database_url)
    a = CachedConfigStore(SqlConfigStore(engine_a, Sealer(SECRET)), state_store)
    b = CachedConfigStore(SqlConfigStore(engine_b, Sealer(SECRET)), state_store)
    yield a, b
    engine_a.dispose()
    engine_b.dispose()


def test_write_on_one_replica_is_seen_by_the_next_read_on_another(
        replicas: tuple[CachedConfigStore, CachedConfigStore]) -> None:
    a, b = replicas
    t = a.create_tenant("acme", "Acme", _key())
    assert b.tenant_by_slug("acme") == t
    assert b.tenant_by_slug("acme") is b.tenant_by_slug("acme")  # served from the cache
    a.update_tenant(t.id, name="Acme 2")
    assert b.tenant_by_slug("acme").name == "Acme 2"  # type: ignore[union-attr]
    first = b.signing_keys(t.id)[0].kid
    a.add_signing_key(t.id, _key())
    keys = b.signing_keys(t.id)
    assert keys[0].kid != first and {k.kid for k in keys} >= {first}


def test_atomic_batches_invalidate_once_after_commit(replicas: tuple[CachedConfigStore, CachedConfigStore]) -> None:
    a, b = replicas
    t = a.create_tenant("acme", "Acme", _key())
    assert b.tenant_by_slug("acme") is not None
    with a.atomic():
        a.update_tenant(t.id, name="Inside")
        assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]  # not committed yet
    assert b.tenant_by_slug("acme").name == "Inside"  # type: ignore[union-attr]


def test_rolled_back_batch_leaves_reads_unchanged(replicas: tuple[CachedConfigStore, CachedConfigStore]) -> None:
    a, b = replicas
    t = a.create_tenant("acme", "Acme", _key())
    with pytest.raises(RuntimeError):
        with a.atomic():
            a.update_tenant(t.id, name="Doomed")
            raise RuntimeError("boom")
    assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]


def test_one_generation_per_request_scope(replicas: tuple[CachedConfigStore, CachedConfigStore]) -> None:
    a, b = replicas
    t = a.create_tenant("acme", "Acme", _key())
    b.begin_request()
    assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]
    a.update_tenant(t.id, name="Changed")
    assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]  # same request: one view
    b.end_request()
    assert b.tenant_by_slug("acme").name == "Changed"  # type: ignore[union-attr]
    b.begin_request()
    assert b.tenant_by_slug("acme").name == "Changed"  # type: ignore[union-attr]
    b.end_request()


class _FlakyGeneration:
    """The real generation, except that the next `failures` bumps fail as an unreachable store would."""

    def __init__(self, inner: Generation) -> None:
        self.inner = inner
        self.failures = 0

    def current(self) -> bytes | None:
        return self.inner.current()

    def poll(self) -> tuple[bytes | None, frozenset[str] | None]:
        return self.inner.poll()

    def bump(self, scopes: frozenset[str] | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise StateStoreError("The state store is unavailable.")
        self.inner.bump(scopes)


def test_a_failed_generation_bump_is_owed_and_paid_by_the_next_request(
        database_url: str, state_store: StateStore) -> None:
    engine_a = make_engine(database_url)
    upgrade(engine_a)
    engine_b = make_engine(database_url)
    inner_a = SqlConfigStore(engine_a, Sealer(SECRET))
    flaky = _FlakyGeneration(generation_for(state_store, inner_a))
    a = CachedConfigStore(inner_a, state_store, generation=flaky)
    b = CachedConfigStore(SqlConfigStore(engine_b, Sealer(SECRET)), state_store)
    try:
        t = a.create_tenant("acme", "Acme", _key())
        assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]
        flaky.failures = 2
        assert not a.announcement_owed
        # committed, and the other replica was not told: the write does not fail (it happened), it is owed
        assert a.update_tenant(t.id, name="Acme 2").name == "Acme 2"
        assert a.announcement_owed
        assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]
        a.begin_request()  # still unreachable: the request goes on, the bump stays owed
        a.end_request()
        assert b.tenant_by_slug("acme").name == "Acme"  # type: ignore[union-attr]
        a.begin_request()  # reachable again: paid
        a.end_request()
        assert b.tenant_by_slug("acme").name == "Acme 2"  # type: ignore[union-attr]
        assert flaky.failures == 0 and not a.announcement_owed
    finally:
        engine_a.dispose()
        engine_b.dispose()


def test_names_no_row_can_have_are_neither_queried_nor_cached(database_url: str, state_store: StateStore) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    inner = SqlConfigStore(engine, Sealer(SECRET))
    try:
        t = inner.create_tenant("acme", "Acme", _key())
        calls: list[str] = []
        for name in ("tenant_by_slug", "connection", "app"):
            original = getattr(inner, name)
            setattr(inner, name, lambda *a, _o=original, _n=name: (calls.append(_n), _o(*a))[1])
        cached = CachedConfigStore(inner, state_store)
        for junk in ("x" * 3000, "UPPER", "a_b", "-lead", "caf\u00e9", ""):
            assert cached.tenant_by_slug(junk) is None and cached.connection(t.id, junk) is None
        assert cached.app(t.id, "c" * 101) is None and cached.app(t.id, "nul\x00") is None
        assert calls == [] and not cached._entries and not cached._misses
        assert cached.tenant_by_slug("acme") == t and cached.app(t.id, "c" * 100) is None
        assert calls == ["tenant_by_slug", "app"]
    finally:
        engine.dispose()


def test_lookups_of_unknown_names_have_a_bounded_cache_of_their_own(database_url: str,
                                                                   state_store: StateStore) -> None:
    """Requests naming random tenants can neither grow a worker's memory past max_misses nor push the real
    tenants out of the cache."""
    engine = make_engine(database_url)
    upgrade(engine)
    inner = SqlConfigStore(engine, Sealer(SECRET))
    try:
        t = inner.create_tenant("acme", "Acme", _key())
        cached = CachedConfigStore(inner, state_store, max_entries=3, max_misses=5)
        assert cached.tenant_by_slug("acme") == t
        for n in range(50):
            assert cached.tenant_by_slug(f"nobody-{n}") is None
        assert len(cached._misses) == 5 and len(cached._entries) == 1
        reads: list[str] = []
        original = inner.tenant_by_slug
        inner.tenant_by_slug = lambda slug: (reads.append(slug), original(slug))[1]  # type: ignore[method-assign]
        assert cached.tenant_by_slug("acme") == t and cached.tenant_by_slug("nobody-49") is None
        assert reads == [], "both still served from the cache"
        created = cached.create_tenant("nobody-49", "Now it exists", _key())
        assert cached.tenant_by_slug("nobody-49") == created, "creating it ends the cached miss"
        assert ("tenant_slug", "nobody-49") in cached._entries and ("tenant_slug", "nobody-49") not in cached._misses
    finally:
        engine.dispose()

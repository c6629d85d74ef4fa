"""Scoped invalidation of the config cache across replicas (Redis pub/sub): a write to one tenant makes the
other replicas reload that tenant only; anything they cannot be sure of makes them reload everything."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from broker.issuer.keys import generate_signing_key
from broker.model import MappingConfig
from broker.ports import AppDraft, ConnectionDraft, NewSigningKey
from broker.store.cached import CachedConfigStore
from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine, upgrade
from broker.store.generation import GENERATION_KEY
from broker.store.sealing import Sealer
from broker.store.state_redis import RedisStateStore

pytestmark = pytest.mark.redis
SECRET = "s" * 40


def _key() -> NewSigningKey:
    g = generate_signing_key()
    return NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk)


class CountingStore(SqlConfigStore):
    """The SQL store, counting the reads that reach the database, per (method, first argument)."""

    COUNTED = ("tenant_by_slug", "connection", "connections", "app", "signing_keys")

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.reads: Counter[tuple[str, str]] = Counter()
        for name in self.COUNTED:
            setattr(self, name, self._counting(name, getattr(self, name)))

    def _counting(self, name: str, read: Any) -> Any:
        def counted(first: str, *rest: Any) -> Any:
            self.reads[name, first] += 1
            return read(first, *rest)
        return counted


class Replica:
    def __init__(self, database_url: str, redis_url: str, prefix: str) -> None:
        self.engine = make_engine(database_url)
        self.state = RedisStateStore.from_url(redis_url, prefix=prefix)
        self.sql = CountingStore(self.engine, Sealer(SECRET))
        self.cache = CachedConfigStore(self.sql, self.state)

    def request(self, fn: Any) -> Any:
        """fn(cache) inside one request scope, as the web layer runs it."""
        self.cache.begin_request()
        try:
            return fn(self.cache)
        finally:
            self.cache.end_request()

    def read_all(self, tenants: dict[str, str]) -> None:
        """A login's worth of reads for each tenant (slug -> id)."""
        def reads(c: CachedConfigStore) -> None:
            for slug, tid in tenants.items():
                c.tenant_by_slug(slug)
                c.connection(tid, "okta")
                c.connections(tid)
                c.app(tid, f"{slug}-app")
                c.signing_keys(tid)
        self.request(reads)

    def close(self) -> None:
        self.cache.generation.close()  # type: ignore[attr-defined]
        self.state.client.close()
        self.engine.dispose()


@pytest.fixture
def replicas(database_url: str, redis_url: str, redis_prefix: str) -> Iterator[tuple[Replica, Replica]]:
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    a, b = Replica(database_url, redis_url, redis_prefix), Replica(database_url, redis_url, redis_prefix)
    yield a, b
    a.close()
    b.close()


def _draft(slug: str, name: str = "Okta") -> ConnectionDraft:
    return ConnectionDraft(slug=slug, protocol="saml", domains=(f"{name.lower()}.test",), restrict_to_domains=False,
                           mapping=MappingConfig(preset="okta"), settings={}, secrets={}, enabled=True, sp=None)


def _app(name: str) -> AppDraft:
    return AppDraft(name=name, redirect_uris=("https://app.test/cb",), post_logout_redirect_uris=(), public=False,
                    allowed_scopes=("openid",), token_endpoint_auth_method="client_secret_basic",
                    id_token_signed_response_alg="RS256", access_token_ttl=300, id_token_ttl=300,
                    refresh_token_ttl=3600)


@pytest.fixture
def two(replicas: tuple[Replica, Replica]) -> dict[str, str]:
    a, _ = replicas
    out = {}
    for slug in ("acme", "globex"):
        t = a.cache.create_tenant(slug, slug.title(), _key())
        a.cache.create_connection(t.id, _draft("okta"))
        a.cache.create_app(t.id, f"{slug}-app", _app("Portal"), None)
        out[slug] = t.id
    return out


def _reads(b: Replica, tenant_id: str, slug: str) -> int:
    return sum(n for (method, arg), n in b.sql.reads.items() if arg in (tenant_id, slug))


def test_a_write_to_one_tenant_leaves_the_others_cached_on_other_replicas(
        replicas: tuple[Replica, Replica], two: dict[str, str]) -> None:
    a, b = replicas
    b.read_all(two)
    b.read_all(two)
    before = Counter(b.sql.reads)
    b.read_all(two)
    assert b.sql.reads == before, "warm: nothing reaches the database"
    a.cache.update_tenant(two["acme"], name="Acme 2")
    b.read_all(two)
    def earlier(tenant_id: str, slug: str) -> int:
        return sum(v for (_, k), v in before.items() if k in (tenant_id, slug))

    assert _reads(b, two["globex"], "globex") == earlier(two["globex"], "globex")
    assert _reads(b, two["acme"], "acme") > earlier(two["acme"], "acme")
    assert b.request(lambda c: c.tenant_by_slug("acme")).name == "Acme 2"


@pytest.mark.parametrize("write", [
    "update_tenant", "create_connection", "replace_connection", "delete_connection", "create_app", "replace_app",
    "delete_app", "add_signing_key", "revoke_signing_key",
])
def test_each_kind_of_write_reaches_the_other_replica_for_its_tenant_only(
        replicas: tuple[Replica, Replica], two: dict[str, str], write: str) -> None:
    a, b = replicas
    acme, globex = two["acme"], two["globex"]
    b.read_all(two)
    globex_reads = _reads(b, globex, "globex")
    conn = a.sql.connection(acme, "okta")
    app = a.sql.app(acme, "acme-app")
    assert conn is not None and app is not None
    expect: Any
    if write == "update_tenant":
        a.cache.update_tenant(acme, name="Renamed")
        expect = lambda c: c.tenant_by_slug("acme").name == "Renamed"  # noqa: E731
    elif write == "create_connection":
        a.cache.create_connection(acme, _draft("entra", "Entra"))
        expect = lambda c: {x.slug for x in c.connections(acme)} == {"okta", "entra"}  # noqa: E731
    elif write == "replace_connection":
        a.cache.replace_connection(conn.id, _draft("okta", "Changed"))
        expect = lambda c: c.connection(acme, "okta").domains == ("changed.test",)  # noqa: E731
    elif write == "delete_connection":
        a.cache.delete_connection(conn.id)
        expect = lambda c: c.connection(acme, "okta") is None and c.connections(acme) == ()  # noqa: E731
    elif write == "create_app":
        a.cache.create_app(acme, "acme-app-2", _app("Second"), None)
        expect = lambda c: c.app(acme, "acme-app-2") is not None  # noqa: E731
    elif write == "replace_app":
        a.cache.replace_app(app.id, _app("Renamed"), None)
        expect = lambda c: c.app(acme, "acme-app").name == "Renamed"  # noqa: E731
    elif write == "delete_app":
        a.cache.delete_app(app.id)
        expect = lambda c: c.app(acme, "acme-app") is None  # noqa: E731
    elif write == "add_signing_key":
        first = b.request(lambda c: c.signing_keys(acme))[0].kid
        a.cache.add_signing_key(acme, _key())
        expect = lambda c: c.signing_keys(acme)[0].kid != first  # noqa: E731
    else:
        old = a.sql.signing_keys(acme)[0].kid
        a.sql.add_signing_key(acme, _key())  # behind the cache's back: b learns of it with the revocation
        b.read_all(two)
        globex_reads = _reads(b, globex, "globex")
        a.cache.revoke_signing_key(acme, old)
        expect = lambda c: {k.kid: k for k in c.signing_keys(acme)}[old].revoked_at is not None  # noqa: E731
    assert b.request(expect), f"{write} on replica a is seen by the next request on replica b"
    b.read_all(two)
    assert _reads(b, globex, "globex") == globex_reads, f"{write} to acme made b reload globex"


def test_a_created_tenant_replaces_a_cached_no_such_tenant(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    assert b.request(lambda c: c.tenant_by_slug("newco")) is None
    t = a.cache.create_tenant("newco", "NewCo", _key())
    assert b.request(lambda c: c.tenant_by_slug("newco")) == t


def test_a_deleted_tenant_is_gone_on_the_other_replica(replicas: tuple[Replica, Replica], two: dict[str, str]) -> None:
    a, b = replicas
    b.read_all(two)
    a.cache.delete_tenant(two["acme"])
    assert b.request(lambda c: (c.tenant_by_slug("acme"), c.connection(two["acme"], "okta"),
                                c.app(two["acme"], "acme-app"), tuple(c.signing_keys(two["acme"])))) == (
        None, None, None, ())
    assert b.request(lambda c: c.tenant_by_slug("globex")) is not None


def test_a_batch_announces_every_tenant_it_touched_once(replicas: tuple[Replica, Replica],
                                                        two: dict[str, str]) -> None:
    a, b = replicas
    third = a.cache.create_tenant("initech", "Initech", _key())
    tenants = {**two, "initech": third.id}
    b.read_all(tenants)
    initech_reads = _reads(b, third.id, "initech")
    with a.cache.atomic():
        a.cache.update_tenant(two["acme"], name="A2")
        a.cache.update_tenant(two["globex"], name="G2")
    assert b.request(lambda c: (c.tenant_by_slug("acme").name, c.tenant_by_slug("globex").name)) == ("A2", "G2")
    b.read_all(tenants)
    assert _reads(b, third.id, "initech") == initech_reads


def test_a_change_announced_without_scopes_reloads_everything(replicas: tuple[Replica, Replica],
                                                              two: dict[str, str], redis_url: str,
                                                              redis_prefix: str) -> None:
    """What a replica of an earlier version sends: a bare token."""
    _, b = replicas
    b.read_all(two)
    globex_reads = _reads(b, two["globex"], "globex")
    raw = redis.Redis.from_url(redis_url)
    try:
        token = b"\x00\n" + b"legacy-token"  # even one that happens to contain a line break
        pipe = raw.pipeline(transaction=True)
        pipe.set(redis_prefix + GENERATION_KEY, token)
        pipe.publish(redis_prefix + GENERATION_KEY, token)
        pipe.execute()
    finally:
        raw.close()
    b.read_all(two)
    assert _reads(b, two["globex"], "globex") > globex_reads


def test_a_token_no_notification_explained_reloads_everything(replicas: tuple[Replica, Replica],
                                                              two: dict[str, str], redis_url: str,
                                                              redis_prefix: str) -> None:
    _, b = replicas
    b.read_all(two)
    globex_reads = _reads(b, two["globex"], "globex")
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(redis_prefix + GENERATION_KEY, b"changed-silently")  # no notification: found by the periodic GET
    finally:
        raw.close()
    time.sleep(1.1)  # RedisGeneration verify_every
    b.read_all(two)
    assert _reads(b, two["globex"], "globex") > globex_reads


def test_the_writer_keeps_its_other_tenants_cached(replicas: tuple[Replica, Replica], two: dict[str, str]) -> None:
    a, _ = replicas
    a.read_all(two)
    a.read_all(two)
    globex_reads = _reads(a, two["globex"], "globex")
    a.request(lambda c: c.update_tenant(two["acme"], name="Mine"))
    a.read_all(two)
    a.read_all(two)
    assert _reads(a, two["globex"], "globex") == globex_reads
    assert a.request(lambda c: c.tenant_by_slug("acme").name) == "Mine"


def test_a_repeated_revocation_announces_nothing(replicas: tuple[Replica, Replica], two: dict[str, str]) -> None:
    a, b = replicas
    acme = two["acme"]
    old = a.sql.signing_keys(acme)[0].kid
    a.cache.add_signing_key(acme, _key())
    a.cache.revoke_signing_key(acme, old)
    b.read_all(two)
    acme_reads = _reads(b, acme, "acme")
    assert a.cache.revoke_signing_key(acme, old)[1] is False
    b.read_all(two)
    assert _reads(b, acme, "acme") == acme_reads, "no replica reloads the tenant for a change that was none"

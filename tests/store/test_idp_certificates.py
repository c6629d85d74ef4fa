"""The expiry dates of each SAML connection's IdP signing certificates, kept by the store on every metadata
write (inline metadata, a metadata_url's good copy) and filled in by the migration for existing connections,
so that the expiry gauge covers every connection without parsing any metadata at scrape time."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import Engine

from broker.errors import StateStoreError
from broker.issuer.keys import generate_signing_key
from broker.model import MappingConfig
from broker.ports import ConnectionDraft, MetadataState, NewSigningKey
from broker.samlxml.metadata import signing_certificate_expiry
from broker.store.cached import CachedConfigStore
from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine, upgrade
from broker.store.sealing import Sealer
from broker.store.state import MemoryStateStore
from tests.samlxml.idp_fixtures import Idp, make_idp
from tests.support.saml_idp import SamlIdp

OKTA = make_idp("https://okta.certs.test/saml")
ROTATED = make_idp("https://okta.certs.test/saml", key_type="ec")


def _metadata(idp: Idp) -> str:
    return SamlIdp(idp=idp, url="https://idp.certs.test").metadata_xml()


def _expiry(idp: Idp) -> dict[str, float]:
    return signing_certificate_expiry(_metadata(idp).encode())


def _draft(slug: str, settings: Mapping[str, object], *, protocol: str = "saml",
           enabled: bool = True) -> ConnectionDraft:
    return ConnectionDraft(slug=slug, protocol=protocol, domains=(), restrict_to_domains=False,
                           mapping=MappingConfig(preset="okta"), settings=dict(settings), secrets={},
                           enabled=enabled, sp=None)


def _store(engine: Engine) -> tuple[SqlConfigStore, str]:
    store = SqlConfigStore(engine, Sealer("s" * 40), certificate_expiry=signing_certificate_expiry)
    g = generate_signing_key()
    tenant = store.create_tenant("acme", "Acme", NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk))
    return store, tenant.id


def _by_connection(store: SqlConfigStore | CachedConfigStore) -> dict[str, dict[str, float]]:
    return {conn: dict(certs) for tenant, conn, certs in store.idp_certificates() if tenant == "acme"}


def test_inline_metadata_is_listed_from_creation_and_follows_every_replacement(engine: Engine) -> None:
    store, tenant = _store(engine)
    c = store.create_connection(tenant, _draft("okta", {"metadata_xml": _metadata(OKTA)}))
    store.create_connection(tenant, _draft("empty", {}))  # no metadata yet: nothing to report
    store.create_connection(tenant, _draft("off", {"metadata_xml": _metadata(OKTA)}, enabled=False))
    store.create_connection(tenant, _draft("oidc", {"issuer": "https://op.test"}, protocol="oidc"))
    listed = _by_connection(store)
    assert listed == {"okta": _expiry(OKTA)}
    (not_after,) = listed["okta"].values()
    assert not_after > (dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)).timestamp()

    store.replace_connection(c.id, _draft("okta", {"metadata_xml": _metadata(ROTATED)}))
    assert _by_connection(store) == {"okta": _expiry(ROTATED)}, "the rotated certificate replaces the old one"
    store.replace_connection(c.id, _draft("okta", {}))
    assert _by_connection(store) == {}


def test_a_metadata_url_is_listed_once_a_good_copy_is_kept(engine: Engine) -> None:
    store, tenant = _store(engine)
    c = store.create_connection(tenant, _draft("okta", {"metadata_url": "https://idp.certs.test/metadata"}))
    assert _by_connection(store) == {}
    store.save_metadata_state(c.id, MetadataState(_metadata(OKTA).encode(), 1000.0, 2000.0, None))
    assert _by_connection(store) == {"okta": _expiry(OKTA)}
    # a failed refresh keeps the last good copy, and with it the certificates
    store.save_metadata_state(c.id, MetadataState(_metadata(OKTA).encode(), 1000.0, 2300.0, "HTTP 503"))
    assert _by_connection(store) == {"okta": _expiry(OKTA)}
    store.save_metadata_state(c.id, MetadataState(_metadata(ROTATED).encode(), 2300.0, 5000.0, None))
    assert _by_connection(store) == {"okta": _expiry(ROTATED)}
    # saving the connection again with the same URL keeps what was fetched
    store.replace_connection(c.id, _draft("okta", {"metadata_url": "https://idp.certs.test/metadata"}))
    assert _by_connection(store) == {"okta": _expiry(ROTATED)}
    # another URL: the old copy is dropped until the new one is fetched
    store.replace_connection(c.id, _draft("okta", {"metadata_url": "https://other.certs.test/metadata"}))
    assert _by_connection(store) == {}


def _count_reads(inner: SqlConfigStore) -> list[int]:
    """A list that gains an item each time `inner.idp_certificates` is read."""
    calls: list[int] = []
    original = inner.idp_certificates

    def counting() -> list[tuple[str, str, dict[str, float]]]:
        calls.append(1)
        return original()

    inner.idp_certificates = counting  # type: ignore[method-assign]
    return calls


def test_the_cached_store_rereads_after_any_configuration_change(engine: Engine) -> None:
    inner, tenant = _store(engine)
    calls = _count_reads(inner)
    now = [0.0]
    cached = CachedConfigStore(inner, MemoryStateStore(), clock=lambda: now[0])
    cached.create_connection(tenant, _draft("okta", {"metadata_xml": _metadata(OKTA)}))
    assert _by_connection(cached) == {"okta": _expiry(OKTA)}
    assert _by_connection(cached) == {"okta": _expiry(OKTA)}
    assert len(calls) == 1, "unchanged configuration: read once"
    c = cached.connection(tenant, "okta")
    assert c is not None
    cached.replace_connection(c.id, _draft("okta", {"metadata_xml": _metadata(ROTATED)}))
    assert _by_connection(cached) == {"okta": _expiry(ROTATED)}, "a metadata upload shows at the next scrape"
    assert len(calls) == 2
    now[0] += 61  # a refreshed metadata_url is not a configuration change: seen within a minute
    cached.idp_certificates()
    assert len(calls) == 3


class _DownGeneration:
    """The configuration generation of a state store that cannot be reached (Redis down)."""

    def current(self) -> bytes | None:
        raise StateStoreError("The state store is unavailable.")

    def poll(self) -> tuple[bytes | None, frozenset[str] | None]:
        raise StateStoreError("The state store is unavailable.")

    def bump(self, scopes: frozenset[str] | None = None) -> None:
        raise StateStoreError("The state store is unavailable.")


def test_the_cached_store_reads_the_database_while_the_state_store_is_down(engine: Engine) -> None:
    """A worker started during a Redis outage has no earlier rows to fall back on: the gauge still comes from
    the database, re-read at most once per max_age."""
    inner, tenant = _store(engine)
    inner.create_connection(tenant, _draft("okta", {"metadata_xml": _metadata(OKTA)}))
    calls = _count_reads(inner)
    now = [0.0]
    fresh = CachedConfigStore(inner, MemoryStateStore(), clock=lambda: now[0], generation=_DownGeneration())
    assert _by_connection(fresh) == {"okta": _expiry(OKTA)}
    assert _by_connection(fresh) == {"okta": _expiry(OKTA)} and len(calls) == 1
    now[0] += 61
    fresh.idp_certificates()
    assert len(calls) == 2


def test_the_migration_fills_in_existing_connections(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0002")
        now = dt.datetime.now(dt.UTC)
        tenant_id = str(uuid.uuid4())
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO tenants (id, slug, name, version, created_at, updated_at) "
                "VALUES (:id, 'acme', 'Acme', 1, :now, :now)"), {"id": tenant_id, "now": now})
            for slug, protocol, settings, fetched in (
                ("inline", "saml", {"metadata_xml": _metadata(OKTA)}, None),
                ("by-url", "saml", {"metadata_url": "https://idp.certs.test/md"}, _metadata(ROTATED)),
                ("broken", "saml", {"metadata_xml": "<not-metadata/>"}, None),
                ("oidc", "oidc", {"issuer": "https://op.test"}, None),
            ):
                conn.execute(
                    sa.text("INSERT INTO connections (id, tenant_id, slug, protocol, domains, restrict_to_domains,"
                            " mapping, settings, enabled, version, created_at, updated_at, fetched_metadata) "
                            "VALUES (:id, :t, :slug, :p, :d, false, :m, :s, true, 1, :now, :now, :f)")
                    .bindparams(sa.bindparam("d", type_=sa.JSON), sa.bindparam("m", type_=sa.JSON),
                                sa.bindparam("s", type_=sa.JSON)),
                    {"id": str(uuid.uuid4()), "t": tenant_id, "slug": slug, "p": protocol, "d": [],
                     "m": {"preset": "okta", "rules": []}, "s": settings, "now": now, "f": fetched})
        upgrade(engine)
        store = SqlConfigStore(engine, Sealer("s" * 40), certificate_expiry=signing_certificate_expiry)
        assert _by_connection(store) == {"inline": _expiry(OKTA), "by-url": _expiry(ROTATED)}
    finally:
        engine.dispose()

"""Audit rows: what `record` writes is what `audit_page` reads, on both databases (PostgreSQL takes a prepared
statement on the driver connection, SQLite the SQLAlchemy Core INSERT), and a PostgreSQL connection that
dies under the prepared INSERT is a clear ServiceUnavailable once, never a connection handed out again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from broker.errors import ServiceUnavailable
from broker.issuer.keys import generate_signing_key
from broker.model import AuditEvent
from broker.ports import NewSigningKey
from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine, upgrade
from broker.store.sealing import Sealer


def _event(n: int, **kw: object) -> AuditEvent:
    base: dict[str, object] = dict(
        id=f"00000000-0000-4000-8000-{n:012d}", time=datetime(2026, 11, 30, 12, 0, 0, 123456, UTC)
        + timedelta(seconds=n), type="login", tenant="acme", connection="okta", app="portal", outcome="failure",
        reason="signature_invalid", details={"subject": "ann@acme.example", "n": n, "nested": {"ok": True}},
    )
    base.update(kw)
    return AuditEvent(**base)  # type: ignore[arg-type]


def test_recorded_events_read_back_exactly(engine: Engine) -> None:
    store = SqlConfigStore(engine, Sealer("s" * 40))
    g = generate_signing_key()
    tenant = store.create_tenant("acme", "Acme", NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk))
    assert store._prepared_audit is (engine.dialect.name == "postgresql")
    first = _event(1)
    second = _event(2, type="token", outcome="success", reason=None, app=None, details={})
    store.record(first, tenant_id=tenant.id)
    store.record(second)  # tenant looked up by slug
    page = store.audit_page(tenant.id, type=None, outcome=None, limit=10, cursor=None)
    assert list(page.events) == [second, first]
    assert [e.id for e in store.audit_page(tenant.id, type="login", outcome="failure", limit=10,
                                           cursor=None).events] == [first.id]


@pytest.mark.postgres
def test_a_connection_killed_under_the_prepared_insert_fails_once_then_recovers(pg_url: str,
                                                                                pg_schema_url: str) -> None:
    engine = make_engine(pg_schema_url)
    upgrade(engine)
    engine.dispose()  # the pool starts empty: the one connection below is the one the insert uses
    try:
        store = SqlConfigStore(engine, Sealer("s" * 40))
        store.record(_event(1, tenant=None))  # the pooled connection has prepared the INSERT
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = make_engine(pg_url)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
        admin.dispose()
        with pytest.raises(ServiceUnavailable):
            store.record(_event(2, tenant=None))
        store.record(_event(3, tenant=None))
        ids = [e.id for e in store.audit_page(None, type=None, outcome=None, limit=10, cursor=None).events]
        assert ids == [_event(3).id, _event(1).id], "the failed event was not half-written"
    finally:
        engine.dispose()


def test_prune_deletes_only_events_older_than_the_cutoff_in_batches(engine: Engine) -> None:
    """Retention: every event before the cutoff goes (oldest first, batch by batch), every later one stays,
    whatever tenant or none it belongs to."""
    store = SqlConfigStore(engine, Sealer("s" * 40))
    g = generate_signing_key()
    tenant = store.create_tenant("acme", "Acme", NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk))
    for n in range(1, 13):  # one second apart, from _event's base time
        store.record(_event(n, tenant=None if n % 4 == 0 else "acme"), tenant_id=None if n % 4 == 0 else tenant.id)
    cutoff = datetime(2026, 11, 30, 12, 0, 8, tzinfo=UTC)  # events 1-7 are older (1.123 s ... 7.123 s)
    assert store.prune_audit(cutoff, batch=3) == 7
    left = store.audit_page(None, type=None, outcome=None, limit=100, cursor=None).events
    assert sorted(e.details["n"] for e in left) == [8, 9, 10, 11, 12]
    assert store.prune_audit(cutoff, batch=3) == 0, "nothing more to prune"
    assert store.prune_audit(datetime(2027, 1, 1, tzinfo=UTC)) == 5


@pytest.mark.postgres
def test_a_refused_insert_puts_its_connection_back_transactional(pg_schema_url: str) -> None:
    """The prepared INSERT runs in autocommit on a pooled connection: whatever becomes of the statement, the
    connection the pool hands out next runs transactions again (a write session relying on FOR UPDATE locks
    would otherwise hold none)."""
    import psycopg

    engine = make_engine(pg_schema_url)
    upgrade(engine)
    engine.dispose()
    try:
        store = SqlConfigStore(engine, Sealer("s" * 40))
        store.record(_event(1, tenant=None))
        with pytest.raises(psycopg.errors.UniqueViolation):
            store.record(_event(1, tenant=None))  # the same id again: refused by the database
        assert engine.pool.checkedout() == 0
        raw = engine.raw_connection()
        try:
            assert raw.driver_connection.autocommit is False  # type: ignore[union-attr]
        finally:
            raw.close()
        assert engine.pool.size() >= 1
        store.record(_event(2, tenant=None))
        ids = [e.id for e in store.audit_page(None, type=None, outcome=None, limit=10, cursor=None).events]
        assert ids == [_event(2).id, _event(1).id]
    finally:
        engine.dispose()

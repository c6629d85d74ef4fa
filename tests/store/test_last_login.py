"""Last-login stamps: noted per login, written behind in batches, the later time wins across workers, and a
failed write is retried rather than lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from sqlalchemy import Engine

from broker.issuer.keys import generate_signing_key
from broker.model import MappingConfig
from broker.ports import ConnectionDraft, NewSigningKey
from broker.store.config_repo import SqlConfigStore
from broker.store.last_login import LastLoginWriter
from broker.store.sealing import Sealer


def _store_with_connections(engine: Engine, *slugs: str) -> tuple[SqlConfigStore, str, dict[str, str]]:
    store = SqlConfigStore(engine, Sealer("s" * 40))
    g = generate_signing_key()
    tenant = store.create_tenant("acme", "Acme", NewSigningKey(g.kid, g.alg, g.private_pem, g.public_jwk))
    ids = {}
    for slug in slugs:
        c = store.create_connection(tenant.id, ConnectionDraft(
            slug=slug, protocol="oidc", domains=(), restrict_to_domains=False, mapping=MappingConfig(preset="generic"),
            settings={"issuer": "https://idp.example.test", "client_id": "x"}, secrets={}, enabled=True, sp=None))
        ids[slug] = c.id
    return store, tenant.id, ids


def _wait_for(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("not written in time")


def test_stamps_are_written_in_one_batch_and_the_later_time_wins(engine: Engine) -> None:
    store, tenant_id, ids = _store_with_connections(engine, "okta", "entra")
    a = LastLoginWriter(store, interval=3600)  # two workers; only explicit flushes here
    b = LastLoginWriter(store, interval=3600)
    a.touch(ids["okta"], 1_800_000_100.0)
    a.touch(ids["okta"], 1_800_000_050.0)  # older than what this worker already noted: ignored
    a.touch(ids["entra"], 1_800_000_000.0)
    assert store.last_logins(tenant_id) == {"okta": None, "entra": None}, "nothing written before a flush"
    assert a.flush()
    assert store.last_logins(tenant_id) == {"okta": 1_800_000_100.0, "entra": 1_800_000_000.0}
    b.touch(ids["okta"], 1_800_000_070.0)  # another worker flushing an earlier login later
    b.touch(ids["entra"], 1_800_000_200.0)
    assert b.flush()
    assert store.last_logins(tenant_id) == {"okta": 1_800_000_100.0, "entra": 1_800_000_200.0}
    assert a.pending() == {} and b.pending() == {}


def test_the_writer_thread_writes_without_a_flush_call(engine: Engine) -> None:
    store, tenant_id, ids = _store_with_connections(engine, "okta")
    writer = LastLoginWriter(store, interval=0.05)
    writer.touch(ids["okta"], 1_800_000_000.0)
    _wait_for(lambda: store.last_logins(tenant_id)["okta"] == 1_800_000_000.0)


class _Sink:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, float]] = []
        self.written = threading.Event()

    def touch_last_logins(self, stamps: Mapping[str, float]) -> None:
        self.calls.append(dict(stamps))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database down")
        self.written.set()


def test_many_logins_in_one_interval_make_one_write() -> None:
    sink = _Sink(failures=0)
    writer = LastLoginWriter(sink, interval=0.2)
    for n in range(200):
        writer.touch(f"conn-{n % 50}", 1_800_000_000.0 + n)
    assert sink.written.wait(5)
    assert len(sink.calls) == 1
    assert sink.calls[0] == {f"conn-{k}": 1_800_000_000.0 + 150 + k for k in range(50)}


def test_a_failed_write_is_retried_with_the_stamps_kept() -> None:
    sink = _Sink(failures=2)
    writer = LastLoginWriter(sink, interval=0.02)
    writer.touch("conn-1", 1_800_000_000.0)
    assert sink.written.wait(5), "retried after each failure until written"
    assert sink.calls == [{"conn-1": 1_800_000_000.0}] * 3
    assert writer.pending() == {}

"""BROKER_BOOTSTRAP_ADMIN_KEY: every worker and replica ensures it at start-up, usually all at once on a fresh
database. Losing the race to insert it must not stop a worker from booting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from broker.admin.service import AdminService
from broker.app import build_services
from broker.errors import Conflict
from broker.model import AdminKey
from broker.ports import ConfigStore
from broker.settings import load_settings
from broker.web.context import Services
from tests.conftest import make_env


@pytest.fixture
def svc(database_url: str) -> Iterator[Services]:
    services = build_services(load_settings(make_env(database_url)))
    yield services
    services.extras["engine"].dispose()


class _Store:
    """Delegates to a real store; subclasses replace create_admin_key to stage a race."""

    def __init__(self, inner: ConfigStore) -> None:
        self.inner = inner
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _admin(svc: Services, store: Any) -> AdminService:
    a = svc.admin
    return AdminService(store=store, hasher=a.hasher, auditor=a.auditor, clock=a.clock, urls=a.urls)


def test_losing_the_insert_race_returns_the_existing_key(svc: Services) -> None:
    class Racing(_Store):
        def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str) -> AdminKey:
            self.attempts += 1
            self.inner.create_admin_key(tenant_id, key_hash, label)  # the other worker's insert
            raise Conflict("That conflicts with an existing resource.")  # ours hits the unique index

    store = Racing(svc.config)
    value = "bk_raced-bootstrap-key-0123456789abcdef"
    key = _admin(svc, store).ensure_admin_key(value)
    assert store.attempts == 1
    assert key.is_global
    assert svc.admin.authenticate(f"Bearer {value}").id == key.id


def test_conflict_with_no_such_key_still_raises(svc: Services) -> None:
    """A Conflict that is not the key existing (nothing found by its hash) is not swallowed."""
    class Broken(_Store):
        def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str) -> AdminKey:
            raise Conflict("That conflicts with an existing resource.")

    with pytest.raises(Conflict):
        _admin(svc, Broken(svc.config)).ensure_admin_key("bk_never-stored-0123456789abcdef")


@pytest.mark.postgres
def test_workers_ensuring_the_key_at_once_all_boot(pg_schema_url: str) -> None:
    """Real concurrent inserts on PostgreSQL: every one of 6 workers gets the one key, none fails."""
    env = make_env(pg_schema_url)
    first = build_services(load_settings(env))  # migrates; has already ensured the configured key
    value = "bk_concurrent-bootstrap-key-0123456789"
    workers = [build_services(load_settings(env), migrate=False) for _ in range(6)]
    barrier = threading.Barrier(len(workers))
    results: list[AdminKey] = []
    errors: list[BaseException] = []

    def boot(services: Services) -> None:
        try:
            barrier.wait()
            results.append(services.admin.ensure_admin_key(value))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len({k.id for k in results}) == 1
        assert first.admin.authenticate(f"Bearer {value}").id == results[0].id
    finally:
        for s in (first, *workers):
            s.extras["engine"].dispose()

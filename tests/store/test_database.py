"""The engine's connection handling on PostgreSQL: dead idle connections are replaced before use, and busy
connections are not pinged (a ping is a round trip on every checkout)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from broker.store import database
from broker.store.database import make_engine

pytestmark = pytest.mark.postgres


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pg_url: str, pid: int) -> None:
    admin = make_engine(pg_url)
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
    admin.dispose()


def _count_pings(engine: Any) -> list[int]:
    pings = [0]
    original = engine.dialect.do_ping

    def counting(dbapi_conn: Any) -> Any:
        pings[0] += 1
        return original(dbapi_conn)

    engine.dialect.do_ping = counting
    return pings


def test_an_idle_connection_killed_by_the_server_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url)
    try:
        first = _backend_pid(engine)
        _terminate(pg_url, first)
        monkeypatch.setattr(database, "PING_AFTER_IDLE", 0.0)  # the pooled connection counts as idle
        assert _backend_pid(engine) != first, "a fresh connection answered, no error reached the caller"
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(pg_url)
    try:
        pings = _count_pings(engine)
        for _ in range(5):
            _backend_pid(engine)
        assert pings[0] == 0
        monkeypatch.setattr(database, "PING_AFTER_IDLE", 0.0)
        _backend_pid(engine)
        assert pings[0] == 1, "idle for longer than PING_AFTER_IDLE: pinged once"
    finally:
        engine.dispose()


def test_a_connection_that_dies_in_use_fails_once_then_the_pool_recovers(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        first = _backend_pid(engine)
        _terminate(pg_url, first)
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()

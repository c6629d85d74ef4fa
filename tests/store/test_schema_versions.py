"""Schema revisions across releases: a production start refuses a database behind its schema and runs on one a
newer release migrated (rollbacks); `db upgrade` leaves a newer database alone and, on PostgreSQL, runs one at a
time. Also the engine's failure behaviour: statement values never in error messages, a bounded connect."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from broker.errors import ConfigError
from broker.store.database import check_schema, make_engine, schema_state, upgrade


def _set_revision(engine: object, revision: str) -> None:
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_states_and_the_production_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    assert schema_state(engine) == "behind"  # empty
    with pytest.raises(ConfigError, match="broker db upgrade"):
        check_schema(engine)
    upgrade(engine)
    assert schema_state(engine) == "current"
    check_schema(engine)
    _set_revision(engine, "0099_from_a_newer_release")
    assert schema_state(engine) == "newer"
    with caplog.at_level(logging.WARNING):
        check_schema(engine)  # a rollback starts, and says so
    assert any(r.getMessage() == "database_schema_newer" for r in caplog.records)
    engine.dispose()


def test_upgrade_leaves_a_database_a_newer_release_migrated_alone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    upgrade(engine)
    _set_revision(engine, "0099_from_a_newer_release")
    with pytest.raises(ConfigError, match="newer version"):
        upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0099_from_a_newer_release"
    engine.dispose()


@pytest.mark.postgres
def test_two_upgrades_at_once_on_postgresql_run_one_after_the_other(pg_schema_url: str) -> None:
    """Two migration Jobs of overlapping releases on an empty database: without a lock the second fails halfway
    (duplicate type/table) and the Job is marked failed."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        engine = make_engine(pg_schema_url)
        try:
            barrier.wait()
            upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an upgrade is stuck behind the other"
    assert errors == []
    engine = make_engine(pg_schema_url)
    assert schema_state(engine) == "current"
    engine.dispose()


def test_a_failed_statement_never_shows_its_values(tmp_path: Path) -> None:
    """Rows carry audit details, secret digests and sealed keys, and errors end up in logs."""
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "h1:secret-digest-value"})
    with pytest.raises(IntegrityError) as err, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "h1:secret-digest-value"})
    assert "secret-digest-value" not in str(err.value)
    engine.dispose()


def test_a_database_that_accepts_and_never_answers_fails_the_connect_in_seconds() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/broker")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()
        listener.close()
    assert time.monotonic() - started < 8  # connect_timeout 3 s (libpq may try twice: with and without SSL)


def _fail_in_0003(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make migration 0003 fail after its DDL (the column is added), inside its loop over the connections."""
    import sqlalchemy.engine

    execute = sqlalchemy.engine.Connection.execute

    def failing(self: object, statement: object, *args: object, **kwargs: object) -> object:
        if "SELECT connections.id" in str(statement):
            raise RuntimeError("killed halfway")
        return execute(self, statement, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlalchemy.engine.Connection, "execute", failing)


def _columns(engine: object, table: str) -> set[str]:
    from sqlalchemy import inspect

    return {c["name"] for c in inspect(engine).get_columns(table)}  # type: ignore[arg-type]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_an_upgrade_that_fails_halfway_can_be_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        request: pytest.FixtureRequest, database: str) -> None:
    """An upgrade killed inside a migration (a Job evicted) used to leave SQLite with the migration's column but
    not its revision: every later run failed on a duplicate column, and no version would start. Now each
    migration is all or nothing (SQLite: the whole upgrade), and running the upgrade again completes it."""
    url = f"sqlite:///{tmp_path / 'b.db'}" if database == "sqlite" else request.getfixturevalue("pg_schema_url")
    engine = make_engine(url)
    upgrade(engine, "0001")
    with monkeypatch.context() as patched:
        _fail_in_0003(patched)
        with pytest.raises(RuntimeError, match="killed halfway"):
            upgrade(engine)
    with engine.connect() as conn:
        at = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    # PostgreSQL kept 0002 (its own transaction, committed); SQLite kept nothing of this run
    assert at == ("0001" if database == "sqlite" else "0002")
    assert "idp_certificates" not in _columns(engine, "connections")
    upgrade(engine)
    assert schema_state(engine) == "current" and "idp_certificates" in _columns(engine, "connections")
    engine.dispose()


def test_two_upgrades_at_once_on_sqlite_run_one_after_the_other(tmp_path: Path) -> None:
    """Two processes: the second waits for the first's write lock, then finds nothing to do (it used to fail on
    a duplicate column while the database ended up right)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'b.db'}"
    first = make_engine(url)
    upgrade(first, "0001")
    script = ("import sys; from broker.store.database import make_engine, upgrade; "
              "upgrade(make_engine(sys.argv[1]))")
    runs = [subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE)  # noqa: S603
            for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err.decode()[-2000:]
    assert schema_state(first) == "current"
    first.dispose()


def test_serve_waits_for_a_database_that_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server started during a short outage waits (bounded) instead of exiting into a restart back-off."""
    from broker.store.database import wait_for_database

    now = [0.0]
    sleeps: list[float] = []
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    attempts = [0]
    real_connect = engine.connect

    def connect() -> object:
        attempts[0] += 1
        if attempts[0] < 4:
            return real_connect()  # refused: nothing listens on port 1
        return make_engine(f"sqlite:///{tmp_path / 'up.db'}").connect()  # "back"

    engine.connect = connect  # type: ignore[method-assign]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with caplog.at_level(logging.WARNING, logger="broker.database"):
        wait_for_database(engine, 60, sleep=sleep, clock=lambda: now[0])
    assert sleeps == [1.0, 2.0, 4.0] and attempts[0] == 4
    assert [r.getMessage() for r in caplog.records] == ["database_unavailable_at_start"] * 3
    engine.dispose()


def test_serve_gives_up_on_a_database_that_stays_away(tmp_path: Path) -> None:
    from broker.store.database import wait_for_database

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(OperationalError):
        wait_for_database(engine, 12, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 12  # 1 + 2 + 4 + 5, then what was left
    engine.dispose()
    sqlite = make_engine("sqlite:////nonexistent-dir/x/broker.db")
    with pytest.raises(OperationalError):  # a file that cannot be opened: at once, no wait
        wait_for_database(sqlite, 60, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 12

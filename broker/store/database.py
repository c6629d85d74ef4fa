"""Database engine creation and schema migrations (Alembic), for SQLite and PostgreSQL alike."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.pool import StaticPool

from broker.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# A pooled connection idle for longer than this is pinged before use (a server restart or a proxy's idle
# timeout leaves dead connections in the pool). A busy pool's connections are not pinged: a connection that
# died while in use fails its statement once, and SQLAlchemy then replaces every connection of the pool.
PING_AFTER_IDLE = 5.0


# libpq connection parameters. A database that stops answering (a silent failover, a partition) must not hold
# a request thread until the kernel gives up on the TCP connection (about 15 minutes): data sent and not
# acknowledged within tcp_user_timeout, or an idle connection whose keepalives go unanswered, fails the
# connection, and a new one gives up after connect_timeout (libpq's minimum is 2 s).
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}


def make_engine(url: str) -> Engine:
    """An engine with sane pool settings; SQLite gets foreign keys and WAL, in-memory gets one connection."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
    else:
        kwargs.update(pool_size=5, max_overflow=10, pool_recycle=1800, pool_timeout=5)
        kwargs["connect_args"] = dict(PG_CONNECT_ARGS)
    # a failed statement's message names the statement, never its values (rows carry audit details, secret
    # digests and sealed keys, and such errors end up in logs)
    kwargs["hide_parameters"] = True
    engine = create_engine(url, **kwargs)
    if not url.startswith("sqlite"):
        _ping_idle_connections(engine)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if url not in ("sqlite://", "sqlite:///:memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of the process
            cur.close()

    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Pessimistic disconnect handling (like pool_pre_ping), but only for connections that sat idle: a
    ping is a round trip, and on a busy pool it would double the round trips of a one-statement write."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable, connect anew
            raise DisconnectionError("idle connection failed its ping") from exc
        if not alive:
            raise DisconnectionError("idle connection failed its ping")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent). A database a newer version has migrated (at a revision
    this version does not know) is left as it is, with a ConfigError that says so. On PostgreSQL, runs hold an
    advisory lock: two at once (two migration Jobs of overlapping releases) run one after the other, and the
    second finds nothing to do."""
    if schema_state(engine) == "newer":
        raise ConfigError(_NEWER)
    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), revision)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        try:
            conn.commit()
            command.upgrade(alembic_config(engine), revision)  # on connections of its own
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            conn.commit()


MIGRATION_LOCK = 0x62726F6B6572  # any fixed 64-bit number: "broker"
_NEWER = ("The database was migrated by a newer version of the broker (its schema revision is unknown to this "
          "version); nothing was changed. Run the newer version, or restore a backup taken before its upgrade.")


def schema_state(engine: Engine) -> str:
    """'current' (at this version's newest migration), 'behind' (at an older one of this version's, or empty),
    or 'newer' (at a revision this version does not know: a newer version migrated it)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == set(script.get_heads()):
        return "current"
    known = {rev.revision for rev in script.walk_revisions()}
    return "behind" if current <= known else "newer"


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    return schema_state(engine) == "current"


START_WAIT = 60.0  # seconds `broker serve` waits for an unreachable database at start before giving up


def wait_for_database(engine: Engine, deadline: float = START_WAIT, *, sleep: Any = time.sleep,
                      clock: Any = time.monotonic) -> None:
    """Connect, retrying while the database cannot be reached, for up to `deadline` seconds (then the last
    error is raised). A server started during a short database outage (a failover, the database's own pod
    restarting alongside) comes up when it is back, instead of exiting and waiting out the orchestrator's
    growing restart back-off. Each failed attempt is a `database_unavailable_at_start` warning."""
    log = logging.getLogger("broker.database")
    if engine.dialect.name == "sqlite":
        deadline = 0.0  # a file that cannot be opened now will not open later: say so at once
    give_up = clock() + deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            left = give_up - clock()
            if left <= 0:
                raise
            pause = min(2.0 ** min(attempt - 1, 3), 5.0, left)  # 1, 2, 4, 5, 5, ... seconds
            log.warning("database_unavailable_at_start", extra={
                "attempt": attempt, "retry_in_s": round(pause, 1),
                "error": str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__})
            sleep(pause)


def check_schema(engine: Engine) -> None:
    """For a production start (which never migrates): refuse a database behind this version's schema. One a
    newer version migrated is used, with a warning: rolling back a release (or an old pod restarting after the
    new release's migration Job ran) must be able to start; migrations add, and do not take away what the
    previous release reads."""
    state = schema_state(engine)
    if state == "behind":
        raise ConfigError("The database schema is not up to date: run `broker db upgrade` first.")
    if state == "newer":
        logging.getLogger("broker.database").warning("database_schema_newer", extra={
            "detail": "the database was migrated by a newer version; this version runs against it"})

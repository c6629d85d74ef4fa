"""Alembic environment: runs against the engine the broker hands in (never a URL from an ini file).

Every migration is all or nothing, so an upgrade killed halfway (a Job evicted, a node lost) leaves the database
at a revision it can be upgraded from again:
- PostgreSQL: one transaction per migration (DDL is transactional). The table locks a migration takes are
  held for that migration only, not for the whole series, and running servers wait less.
- SQLite: the driver commits DDL as it goes (it opens transactions for DML only), so the transaction is taken
  in hand: the whole upgrade is one transaction, begun with the write lock held (BEGIN IMMEDIATE), so a second
  upgrade at the same time waits for the first and then finds nothing to do.
"""

from __future__ import annotations

from alembic import context

from broker.store.tables import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - only when alembic is invoked by hand without the broker
    raise RuntimeError("Run migrations with `broker db upgrade`.")

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    driver = connection.connection.driver_connection
    if sqlite:
        previous = driver.isolation_level
        driver.isolation_level = None  # no implicit transactions: the explicit one below holds everything
    try:
        if sqlite:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
            transaction_per_migration=not sqlite,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()  # nothing left after a commit; everything after a failure
            driver.isolation_level = previous

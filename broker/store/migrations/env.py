"""Alembic environment: runs against the engine the broker hands in (never a URL from an ini file)."""

from __future__ import annotations

from alembic import context

from broker.store.tables import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - only when alembic is invoked by hand without the broker
    raise RuntimeError("Run migrations with `broker db upgrade`.")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

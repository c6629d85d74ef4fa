"""The migrations build exactly the schema the models describe (tables, columns, indexes, unique constraints), on
SQLite and PostgreSQL: a model change without its migration fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from broker.store.tables import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)
    relevant = list(diff)
    assert relevant == [], relevant

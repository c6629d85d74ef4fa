"""Config reads on PostgreSQL: outside `atomic()` a read is its query alone (autocommit, no BEGIN/COMMIT round
trips: each first login of a tenant in a worker makes several); inside `atomic()` it joins the transaction."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event

from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine, upgrade
from broker.store.sealing import Sealer

pytestmark = pytest.mark.postgres


def test_reads_run_outside_a_transaction_unless_inside_atomic(pg_schema_url: str) -> None:
    engine = make_engine(pg_schema_url)
    upgrade(engine)
    statuses: list[pq.TransactionStatus] = []

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        statuses.append(conn.connection.driver_connection.info.transaction_status)

    try:
        store = SqlConfigStore(engine, Sealer("s" * 40))
        assert store.tenant_by_slug("nobody") is None
        assert store.tenants() == []
        assert statuses == [pq.TransactionStatus.IDLE] * 2, "no transaction was opened around the reads"
        statuses.clear()
        with store.atomic():
            assert store.tenant_by_slug("nobody") is None
        assert statuses == [pq.TransactionStatus.INTRANS]
    finally:
        engine.dispose()

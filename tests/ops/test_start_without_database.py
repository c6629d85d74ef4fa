"""`broker serve` started while its PostgreSQL is down (a failover, the database's pod restarting at the same
time): it waits, bounded, and serves once the database is back, instead of exiting into the orchestrator's
restart back-off. Real processes: the broker under gunicorn, and a throwaway PostgreSQL on its own port."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from tests.support.broker_server import running_broker
from tests.support.throwaway import throwaway_pg_unavailable, throwaway_postgres


def test_a_server_started_before_its_database_serves_once_it_is_up(tmp_path: Path) -> None:
    reason = throwaway_pg_unavailable()
    if reason:
        pytest.skip(f"this test starts a throwaway PostgreSQL: {reason}")
    with throwaway_postgres() as pg:
        pg.stop()
        later = threading.Timer(4.0, pg.start)
        later.start()
        try:
            with running_broker(tmp_path, database_url=pg.url) as broker:  # waits for /readyz (60 s at most)
                assert requests.get(f"{broker.url}/readyz", timeout=5).status_code == 200
                assert broker.api("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
                assert '"database_unavailable_at_start"' in broker.log()
        finally:
            later.join()

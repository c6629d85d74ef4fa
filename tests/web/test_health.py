"""Liveness, readiness (database and state store), metrics."""

from __future__ import annotations

from flask.testing import FlaskClient

from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine
from broker.store.sealing import Sealer
from broker.store.state_redis import RedisStateStore


def test_healthz(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    assert r.headers["X-Request-Id"]


def test_request_ids_are_echoed_only_when_plain_ascii(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    for odd in ("caf\u00e9", "\u00b2\u00b3", "a b", "x" * 65):
        echoed = client.get("/healthz", headers={"X-Request-Id": odd}).headers["X-Request-Id"]
        assert echoed != odd and echoed.isascii() and echoed.isalnum()


def test_readyz_ok(client: FlaskClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["checks"] == {"database": True, "state_store": True}


def test_readyz_503_when_state_store_down(client: FlaskClient) -> None:
    svc = client.application.extensions["broker"]
    svc.state = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["state_store"] is False


def test_readyz_503_when_database_down(client: FlaskClient) -> None:
    svc = client.application.extensions["broker"]
    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    svc.config = SqlConfigStore(dead, Sealer("s" * 40))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["database"] is False


def test_metrics_exposed(client: FlaskClient) -> None:
    client.get("/healthz")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert b"broker_http_requests_total" in r.data

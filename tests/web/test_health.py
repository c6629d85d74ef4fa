"""Liveness, readiness (database and state store), metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from broker import logs
from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine
from broker.store.sealing import Sealer
from broker.store.state_redis import RedisStateStore
from tests.conftest import AdminClient


def test_healthz(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    assert r.headers["X-Request-Id"]


def test_request_ids_are_echoed_only_when_plain_ascii(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    for odd in ("caf\u00e9", "\u00b2\u00b3", "a b", "x" * 65):
        echoed = client.get("/healthz", headers={"X-Request-Id": odd}).headers["X-Request-Id"]
        assert echoed != odd and echoed.isascii() and echoed.isalnum()


def test_a_request_leaves_no_log_context_behind(client: FlaskClient, admin: AdminClient) -> None:
    # a worker thread logs between requests too (gunicorn refusing a malformed one): not under the last id
    admin.tenant("acme")
    r = client.get("/t/acme/.well-known/openid-configuration", headers={"X-Request-Id": "req-1"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "req-1"
    assert (logs.request_id.get(), logs.tenant.get(), logs.connection.get()) == (None, None, None)


def test_the_access_line_can_be_turned_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from broker.app import create_app
    from broker.settings import load_settings
    from tests.conftest import close_app, make_env

    for setting, lines in (("true", 1), ("false", 0)):
        app = create_app(load_settings(make_env(f"sqlite:///{tmp_path / setting}.db", BROKER_ACCESS_LOG=setting)))
        try:
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="broker.access"):
                assert app.test_client().get("/t/nope/jwks?x=secret").status_code == 404
                app.test_client().get("/healthz")
            access = [r for r in caplog.records if r.name == "broker.access" and r.levelno == logging.INFO]
            assert len(access) == lines, setting
            if lines:
                assert access[0].__dict__["path"] == "/t/nope/jwks" and access[0].__dict__["status"] == 404
        finally:
            close_app(app)


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


def test_metrics_behind_a_token_when_one_is_set(sqlite_url: str) -> None:
    """The series name every tenant and connection: an operator can keep them from the public URL."""
    from broker.app import create_app
    from broker.settings import load_settings
    from tests.conftest import close_app, make_env

    app = create_app(load_settings(make_env(sqlite_url, BROKER_METRICS_TOKEN="scrape-0123456789abcdef")))
    try:
        client = app.test_client()
        for headers in ({}, {"Authorization": "Bearer wrong-0123456789abcdef"},
                        {"Authorization": "Basic c2NyYXBlLTAxMjM0NTY3ODlhYmNkZWY="}):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401 and b"broker_" not in r.data, headers
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        r = client.get("/metrics", headers={"Authorization": "bearer scrape-0123456789abcdef"})
        assert r.status_code == 200 and b"broker_http_requests_total" in r.data
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    finally:
        close_app(app)

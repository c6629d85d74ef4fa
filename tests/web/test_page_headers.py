"""Headers that keep the browser-facing answers out of caches, frames, Referers and plain http: HSTS in
production, no-store on every /authorize answer (single sign-on answers carry a code), and the login pages'
frame and referrer policies."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from flask import Flask

from broker.app import HSTS
from tests.conftest import close_app, make_env


def _app(sqlite_url: str, **env: str) -> Flask:
    from broker.app import create_app
    from broker.settings import load_settings

    return create_app(load_settings(make_env(sqlite_url, **env)), migrate=True)


@pytest.fixture
def production(sqlite_url: str) -> Iterator[Flask]:
    app = _app(sqlite_url, BROKER_ENV="production", BROKER_PUBLIC_URL="https://sso.example.com")
    yield app
    close_app(app)


@pytest.fixture
def dev(sqlite_url: str) -> Iterator[Flask]:
    app = _app(sqlite_url, BROKER_PUBLIC_URL="http://127.0.0.1:8000")
    yield app
    close_app(app)


@pytest.mark.parametrize("path", ["/healthz", "/t/nope/.well-known/openid-configuration", "/admin/v1/tenants"])
def test_production_answers_carry_hsts(production: Flask, path: str) -> None:
    r = production.test_client().get(path, base_url="https://sso.example.com")
    assert r.headers["Strict-Transport-Security"] == HSTS == "max-age=31536000"


def test_dev_over_http_sends_no_hsts(dev: Flask) -> None:
    assert "Strict-Transport-Security" not in dev.test_client().get("/healthz").headers


def test_every_authorize_answer_is_no_store(dev: Flask) -> None:
    client = dev.test_client()
    key = {"Authorization": "Bearer " + make_env("")["BROKER_BOOTSTRAP_ADMIN_KEY"]}
    assert client.post("/admin/v1/tenants", json={"slug": "acme", "name": "Acme"}, headers=key).status_code == 201
    app = client.post("/admin/v1/tenants/acme/apps", json={"name": "P", "redirect_uris": ["https://p.test/cb"]},
                      headers=key).get_json()
    base = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": "https://p.test/cb",
            "scope": "openid", "state": "s"}
    # prompt=none without a session: a redirect to the app (the same path answers with a code from a session)
    none = client.get("/t/acme/authorize?" + urlencode({**base, "prompt": "none"}))
    assert none.status_code == 302 and "error=login_required" in none.headers["Location"]
    assert none.headers["Cache-Control"] == "no-store"
    page = client.get("/t/acme/authorize?" + urlencode(base))  # no connection named: the email page
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "form-action" not in page.headers["Content-Security-Policy"]  # its answer goes to any IdP


def test_readyz_answers_within_its_deadline_when_a_dependency_hangs(dev: Flask) -> None:
    """A database that accepts connections and never answers must not hold the probe past its timeout (the
    chart's readiness probe: 3 s); a second probe waits on the same hung check instead of starting another."""
    import threading
    import time

    from broker.web import health

    svc = dev.extensions["broker"]
    release = threading.Event()
    calls: list[int] = []

    def hung() -> bool:
        calls.append(1)
        release.wait(30)
        return True

    svc.config.ping = hung
    client = dev.test_client()
    try:
        for _ in range(2):
            started = time.monotonic()
            r = client.get("/readyz")
            assert time.monotonic() - started < health.READY_DEADLINE + 1.0
            assert r.status_code == 503 and r.get_json()["checks"] == {"database": False, "state_store": True}
        assert len(calls) == 1
    finally:
        release.set()
    time.sleep(0.2)
    del svc.config.ping
    assert client.get("/readyz").status_code == 200

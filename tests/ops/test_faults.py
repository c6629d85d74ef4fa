"""Faults with real servers: the state store or the database goes away and comes back, an upstream is slow.

The broker runs on a throwaway Redis and a throwaway PostgreSQL (tests/support/throwaway.py, own ports and
data directories) that these tests stop and start again on the same port; the shared servers are not
touched. Every failure must be a clear answer on its surface (HTML page, OAuth JSON, admin JSON), never a
stack trace, and the broker must recover by itself, without a restart.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.ops.conftest import (
    REDIRECT_URI,
    Tenant,
    authorize_url,
    full_login,
    jwt_claims,
    redeem,
    setup_saml_tenant,
)
from tests.support.broker_server import BrokerServer, free_port, running_broker
from tests.support.saml_idp import SamlIdp, parse_autopost, query_of, running_saml_idp
from tests.support.throwaway import (
    ThrowawayPostgres,
    ThrowawayRedis,
    redis_binary,
    throwaway_pg_unavailable,
    throwaway_postgres,
    throwaway_redis,
)

pytestmark = pytest.mark.slow

TIMEOUT = 1  # BROKER_UPSTREAM_TIMEOUT for this module's broker
SLOW = 6.0  # how long a slow upstream sleeps: well past the timeout


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[ThrowawayRedis, ThrowawayPostgres]]:
    if redis_binary() is None:
        pytest.skip("fault tests start a throwaway Redis: redis-server is not installed")
    reason = throwaway_pg_unavailable()
    if reason:
        pytest.skip(f"fault tests start a throwaway PostgreSQL: {reason}")
    with throwaway_redis() as r, throwaway_postgres() as pg:
        yield r, pg


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory,
           backends: tuple[ThrowawayRedis, ThrowawayPostgres]) -> Iterator[BrokerServer]:
    r, pg = backends
    with running_broker(tmp_path_factory.mktemp("faults"), database_url=pg.url,
                        env={"REDIS_URL": r.url, "BROKER_UPSTREAM_TIMEOUT": str(TIMEOUT)}) as server:
        yield server


@pytest.fixture(scope="module")
def tenant(broker: BrokerServer, idp: SamlIdp) -> Tenant:
    return setup_saml_tenant(broker, idp)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    assert found, "the server has no worker process"
    return found


def _wait_ready(broker: BrokerServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{broker.url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the broker did not become ready again by itself")


def _assert_clean_html_error(r: requests.Response, status: int = 503) -> None:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("text/html"), r.headers["Content-Type"]
    for leak in ("Traceback", "File \"", "redis.exceptions", "sqlalchemy", "psycopg", "OperationalError"):
        assert leak not in r.text, leak
    assert "Set-Cookie" not in r.headers  # nothing half-started for this browser


def _login_works(broker: BrokerServer, tenant: Tenant, state: str) -> None:
    r = redeem(broker.url, tenant, full_login(requests.Session(), broker.url, tenant, state))
    assert r.status_code == 200, r.text
    assert jwt_claims(r.json()["id_token"])["email"] == "alice@acme.test"


# -- Redis ---------------------------------------------------------------------------------------------------


def test_redis_down_then_back(broker: BrokerServer, tenant: Tenant,
                              backends: tuple[ThrowawayRedis, ThrowawayPostgres]) -> None:
    redis_server, _ = backends
    _login_works(broker, tenant, "before")
    redis_server.stop()
    try:
        ready = requests.get(f"{broker.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"] == {"database": True, "state_store": False}

        started = time.monotonic()
        page = requests.get(authorize_url(broker.url, tenant, "down"), allow_redirects=False, timeout=30)
        assert time.monotonic() - started < 10
        _assert_clean_html_error(page)

        tok = requests.post(f"{broker.url}/t/{tenant.slug}/token", data={
            "grant_type": "authorization_code", "code": "some-code", "redirect_uri": REDIRECT_URI,
        }, auth=(tenant.client_id, tenant.client_secret), timeout=30)
        assert tok.status_code == 503, (tok.status_code, tok.text[:300])
        assert tok.headers["Content-Type"].startswith("application/json"), tok.text[:300]
        assert "Traceback" not in tok.text and tok.json()["error"], tok.text[:300]

        assert requests.get(f"{broker.url}/healthz", timeout=5).status_code == 200  # alive, just not ready
    finally:
        redis_server.start()
    _wait_ready(broker)
    _login_works(broker, tenant, "after")


def test_token_endpoint_error_code_is_an_oauth_code_when_redis_is_down(
        broker: BrokerServer, tenant: Tenant, backends: tuple[ThrowawayRedis, ThrowawayPostgres]) -> None:
    redis_server, _ = backends
    redis_server.stop()
    try:
        tok = requests.post(f"{broker.url}/t/{tenant.slug}/token", data={
            "grant_type": "authorization_code", "code": "some-code", "redirect_uri": REDIRECT_URI,
        }, auth=(tenant.client_id, tenant.client_secret), timeout=30)
    finally:
        redis_server.start()
        _wait_ready(broker)
    assert tok.json()["error"] in ("temporarily_unavailable", "server_error"), tok.json()


# -- PostgreSQL ----------------------------------------------------------------------------------------------


def test_postgres_down_then_back(broker: BrokerServer, tenant: Tenant, idp: SamlIdp,
                                 backends: tuple[ThrowawayRedis, ThrowawayPostgres]) -> None:
    _, pg = backends
    _login_works(broker, tenant, "pg-before")
    pg.stop()
    try:
        ready = requests.get(f"{broker.url}/readyz", timeout=15)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"] == {"database": False, "state_store": True}

        api = broker.api("GET", "/tenants")
        assert api.status_code == 503, (api.status_code, api.text[:300])
        assert api.headers["Content-Type"].startswith("application/json")
        body = api.json()
        assert body["error"] and body["message"] and "Traceback" not in api.text

        # a login started now ends on a clear 503 page: at once, or (when the configuration is served from
        # a cache) at the latest when the upstream answer arrives and the login must be recorded
        session = requests.Session()
        retry: tuple[str, dict[str, str]] | None = None
        page = session.get(authorize_url(broker.url, tenant, "pg-down"), allow_redirects=False, timeout=30)
        if page.status_code == 302 and page.headers["Location"].startswith(idp.sso_url):
            action, fields = parse_autopost(session.get(page.headers["Location"], timeout=30).text)
            page = session.post(action, data=fields, allow_redirects=False, timeout=30)
            assert "code=" not in page.headers.get("Location", ""), page.headers["Location"]
            assert page.status_code == 503, (page.status_code, page.text[:300])
            assert "Traceback" not in page.text and page.headers["Content-Type"].startswith("text/html")
            retry = (action, fields)
        else:
            _assert_clean_html_error(page)

        # a worker that dies during the outage (OOM, timeout) is replaced by one that boots without the
        # database: a worker failing to boot would make gunicorn stop the whole server
        for worker in _children(broker.process.pid):
            os.kill(worker, signal.SIGKILL)
        time.sleep(3)
        assert broker.process.poll() is None, broker.log()[-3000:]
        assert requests.get(f"{broker.url}/readyz", timeout=15).status_code == 503
    finally:
        pg.start()
    _wait_ready(broker)
    if retry is not None:
        # the login that could not be recorded used up nothing: the browser posting the same answer again
        # (a reload of the error page) now signs in
        again = session.post(retry[0], data=retry[1], allow_redirects=False, timeout=30)
        assert again.status_code == 302 and "code=" in again.headers["Location"], (again.status_code, again.text[:300])
    _login_works(broker, tenant, "pg-after")
    assert broker.api("GET", "/tenants").status_code == 200


# -- slow upstreams ------------------------------------------------------------------------------------------


class Upstream:
    """A small upstream on loopback: IdP metadata and minimal OpenID Providers, each path slowable.

    Every first path segment is its own OP (issuer `{url}/{name}`), so that tests do not share the broker's
    per-issuer discovery and JWKS caches.
    """

    def __init__(self, idp: SamlIdp) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.idp = idp
        self.delays: dict[str, float] = {}
        self.key = RSAKey.generate_key(2048, parameters={"kid": "op-1", "use": "sig", "alg": "RS256"})
        self.nonces: dict[str, str] = {}
        self.handlers: dict[str, Callable[[str, Request], Response]] = {
            "/metadata": lambda i, r: Response(self.idp.metadata_xml(), mimetype="application/samlmetadata+xml"),
            "/.well-known/openid-configuration": self._discovery,
            "/auth": self._auth,
            "/token": self._token,
            "/jwks": lambda i, r: Response(json.dumps({"keys": [self.key.as_dict(private=False)]}),
                                           mimetype="application/json"),
        }

    def _discovery(self, issuer: str, _: Request) -> Response:
        doc = {"issuer": issuer, "authorization_endpoint": f"{issuer}/auth", "token_endpoint": f"{issuer}/token",
               "jwks_uri": f"{issuer}/jwks", "response_types_supported": ["code"],
               "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
               "token_endpoint_auth_methods_supported": ["client_secret_basic"],
               "code_challenge_methods_supported": ["S256"]}
        return Response(json.dumps(doc), mimetype="application/json")

    def _auth(self, _: str, r: Request) -> Response:
        code = f"c{len(self.nonces)}"
        self.nonces[code] = r.args.get("nonce", "")
        target = f"{r.args['redirect_uri']}?{urlencode({'code': code, 'state': r.args.get('state', '')})}"
        return Response(status=302, headers={"Location": target})

    def _token(self, issuer: str, r: Request) -> Response:
        now = int(time.time())
        claims = {"iss": issuer, "sub": "op-user-1", "aud": "broker-client", "iat": now, "exp": now + 300,
                  "nonce": self.nonces.get(r.form.get("code", ""), ""), "email": "carol@slow.test"}
        token = jwt.encode({"alg": "RS256", "kid": "op-1"}, claims, self.key)
        return Response(json.dumps({"access_token": "op-at", "token_type": "Bearer", "expires_in": 300,
                                    "id_token": token}), mimetype="application/json")

    def handle(self, request: Request) -> Response:
        path = request.path
        issuer = self.url
        if path != "/metadata":
            name, _, rest = path.lstrip("/").partition("/")
            issuer, path = f"{self.url}/{name}", "/" + rest
        handler = self.handlers.get(path)
        if handler is None:
            return Response("not found", status=404)
        delay = self.delays.get(path, 0.0)
        if delay:
            time.sleep(delay)
        return handler(issuer, request)


@pytest.fixture(scope="module")
def upstream(idp: SamlIdp) -> Iterator[Upstream]:
    up = Upstream(idp)

    def wsgi(environ: Any, start_response: Any) -> Any:
        return up.handle(Request(environ))(environ, start_response)

    server = make_server("127.0.0.1", up.port, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield up
    finally:
        server.shutdown()
        thread.join(timeout=SLOW + 5)


def _timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = call()
    return r, time.monotonic() - started


def _healthy_right_after(broker: BrokerServer) -> None:
    r, took = _timed(lambda: requests.get(f"{broker.url}/healthz", timeout=5))
    assert r.status_code == 200 and took < 1.0, took


def test_slow_metadata_url_when_saving_a_connection(broker: BrokerServer, tenant: Tenant,
                                                    upstream: Upstream) -> None:
    upstream.delays["/metadata"] = SLOW
    try:
        r, took = _timed(lambda: broker.api("POST", f"/tenants/{tenant.slug}/connections", {
            "slug": "slow-md", "protocol": "saml", "saml": {"metadata_url": f"{upstream.url}/metadata"}}))
        _healthy_right_after(broker)
    finally:
        upstream.delays.clear()
    assert took < TIMEOUT + 2.5, took
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json"), r.text[:300]
    assert r.json()["error"] == "metadata_unavailable", r.json()


def test_slow_metadata_url_at_login(broker: BrokerServer, tenant: Tenant, upstream: Upstream) -> None:
    r = broker.api("POST", f"/tenants/{tenant.slug}/connections", {
        "slug": "md-url", "protocol": "saml", "saml": {"metadata_url": f"{upstream.url}/metadata"}})
    assert r.status_code == 201, r.text
    upstream.delays["/metadata"] = SLOW
    try:
        url = authorize_url(broker.url, tenant, "md", connection="md-url")
        resp, took = _timed(lambda: requests.get(url, allow_redirects=False, timeout=30))
        _healthy_right_after(broker)
    finally:
        upstream.delays.clear()
    assert took < TIMEOUT + 2.5, took
    # the copy fetched when the connection was saved is used (SPEC: last good copy kept), or, if none was
    # kept, a clear refusal back to the app: never a hang
    location = resp.headers.get("Location", "")
    assert resp.status_code == 302, (resp.status_code, resp.text[:300])
    if not location.startswith(upstream.idp.sso_url):
        q = query_of(location)
        assert location.startswith(REDIRECT_URI) and q["state"] == "md", location
        assert q["error"] in ("access_denied", "temporarily_unavailable"), q
    # the upstream is fast again: the next login starts without any restart
    again = requests.get(url, allow_redirects=False, timeout=30)
    assert again.status_code == 302 and again.headers["Location"].startswith(upstream.idp.sso_url), again.headers


def _oidc_connection(broker: BrokerServer, tenant: Tenant, upstream: Upstream, slug: str,
                     timeout: float | None) -> str:
    settings: dict[str, Any] = {"issuer": f"{upstream.url}/{slug}", "client_id": "broker-client",
                                "client_secret": "op-secret", "userinfo": False}
    if timeout is not None:
        settings["timeout"] = timeout
    r = broker.api("POST", f"/tenants/{tenant.slug}/connections", {"slug": slug, "protocol": "oidc",
                                                                    "oidc": settings})
    assert r.status_code == 201, r.text
    return slug


TIMEOUT_SOURCES = [
    pytest.param(None, id="broker-setting"),
    pytest.param(TIMEOUT, id="connection-setting"),
]


@pytest.mark.parametrize("conn_timeout", TIMEOUT_SOURCES)
def test_slow_oidc_discovery(broker: BrokerServer, tenant: Tenant, upstream: Upstream,
                             conn_timeout: float | None) -> None:
    slug = _oidc_connection(broker, tenant, upstream, f"disc-{'c' if conn_timeout else 'b'}", conn_timeout)
    upstream.delays["/.well-known/openid-configuration"] = SLOW
    try:
        url = authorize_url(broker.url, tenant, "disc", connection=slug)
        resp, took = _timed(lambda: requests.get(url, allow_redirects=False, timeout=30))
        _healthy_right_after(broker)
    finally:
        upstream.delays.clear()
    assert took < TIMEOUT + 2.5, took
    assert resp.status_code == 302, (resp.status_code, resp.text[:300])
    q = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith(REDIRECT_URI)
    assert q["error"] == "temporarily_unavailable" and q["state"] == "disc", q


@pytest.mark.parametrize("conn_timeout", TIMEOUT_SOURCES)
def test_slow_oidc_jwks(broker: BrokerServer, tenant: Tenant, upstream: Upstream,
                        conn_timeout: float | None) -> None:
    slug = _oidc_connection(broker, tenant, upstream, f"jwks-{'c' if conn_timeout else 'b'}", conn_timeout)
    session = requests.Session()
    url = authorize_url(broker.url, tenant, "jwks", connection=slug)
    upstream.delays["/jwks"] = SLOW
    try:
        start, took_start = _timed(lambda: session.get(url, allow_redirects=False, timeout=30))
        assert took_start < TIMEOUT + 2.5, took_start
        assert start.status_code == 302 and start.headers["Location"].startswith(upstream.url), start.text[:300]
        callback = session.get(start.headers["Location"], allow_redirects=False, timeout=30).headers["Location"]
        resp, took = _timed(lambda: session.get(callback, allow_redirects=False, timeout=30))
        _healthy_right_after(broker)
    finally:
        upstream.delays.clear()
    assert took < 2 * TIMEOUT + 2.5, took
    assert "Traceback" not in resp.text
    location = resp.headers.get("Location", "")
    assert "code=" not in location
    if resp.status_code == 302:
        q = query_of(location)
        assert location.startswith(REDIRECT_URI) and q["state"] == "jwks", location
        assert q["error"] in ("access_denied", "temporarily_unavailable"), q
    else:
        assert resp.status_code in (502, 503), (resp.status_code, resp.text[:300])
    events = broker.api("GET", f"/tenants/{tenant.slug}/audit?type=login&outcome=failure").json()["events"]
    assert events[0]["connection"] == slug
    assert events[0]["reason"] == "oidc_provider_unavailable", events[0]

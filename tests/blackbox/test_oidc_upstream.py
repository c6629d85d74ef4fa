"""SPEC `oidc` settings and upstream behaviour, against an independent OP (oidc-provider on node)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.blackbox.conftest import REDIRECT_URI, Env, query_of
from tests.support.broker_server import free_port, running_broker
from tests.support.oidc_op import DEFAULT_ACCOUNT, OidcOp, OpClient, running_oidc_op

pytestmark = pytest.mark.slow

SECRET = "s3cr+t/with:odd&chars= %"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}/t/acme/connections"
    clients = [OpClient(client_id="bb:default", client_secret=SECRET, redirect_uris=(f"{base}/corp/oidc/callback",)),
               OpClient(client_id="bb:nouserinfo", client_secret=SECRET,
                        redirect_uris=(f"{base}/noui/oidc/callback",))]
    with running_oidc_op(clients, [DEFAULT_ACCOUNT]) as op, \
            running_broker(tmp_path_factory.mktemp("bbo"), port=port) as broker:
        from contextlib import ExitStack

        with ExitStack() as stack:
            env = Env(broker, stack)
            env.tenant("acme")
            r = env.api("POST", "/tenants/acme/connections", {
                "slug": "corp", "protocol": "oidc", "domains": ["example.com"], "mapping": {"preset": "generic-oidc"},
                "oidc": {"issuer": op.issuer, "client_id": "bb:default", "client_secret": SECRET}})
            assert r.status_code == 201, r.text
            created = r.json()
            r = env.api("POST", "/tenants/acme/connections", {
                "slug": "noui", "protocol": "oidc",
                "oidc": {"issuer": op.issuer, "client_id": "bb:nouserinfo", "client_secret": SECRET,
                         "userinfo": False}})
            assert r.status_code == 201, r.text
            yield {"env": env, "op": op, "app": env.app("acme"), "created": created}


def _authorize(env: Env, app: dict[str, Any], conn: str, state: str, scope: str = "openid email profile") -> str:
    return env.authorize_url("acme", app, connection=conn, state=state, nonce="app-nonce-" + state, scope=scope)


def _login(up: dict[str, Any], conn: str, state: str, scope: str = "openid email profile") -> dict[str, Any]:
    env: Env = up["env"]
    op: OidcOp = up["op"]
    browser = requests.Session()
    callback = op.login(browser, _authorize(env, up["app"], conn, state, scope))
    answer = browser.get(callback, allow_redirects=False, timeout=20)
    assert answer.status_code == 302, answer.text[:400]
    q = query_of(answer.headers["Location"])
    assert q["state"] == state and "code" in q
    r = env.token("acme", up["app"], {"grant_type": "authorization_code", "code": q["code"],
                                      "redirect_uri": REDIRECT_URI})
    assert r.status_code == 200, r.text
    tok: dict[str, Any] = r.json()
    tok["claims"] = env.decode_id_token("acme", tok["id_token"])
    return tok


def test_oidc_connection_redirect_uri_and_secret_not_echoed(upstream: dict[str, Any]) -> None:
    env: Env = upstream["env"]
    assert upstream["created"]["redirect_uri"] == f"{env.url}/t/acme/connections/corp/oidc/callback"
    assert SECRET not in env.api("GET", "/tenants/acme/connections/corp").text


def test_oidc_connection_reports_default_settings(upstream: dict[str, Any]) -> None:
    env: Env = upstream["env"]
    got = env.api("GET", "/tenants/acme/connections/corp").json()
    oidc = got["oidc"]
    assert oidc["scopes"] == ["openid", "email", "profile"]
    assert oidc["token_endpoint_auth_method"] == "client_secret_basic"


def test_upstream_request_uses_broker_state_and_nonce_and_default_scopes(upstream: dict[str, Any]) -> None:
    env: Env = upstream["env"]
    r = requests.get(_authorize(env, upstream["app"], "corp", "mine-1"), allow_redirects=False, timeout=10)
    assert r.status_code == 302
    loc = r.headers["Location"]
    assert loc.startswith(upstream["op"].issuer)
    q = query_of(loc)
    assert q["state"] != "mine-1" and q["nonce"] != "app-nonce-mine-1"
    assert q["scope"].split() == ["openid", "email", "profile"]
    assert q["redirect_uri"] == f"{env.url}/t/acme/connections/corp/oidc/callback"
    assert q.get("code_challenge_method") == "S256"


def test_idp_claim_is_issuer_as_configured_and_userinfo_merged(upstream: dict[str, Any]) -> None:
    tok = _login(upstream, "corp", "ok-1")
    claims = tok["claims"]
    assert claims["idp"] == upstream["op"].issuer
    assert claims["tenant"] == "acme" and claims["connection"] == "corp"
    # the OP's code-flow ID token carries only sub/amr/acr: these came from its userinfo (merge on by default)
    assert claims["email"] == "alice@example.com" and claims["given_name"] == "Alice"
    assert claims.get("amr") == ["pwd"] and claims.get("acr") == "urn:test:loa:1"
    assert claims["nonce"] == "app-nonce-ok-1"


def test_userinfo_merge_can_be_turned_off(upstream: dict[str, Any]) -> None:
    tok = _login(upstream, "noui", "ok-2")
    assert "email" not in tok["claims"] and "given_name" not in tok["claims"]


def test_callback_without_transaction_is_html_4xx(upstream: dict[str, Any]) -> None:
    env: Env = upstream["env"]
    r = requests.get(f"{env.url}/t/acme/connections/corp/oidc/callback?" + urlencode({"code": "x", "state": "y"}),
                     allow_redirects=False, timeout=10)
    assert 400 <= r.status_code < 500 and r.headers["Content-Type"].startswith("text/html")


def test_callback_with_wrong_iss_is_refused(upstream: dict[str, Any]) -> None:
    env: Env = upstream["env"]
    op: OidcOp = upstream["op"]
    browser = requests.Session()
    callback = op.login(browser, _authorize(env, upstream["app"], "corp", "iss-1"))
    q = query_of(callback)
    q["iss"] = "https://evil.test"
    answer = browser.get(callback.split("?")[0] + "?" + urlencode(q), allow_redirects=False, timeout=20)
    assert answer.status_code == 302
    out = query_of(answer.headers["Location"])
    assert out["error"] == "access_denied" and out["state"] == "iss-1" and "code" not in out

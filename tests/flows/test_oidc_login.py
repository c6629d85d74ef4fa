"""End to end over real HTTP: the broker as RP to an independent, certified OP (oidc-provider on node),
and as OP to an independent RP (openid-client on node)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.broker_server import BrokerServer, free_port, running_broker
from tests.support.oidc_op import DEFAULT_ACCOUNT, OidcOp, OpClient, running_oidc_op
from tests.support.saml_idp import query_of

pytestmark = pytest.mark.slow

REDIRECT_URI = "https://app.example.test/cb"
NODE_DIR = Path(__file__).resolve().parents[1] / "support" / "oidc_op"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerServer, OidcOp]]:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/t/acme/connections/corp/oidc/callback"
    client = OpClient(client_id="broker:client", client_secret="s3cr+t/with:odd&chars= %",
                      redirect_uris=(callback,))
    with running_oidc_op([client], [DEFAULT_ACCOUNT]) as op, \
            running_broker(tmp_path_factory.mktemp("broker"), port=port) as broker:
        assert broker.api("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
        r = broker.api("POST", "/tenants/acme/connections", {
            "slug": "corp", "protocol": "oidc", "domains": ["example.com"],
            "oidc": {"issuer": op.issuer, "client_id": client.client_id, "client_secret": client.client_secret,
                     "scopes": ["openid", "email", "profile", "groups"]},
        })
        assert r.status_code == 201, r.text
        assert r.json()["redirect_uri"] == callback
        yield broker, op


@pytest.fixture(scope="module")
def app(env: tuple[BrokerServer, OidcOp]) -> dict[str, Any]:
    broker, _ = env
    r = broker.api("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    assert r.status_code == 201
    out: dict[str, Any] = r.json()
    return out


def _authorize_url(broker: BrokerServer, app: dict[str, Any], state: str, **extra: str) -> str:
    from urllib.parse import urlencode

    params = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI,
              "scope": "openid email profile groups", "state": state, "nonce": "n-" + state,
              "login_hint": "alice@example.com", **extra}
    return f"{broker.url}/t/acme/authorize?{urlencode(params)}"


def test_login_through_upstream_op(env: tuple[BrokerServer, OidcOp], app: dict[str, Any]) -> None:
    broker, op = env
    browser = requests.Session()
    callback = op.login(browser, _authorize_url(broker, app, "st1"))
    assert callback.startswith(f"{broker.url}/t/acme/connections/corp/oidc/callback?")
    answer = browser.get(callback, allow_redirects=False, timeout=20)
    assert answer.status_code == 302, answer.text[:400]
    q = query_of(answer.headers["Location"])
    assert q["state"] == "st1" and "code" in q
    token = requests.post(f"{broker.url}/t/acme/token", data={
        "grant_type": "authorization_code", "code": q["code"], "redirect_uri": REDIRECT_URI},
        auth=(app["client_id"], app["client_secret"]), timeout=10)
    assert token.status_code == 200, token.text
    from joserfc import jwt
    from joserfc.jwk import KeySet

    jwks = KeySet.import_key_set(requests.get(f"{broker.url}/t/acme/jwks", timeout=10).json())
    claims = jwt.decode(token.json()["id_token"], jwks).claims
    assert claims["email"] == "alice@example.com" and claims["idp"] == op.issuer
    assert claims["connection"] == "corp" and set(claims["groups"]) == {"engineering", "admins"}
    assert claims["nonce"] == "n-st1"


def test_user_cancels_at_upstream(env: tuple[BrokerServer, OidcOp], app: dict[str, Any]) -> None:
    broker, op = env
    browser = requests.Session()
    callback = op.login(browser, _authorize_url(broker, app, "st2"), abort=True)
    answer = browser.get(callback, allow_redirects=False, timeout=20)
    assert answer.status_code == 302
    q = query_of(answer.headers["Location"])
    assert q["error"] == "access_denied" and q["state"] == "st2" and "code" not in q
    events = broker.api("GET", "/tenants/acme/audit?type=login&outcome=failure").json()["events"]
    assert events[0]["reason"] == "oidc_upstream_error"


def test_callback_state_of_another_login_is_refused(env: tuple[BrokerServer, OidcOp],
                                                    app: dict[str, Any]) -> None:
    broker, op = env
    browser = requests.Session()
    callback = op.login(browser, _authorize_url(broker, app, "st3"))
    stranger = requests.Session()
    answer = stranger.get(callback, allow_redirects=False, timeout=20)
    assert answer.status_code == 400 and "code=" not in answer.headers.get("Location", "")
    # the refusal consumed nothing: the browser that started the login still finishes it
    mine = browser.get(callback, allow_redirects=False, timeout=20)
    assert mine.status_code == 302, mine.text[:400]
    q = query_of(mine.headers["Location"])
    assert q["state"] == "st3" and "code" in q


def test_prompt_select_account_and_login_go_upstream(env: tuple[BrokerServer, OidcOp], app: dict[str, Any]) -> None:
    """The app's prompt=select_account reaches the OP (with login when that is asked too); consent is the
    app's business with the broker and is not forwarded."""
    broker, _ = env
    for prompt, upstream in (("select_account", "select_account"), ("login select_account", "login select_account"),
                             ("consent", None)):
        r = requests.get(_authorize_url(broker, app, "sa", prompt=prompt), allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text[:300]
        assert query_of(r.headers["Location"]).get("prompt") == upstream, (prompt, r.headers["Location"])


def test_a_callback_that_repeats_a_parameter_is_not_read(env: tuple[BrokerServer, OidcOp],
                                                         app: dict[str, Any]) -> None:
    """Parameter pollution at the redirect URI (RFC 6749 §3.1: parameters MUST NOT repeat): a repeated state
    cannot be tied to a login (error page; the login is left alone); a repeated code fails the login."""
    broker, op = env
    browser = requests.Session()
    callback = op.login(browser, _authorize_url(broker, app, "rp1"))
    polluted = browser.get(f"{callback}&state=other", allow_redirects=False, timeout=20)
    assert polluted.status_code == 400 and "Location" not in polluted.headers
    events = broker.api("GET", "/tenants/acme/audit?type=login&outcome=failure").json()["events"]
    assert events[0]["reason"] == "oidc_invalid_response"
    twice = browser.get(f"{callback}&code=injected", allow_redirects=False, timeout=20)
    assert twice.status_code == 302
    q = query_of(twice.headers["Location"])
    assert q["error"] == "access_denied" and q["state"] == "rp1" and "code" not in q
    events = broker.api("GET", "/tenants/acme/audit?type=login&outcome=failure").json()["events"]
    assert events[0]["reason"] == "oidc_invalid_response" and "code" in events[0]["details"]["detail"]

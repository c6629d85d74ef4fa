"""response_mode=form_post (OAuth 2.0 Form Post Response Mode): the answer for the app as a page that POSTs
its parameters to the redirect_uri, through the real authorize, ACS and token endpoints."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urlsplit

from broker.login import txn_from_json, txn_to_json
from broker.model import AuthorizationRequest, LoginTransaction
from tests.samlxml.idp_fixtures import build_response, make_idp
from tests.security.conftest import REDIRECT_URI, Setup
from tests.support.saml_idp import parse_autopost, query_of


def _posted(r: Any) -> tuple[str, dict[str, str]]:
    """The form action and hidden fields of an auto-POST page."""
    assert r.status_code == 200 and r.mimetype == "text/html", (r.status_code, r.data[:300])
    return parse_autopost(r.get_data(as_text=True))


def _authorize(sec: Setup, **extra: str) -> Any:
    q = {"response_type": "code", "client_id": sec.apps["acme"]["client_id"], "redirect_uri": REDIRECT_URI,
         "scope": "openid email", "state": 'st"<&>', "connection": "okta", "response_mode": "form_post", **extra}
    return sec.client.get(f"/t/acme/authorize?{urlencode(q)}")


def _login(sec: Setup, signer: Any = None) -> Any:
    r = _authorize(sec)
    assert r.status_code == 302  # to the IdP, as always
    p = sec.pending(r.headers["Location"])
    resp = build_response(signer or sec.idp_a, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id="alice@acme.test", attributes={"email": ["alice@acme.test"]})
    return sec.post("acme", "okta", resp, p.relay_state)


def test_a_login_answers_the_app_by_post(sec: Setup) -> None:
    r = _login(sec)
    action, fields = _posted(r)
    assert action == REDIRECT_URI and "Location" not in r.headers
    assert set(fields) == {"code", "state", "iss"} and fields["state"] == 'st"<&>'
    assert fields["iss"].endswith("/t/acme")
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "origin"
    assert "form-action https: http:" in r.headers["Content-Security-Policy"]
    # the app's own origin may frame it (a silent sign-in in a hidden iframe), no one else
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(REDIRECT_URI))
    assert f"frame-ancestors {origin};" in r.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in r.headers
    assert any(c.startswith("broker_session=") for c in r.headers.getlist("Set-Cookie"))
    assert sec.tokens(fields["code"])["id_token"]


def test_single_sign_on_and_errors_answer_by_post_too(sec: Setup) -> None:
    action, fields = _posted(_authorize(sec, prompt="none"))
    assert action == REDIRECT_URI and fields["error"] == "login_required" and "code" not in fields
    _login(sec)
    _, fields = _posted(_authorize(sec, prompt="none"))
    assert "code" in fields
    _, fields = _posted(_authorize(sec, prompt="bogus"))  # refused by the request checks
    assert fields["error"] == "invalid_request" and fields["state"] == 'st"<&>'


def test_a_refused_login_answers_by_post(sec: Setup) -> None:
    _, fields = _posted(_login(sec, signer=make_idp("https://attacker.test/metadata")))
    assert fields["error"] == "access_denied" and "code" not in fields
    assert sec.failures()[0]["reason"] == "saml_signature_invalid"


def test_other_response_modes_answer_by_redirect(sec: Setup) -> None:
    r = _authorize(sec, response_mode="fragment")
    assert r.status_code == 302 and query_of(r.headers["Location"])["error"] == "invalid_request"
    r = _authorize(sec, prompt="none", response_mode="query")
    assert r.status_code == 302 and query_of(r.headers["Location"])["error"] == "login_required"


def test_the_discovery_document_offers_form_post(sec: Setup) -> None:
    d = sec.client.get("/t/acme/.well-known/openid-configuration").get_json()
    assert d["response_modes_supported"] == ["query", "form_post"]


def _txn(mode: str | None) -> LoginTransaction:
    req = AuthorizationRequest(client_id="c", redirect_uri=REDIRECT_URI, scope=("openid",), state="s", nonce=None,
                               code_challenge=None, code_challenge_method=None, response_mode=mode)
    return LoginTransaction(id="t", tenant_id="ten", tenant_slug="acme", connection_id="con",
                            connection_slug="okta", request=req, upstream={}, browser_binding="b", created_at=0.0,
                            expires_at=1.0)


def test_a_stored_login_stays_readable_across_a_rolling_upgrade() -> None:
    """A query-mode login is stored as the release before wrote it (no response_mode key), and a login stored
    by a later release with fields this one does not know still reads."""
    plain = json.loads(txn_to_json(_txn(None)))
    assert "response_mode" not in plain["request"]
    assert txn_from_json(txn_to_json(_txn("form_post"))).request.response_mode == "form_post"  # type: ignore[union-attr]
    plain["request"]["some_later_field"] = "x"
    assert txn_from_json(json.dumps(plain).encode()) == _txn(None)


def test_only_a_plain_origin_may_frame_the_page() -> None:
    from broker.upstream.base import AutoPost
    from broker.web.steps import render_step

    for uri, allowed in [("https://app.example:8443/cb?x=1", "https://app.example:8443"),
                         ("http://[::1]:8080/cb", "http://[::1]:8080"),
                         ("https://app.example;script-src*/cb", "'none'"), ("https://a b.example/cb", "'none'"),
                         ("https://user@app.example/cb", "'none'")]:
        resp = render_step(AutoPost(url=uri, fields={"code": "c"}), framed_by=uri)
        assert f"frame-ancestors {allowed};" in resp.headers["Content-Security-Policy"], uri
        assert ("X-Frame-Options" in resp.headers) is (allowed == "'none'")
    resp = render_step(AutoPost(url="https://idp.example/sso", fields={}))
    assert "frame-ancestors 'none';" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"

"""IdP-initiated (unsolicited) SAML logins through the real ACS with the Flask test client.

SPEC: unsolicited responses are accepted only where `allow_idp_initiated` is on; they then go to the
connection's `idp_initiated_app` at its `idp_initiated_redirect_uri`, and they must still pass every other
check (signature, audience, destination, time window, replay, InResponseTo).
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote, urlencode

from tests.samlxml.idp_fixtures import build_response, make_idp
from tests.security.conftest import PUBLIC, REDIRECT_URI, Setup
from tests.support.saml_idp import query_of

ACS = f"{PUBLIC}/t/acme/connections/okta/saml/acs"
SP_ENTITY_ID = f"{PUBLIC}/t/acme/connections/okta/saml/metadata"
ATTRS = {"email": ["alice@acme.test"], "firstName": ["Alice"], "lastName": ["L"], "groups": ["Admins"]}


def _unsolicited(sec: Setup, **kw: Any) -> bytes:
    args: dict[str, Any] = {"acs_url": ACS, "audience": SP_ENTITY_ID, "in_response_to": None,
                            "subject_in_response_to": None, "name_id": "alice@acme.test", "attributes": ATTRS}
    args.update(kw)
    idp = args.pop("idp", sec.idp_a)
    return build_response(idp, **args)


def _enable(sec: Setup, *, app: str | None = None, redirect_uri: str = REDIRECT_URI) -> Any:
    return sec.admin("PATCH", "/tenants/acme/connections/okta", {"saml": {
        "allow_idp_initiated": True,
        "idp_initiated_app": app or sec.apps["acme"]["client_id"],
        "idp_initiated_redirect_uri": redirect_uri,
    }})


def _refused_page(sec: Setup, r: Any, reason: str) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.data[:300])
    assert "code=" not in r.headers.get("Location", "")
    assert b"Traceback" not in r.data
    assert sec.failures()[0]["reason"] == reason


def _basic(client_id: str, secret: str) -> str:
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _redeem(sec: Setup, code: str, redirect_uri: str = REDIRECT_URI) -> Any:
    app = sec.apps["acme"]
    return sec.client.post("/t/acme/token", data={"grant_type": "authorization_code", "code": code,
                                                  "redirect_uri": redirect_uri},
                           headers={"Authorization": _basic(app["client_id"], app["client_secret"])})


# --- off (the default) -------------------------------------------------------------------------------


def test_unsolicited_response_is_refused_by_default(sec: Setup) -> None:
    r = sec.post("acme", "okta", _unsolicited(sec), None)
    _refused_page(sec, r, "saml_unsolicited")


def test_unsolicited_response_with_an_unknown_relay_state_is_refused_by_default(sec: Setup) -> None:
    r = sec.post("acme", "okta", _unsolicited(sec), "not-a-transaction")
    _refused_page(sec, r, "saml_unsolicited")


# --- on ------------------------------------------------------------------------------------------------


def test_enabling_needs_an_app(sec: Setup) -> None:
    r = sec.admin("PATCH", "/tenants/acme/connections/okta", {"saml": {"allow_idp_initiated": True}})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["details"]["field"] == "saml.idp_initiated_app"


def test_unsolicited_login_goes_to_the_configured_app_with_a_code_that_redeems(sec: Setup) -> None:
    r = _enable(sec)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["saml"]["allow_idp_initiated"] is True

    resp = sec.post("acme", "okta", _unsolicited(sec), None)
    assert resp.status_code == 302, resp.data[:300]
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    q = query_of(location)
    assert q["code"] and "error" not in q and "state" not in q
    assert q["iss"] == f"{PUBLIC}/t/acme"

    tok = _redeem(sec, q["code"])
    assert tok.status_code == 200, tok.get_json()
    body = tok.get_json()
    assert body["access_token"] and body["id_token"]
    info = sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200, info.get_json()
    claims = info.get_json()
    assert claims["email"] == "alice@acme.test" and claims["sub"] != "alice@acme.test"

    # one-time: the same code never redeems twice
    assert _redeem(sec, q["code"]).status_code == 400
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert events[0]["app"] == sec.apps["acme"]["client_id"] and events[0]["connection"] == "okta"


def test_an_idp_initiated_login_carries_the_claims_the_app_may_have_groups_included(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    q = query_of(sec.post("acme", "okta", _unsolicited(sec), None).headers["Location"])
    body = _redeem(sec, q["code"]).get_json()
    assert set(body["scope"].split()) == {"openid", "profile", "email", "groups"}
    info = sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.get_json()["groups"] == ["Admins"]


def test_an_empty_in_response_to_is_an_idp_initiated_answer(sec: Setup) -> None:
    """Some IdPs (samlify-based ones) send InResponseTo="" on unsolicited answers: it names no request."""
    empty = _unsolicited(sec, in_response_to="", subject_in_response_to="")
    _refused_page(sec, sec.post("acme", "okta", empty, None), "saml_unsolicited")
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec, in_response_to="", subject_in_response_to=""), None)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.data[:300]


def test_relay_state_is_never_a_redirect_target(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    resp = sec.post("acme", "okta", _unsolicited(sec), "https://evil.test/steal")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith(REDIRECT_URI + "?")
    assert "code" in query_of(resp.headers["Location"])


def test_redirect_uri_not_registered_for_the_app_never_yields_a_code(sec: Setup) -> None:
    r = _enable(sec, redirect_uri="https://evil.test/cb")
    if r.status_code != 200:  # refused at save time
        assert 400 <= r.status_code < 500 and r.get_json()["error"]
        return
    # accepted at save time: refused at login, with a clear page and an audit reason
    resp = sec.post("acme", "okta", _unsolicited(sec), None)
    _refused_page(sec, resp, "saml_idp_initiated_not_configured")
    assert "evil.test" not in resp.headers.get("Location", "")


def test_idp_initiated_app_of_another_tenant_never_yields_a_code(sec: Setup) -> None:
    r = _enable(sec, app=sec.apps["globex"]["client_id"])
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        return
    resp = sec.post("acme", "okta", _unsolicited(sec), None)
    _refused_page(sec, resp, "saml_idp_initiated_not_configured")


def test_unknown_idp_initiated_app_never_yields_a_code(sec: Setup) -> None:
    r = _enable(sec, app="no-such-client")
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        return
    resp = sec.post("acme", "okta", _unsolicited(sec), None)
    _refused_page(sec, resp, "saml_idp_initiated_not_configured")


def test_a_refusal_for_a_missing_app_does_not_consume_the_assertion(sec: Setup) -> None:
    """Checked before the Response is verified: once the app is fixed, the same Response signs the user in."""
    r = _enable(sec, app="no-such-client")
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        return
    response = _unsolicited(sec)
    _refused_page(sec, sec.post("acme", "okta", response, None), "saml_idp_initiated_not_configured")
    assert _enable(sec).status_code == 200
    resp = sec.post("acme", "okta", response, None)
    assert resp.status_code == 302 and "code" in query_of(resp.headers["Location"]), resp.data[:300]


# --- an unsolicited response still passes every other check ------------------------------------------


def test_unsolicited_wrong_audience_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    _refused_page(sec, sec.post("acme", "okta", _unsolicited(sec, audience="https://other-sp.test"), None),
                  "saml_audience_mismatch")


def test_unsolicited_signed_by_another_key_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    evil = make_idp("https://attacker.test/metadata")
    _refused_page(sec, sec.post("acme", "okta", _unsolicited(sec, signer=evil), None), "saml_signature_invalid")


def test_unsolicited_from_the_other_tenants_idp_is_refused(sec: Setup) -> None:
    """Same IdP entityID in both tenants: acme's ACS trusts only acme's IdP key."""
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec, idp=sec.idp_b, signature_algorithm="ecdsa-sha256"), None)
    _refused_page(sec, r, "saml_signature_invalid")


def test_unsolicited_unsigned_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec, sign_response=False, sign_assertion=False), None)
    _refused_page(sec, r, "saml_signature_missing")


def test_unsolicited_for_another_acs_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    other = ACS.replace("/t/acme/", "/t/globex/")
    _refused_page(sec, sec.post("acme", "okta", _unsolicited(sec, acs_url=other), None), "saml_destination_mismatch")


def test_unsolicited_expired_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    old = time.time() - 3600
    _refused_page(sec, sec.post("acme", "okta", _unsolicited(sec, issue_instant=old), None), "saml_expired")


def test_unsolicited_wrong_issuer_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec, issuer="https://other-idp.test/metadata"), None)
    assert 400 <= r.status_code < 500 and "code=" not in r.headers.get("Location", "")
    assert sec.failures()[0]["reason"].startswith("saml_")


def test_unsolicited_sha1_is_refused_without_allow_sha1(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec, signature_algorithm="rsa-sha1", digest_algorithm="sha1"), None)
    _refused_page(sec, r, "saml_algorithm_refused")


def test_unsolicited_replay_is_refused(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    response = _unsolicited(sec)
    first = sec.post("acme", "okta", response, None)
    assert first.status_code == 302 and "code" in query_of(first.headers["Location"])
    _refused_page(sec, sec.post("acme", "okta", response, None), "saml_replay")


def test_solicited_response_whose_transaction_is_gone_does_not_pass_as_idp_initiated(sec: Setup) -> None:
    """A response carrying InResponseTo but no live transaction (lost RelayState, another browser's request,
    a spent transaction) is not an IdP-initiated login."""
    assert _enable(sec).status_code == 200
    p = sec.begin()
    response = _unsolicited(sec, in_response_to=p.request_id, subject_in_response_to=p.request_id)
    _refused_page(sec, sec.post("acme", "okta", response, None), "saml_in_response_to_mismatch")
    _refused_page(sec, sec.post("acme", "okta", response, "unknown-relay-state"), "saml_in_response_to_mismatch")


def test_solicited_login_still_works_with_idp_initiated_on(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    p = sec.begin(state="xyz")
    response = _unsolicited(sec, in_response_to=p.request_id, subject_in_response_to=p.request_id)
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["code"] and q["state"] == "xyz"


def test_solicited_response_from_another_browser_is_refused_even_with_idp_initiated_on(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    p = sec.begin()
    response = _unsolicited(sec, in_response_to=p.request_id, subject_in_response_to=p.request_id)
    other = sec.app.test_client()  # no login-binding cookie
    r = other.post("/t/acme/connections/okta/saml/acs",
                   data={"SAMLResponse": base64.b64encode(response).decode(), "RelayState": p.relay_state})
    # the transaction is not this browser's: a 4xx page (no redirect to the app from the wrong browser)
    _refused_page(sec, r, "login_browser_mismatch")


# --- no single sign-on from an unsolicited answer -----------------------------------------------------


def _sso(sec: Setup) -> Any:
    """An authorize that may be answered from the browser's broker session only (prompt=none)."""
    app = sec.apps["acme"]
    return sec.client.get("/t/acme/authorize?" + urlencode({
        "response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI,
        "scope": "openid email", "state": "s2", "prompt": "none"}))


def test_an_unsolicited_login_opens_no_broker_session(sec: Setup) -> None:
    """Another site can post an unsolicited answer for its own account into a victim's browser: that
    answer reaches the configured app, but later logins in this browser must not silently be that account."""
    assert _enable(sec).status_code == 200
    r = sec.post("acme", "okta", _unsolicited(sec), None)
    assert r.status_code == 302 and query_of(r.headers["Location"])["code"]
    assert not any(h.startswith("broker_session=") for h in r.headers.getlist("Set-Cookie"))
    sso = _sso(sec)
    assert sso.status_code == 302
    assert query_of(sso.headers["Location"])["error"] == "login_required"


def test_an_unsolicited_login_leaves_the_browsers_own_session_alone(sec: Setup) -> None:
    assert _enable(sec).status_code == 200
    p = sec.begin(state="mine")
    own = build_response(sec.idp_a, acs_url=ACS, audience=SP_ENTITY_ID, in_response_to=p.request_id,
                         name_id="victim@acme.test", attributes={**ATTRS, "email": ["victim@acme.test"]})
    assert sec.post("acme", "okta", own, p.relay_state).status_code == 302

    r = sec.post("acme", "okta", _unsolicited(sec, name_id="mallory@acme.test",
                                              attributes={**ATTRS, "email": ["mallory@acme.test"]}), None)
    assert r.status_code == 302
    assert not any(h.startswith("broker_session=") for h in r.headers.getlist("Set-Cookie"))
    sso = _sso(sec)
    assert sso.status_code == 302
    assert sec.id_token_claims(query_of(sso.headers["Location"])["code"])["email"] == "victim@acme.test"

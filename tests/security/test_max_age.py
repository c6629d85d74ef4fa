"""OIDC Core §3.1.2.1 max_age across a SAML upstream: when the IdP answers with a sign-in older than the app
allows (it reused its own session), the broker asks once more with ForceAuthn instead of passing off an old
authentication as fresh. Run through the real ACS endpoint."""

from __future__ import annotations

import time

from tests.samlxml.idp_fixtures import build_response
from tests.security.conftest import REDIRECT_URI, Pending, Setup
from tests.support.saml_idp import query_of

ATTRS = {"email": ["alice@acme.test"], "firstName": ["Alice"], "lastName": ["L"], "groups": ["Admins"]}


def _response(sec: Setup, p: Pending, authn_instant: float | None) -> bytes:
    """A Response whose AuthnStatement says the user signed in at `authn_instant` (None: no AuthnStatement)."""
    return build_response(sec.idp_a, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id="alice@acme.test", attributes=ATTRS, authn_instant=authn_instant,
                          authn_statement=authn_instant is not None)


def test_an_old_idp_sign_in_past_max_age_is_asked_again_with_force_authn(sec: Setup) -> None:
    first = sec.begin(prompt=None, max_age=300)
    assert sec.authn_request(first.location).get("ForceAuthn") is None
    r = sec.post("acme", "okta", _response(sec, first, time.time() - 3600), first.relay_state)
    # not a code: back to the IdP with a new request that forces a fresh sign-in
    assert r.status_code == 302, r.data[:300]
    location = r.headers["Location"]
    assert "code=" not in location and location.startswith("https://idp.shared.test")
    again = sec.pending(location)
    assert sec.authn_request(location).get("ForceAuthn") == "true"
    assert again.relay_state != first.relay_state and again.request_id != first.request_id
    fresh = time.time() - 2
    r = sec.post("acme", "okta", _response(sec, again, fresh), again.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    claims = sec.id_token_claims(query_of(r.headers["Location"])["code"])
    assert abs(int(claims["auth_time"]) - fresh) <= 1  # type: ignore[call-overload]
    # the first transaction is spent: its old response cannot finish the login later
    r = sec.post("acme", "okta", _response(sec, first, time.time() - 3600), first.relay_state)
    assert 400 <= r.status_code < 500 and "code=" not in r.headers.get("Location", "")


def test_an_idp_that_ignores_force_authn_is_asked_only_once(sec: Setup) -> None:
    first = sec.begin(prompt=None, max_age=300)
    old = time.time() - 3600
    r = sec.post("acme", "okta", _response(sec, first, old), first.relay_state)
    again = sec.pending(r.headers["Location"])
    r = sec.post("acme", "okta", _response(sec, again, old), again.relay_state)
    # signed in, with the true (old) auth_time for the app to judge, and the audit says so
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    claims = sec.id_token_claims(query_of(r.headers["Location"])["code"])
    assert abs(int(claims["auth_time"]) - old) <= 1  # type: ignore[call-overload]
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert "max_age_not_honored" in events[0]["details"]["warnings"]


def test_a_sign_in_within_max_age_is_not_asked_again(sec: Setup) -> None:
    p = sec.begin(prompt=None, max_age=300)
    r = sec.post("acme", "okta", _response(sec, p, time.time() - 200), p.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    assert "code" in query_of(r.headers["Location"])


def test_the_connections_clock_skew_is_allowed(sec: Setup) -> None:
    p = sec.begin(prompt=None, max_age=60)
    r = sec.post("acme", "okta", _response(sec, p, time.time() - 150), p.relay_state)  # 60 + 120 s skew
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]


def test_without_max_age_an_old_sign_in_is_accepted(sec: Setup) -> None:
    p = sec.begin(prompt=None)
    old = time.time() - 86400
    r = sec.post("acme", "okta", _response(sec, p, old), p.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    assert abs(int(sec.id_token_claims(query_of(r.headers["Location"])["code"])["auth_time"]) - old) <= 1  # type: ignore[call-overload]


def test_a_login_that_already_forced_authn_is_not_asked_again(sec: Setup) -> None:
    """max_age=0 (and prompt=login) already send ForceAuthn: an IdP answering with an old sign-in anyway is
    accepted once, with the warning, rather than looping."""
    p = sec.begin(prompt=None, max_age=0)
    r = sec.post("acme", "okta", _response(sec, p, time.time() - 3600), p.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert "max_age_not_honored" in events[0]["details"]["warnings"]


def test_an_answer_that_does_not_say_when_the_user_signed_in_is_asked_again_under_max_age(sec: Setup) -> None:
    """No AuthnStatement (no instant) cannot show a sign-in within max_age: the IdP is asked once more with
    ForceAuthn; an answer without one after that is taken as the fresh sign-in it was asked for, audited."""
    first = sec.begin(prompt=None, max_age=300)
    r = sec.post("acme", "okta", _response(sec, first, None), first.relay_state)
    assert r.status_code == 302 and "code=" not in r.headers["Location"], r.data[:300]
    again = sec.pending(r.headers["Location"])
    assert sec.authn_request(r.headers["Location"]).get("ForceAuthn") == "true"
    before = time.time()
    r = sec.post("acme", "okta", _response(sec, again, None), again.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    assert int(sec.id_token_claims(query_of(r.headers["Location"])["code"])["auth_time"]) >= int(before)  # type: ignore[call-overload]
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert events[0]["details"]["warnings"] == ["max_age_unverified"]


def test_without_max_age_an_answer_without_authn_statement_is_accepted_at_once(sec: Setup) -> None:
    p = sec.begin(prompt=None)
    r = sec.post("acme", "okta", _response(sec, p, None), p.relay_state)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI), r.data[:300]
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert "max_age_unverified" not in events[0]["details"].get("warnings", [])

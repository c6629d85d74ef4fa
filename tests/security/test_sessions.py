"""Broker sessions (single sign-on across one tenant's apps): prompt handling, max_age, logout, isolation."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.samlxml.idp_fixtures import build_response, make_idp
from tests.security.conftest import REDIRECT_URI, Setup
from tests.support.saml_idp import SamlIdp, query_of


def _authorize(sec: Setup, tenant: str = "acme", client_id: str | None = None, **params: str) -> Any:
    q = {"response_type": "code", "client_id": client_id or sec.apps[tenant]["client_id"],
         "redirect_uri": REDIRECT_URI, "scope": "openid email", "state": "s", "connection": "okta", **params}
    return sec.client.get(f"/t/{tenant}/authorize?{urlencode(q)}")


def _sign_in(sec: Setup, authn_instant: float | None = None, session_not_on_or_after: float | None = None) -> str:
    p = sec.begin()
    resp = build_response(sec.idp_a, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id="alice@acme.test", attributes={"email": ["alice@acme.test"]},
                          authn_instant=authn_instant, session_not_on_or_after=session_not_on_or_after)
    r = sec.post("acme", "okta", resp, p.relay_state)
    assert r.status_code == 302
    cookie = r.headers.getlist("Set-Cookie")
    assert any(c.startswith("broker_session=") for c in cookie)
    return query_of(r.headers["Location"])["code"]


def test_prompt_none_without_session_is_login_required(sec: Setup) -> None:
    r = _authorize(sec, prompt="none")
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["error"] == "login_required" and q["state"] == "s"
    # a failed silent sign-in is a refused login: audited with its reason (SPEC), nothing else written
    [event] = sec.failures()
    assert event["reason"] == "login_required" and event["app"] == sec.apps["acme"]["client_id"]
    assert event["details"]["prompt"] == "none" and event["details"]["message"] == "The user is not signed in."


def test_second_app_signs_in_without_going_upstream(sec: Setup) -> None:
    _sign_in(sec)
    other = sec.admin("POST", "/tenants/acme/apps", {"name": "Wiki", "redirect_uris": [REDIRECT_URI]}).get_json()
    r = _authorize(sec, client_id=other["client_id"])
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert r.headers["Location"].startswith(REDIRECT_URI) and "code" in q
    r = _authorize(sec, client_id=other["client_id"], prompt="none")
    assert "code" in query_of(r.headers["Location"])


def test_prompt_login_goes_upstream_even_with_a_session(sec: Setup) -> None:
    _sign_in(sec)
    r = _authorize(sec, prompt="login")
    assert r.status_code == 302 and "SAMLRequest=" in r.headers["Location"]


def test_max_age_zero_forces_upstream(sec: Setup) -> None:
    _sign_in(sec)
    r = _authorize(sec, max_age="0")
    assert r.status_code == 302 and "SAMLRequest=" in r.headers["Location"]


def test_a_sign_in_dated_in_the_future_is_taken_as_now_and_cannot_satisfy_max_age_zero(sec: Setup) -> None:
    """An IdP clock an hour ahead (or a lying AuthnInstant) must not make the session look fresh for an hour."""
    before = time.time()
    code = _sign_in(sec, authn_instant=before + 3600)
    claims = sec.id_token_claims(code)
    assert int(before) <= int(claims["auth_time"]) <= time.time()
    r = _authorize(sec, max_age="0")
    assert r.status_code == 302 and "SAMLRequest=" in r.headers["Location"]
    r = _authorize(sec, max_age="60")  # taken as now: within a minute, single sign-on answers
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI)


def test_an_idp_session_already_over_gives_this_app_a_code_and_no_single_sign_on(sec: Setup) -> None:
    """SessionNotOnOrAfter (SAML core §2.7.2): the broker's session lasts no longer than the IdP's."""
    code = _sign_in(sec, session_not_on_or_after=time.time() - 10)
    assert code
    r = _authorize(sec, prompt="none")
    assert query_of(r.headers["Location"])["error"] == "login_required"


def test_an_idp_session_still_running_allows_single_sign_on(sec: Setup) -> None:
    _sign_in(sec, session_not_on_or_after=time.time() + 3600)
    r = _authorize(sec, prompt="none")
    assert "code" in query_of(r.headers["Location"])


def test_session_of_tenant_a_is_not_used_by_tenant_b(sec: Setup) -> None:
    _sign_in(sec)
    session = sec.client.get_cookie("broker_session", path="/t/acme/")
    assert session is not None
    sec.client.set_cookie("broker_session", session.value, path="/t/globex/")
    r = _authorize(sec, "globex", prompt="none")
    assert query_of(r.headers["Location"])["error"] == "login_required"


def test_logout_ends_the_session(sec: Setup) -> None:
    _sign_in(sec)
    r = sec.client.get("/t/acme/logout")
    assert r.status_code == 200
    r = _authorize(sec, prompt="none")
    assert query_of(r.headers["Location"])["error"] == "login_required"


def test_id_token_sid_is_not_the_session_cookie(sec: Setup) -> None:
    """An app holding an ID token must not learn the value that opens the user's broker session."""

    code = _sign_in(sec)
    cookie = sec.client.get_cookie("broker_session", path="/t/acme/")
    assert cookie is not None
    app = sec.apps["acme"]
    basic = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode()).decode()
    r = sec.client.post("/t/acme/token", data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": REDIRECT_URI},
                        headers={"Authorization": f"Basic {basic}"})
    payload = r.get_json()["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sid"] and claims["sid"] != cookie.value and cookie.value not in json.dumps(claims)


def test_disabling_the_connection_ends_its_sessions(sec: Setup) -> None:
    _sign_in(sec)
    assert query_of(_authorize(sec, prompt="none").headers["Location"]).get("code")
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"enabled": False}).status_code == 200
    r = _authorize(sec, prompt="none")
    assert query_of(r.headers["Location"])["error"] == "login_required"


def test_a_connection_deleted_and_created_again_does_not_inherit_the_old_ones_sessions(sec: Setup) -> None:
    """Same slug, another IdP key: a new connection that never signed this user in (was: SSO from the old one)."""
    _sign_in(sec)
    assert sec.admin("DELETE", "/tenants/acme/connections/okta").status_code == 204
    metadata = SamlIdp(idp=make_idp("https://idp.other.test/metadata"), url="https://idp.other.test").metadata_xml()
    r = sec.admin("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "domains": ["acme.test"], "saml": {"metadata_xml": metadata}})
    assert r.status_code == 201, r.get_json()
    r = _authorize(sec, prompt="none")
    assert query_of(r.headers["Location"])["error"] == "login_required"
    r = _authorize(sec)
    assert r.status_code == 302 and r.headers["Location"].startswith("https://idp.other.test/")


def test_logout_at_another_tenant_leaves_the_session_alone(sec: Setup) -> None:
    _sign_in(sec)
    cookie = sec.client.get_cookie("broker_session", path="/t/acme/")
    assert cookie is not None
    sec.client.set_cookie("broker_session", cookie.value, path="/t/globex/")
    r = sec.client.get("/t/globex/logout", headers=CROSS_SITE)
    assert r.status_code == 200
    assert _signed_in(sec)


# --- RP-Initiated Logout 1.0 §2: the End-User is asked unless the request is tied to their session ---------

BYE = "https://app.acme.test/bye"
CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}


def _signed_in(sec: Setup) -> bool:
    r = _authorize(sec, prompt="none")
    return "code" in query_of(r.headers["Location"])


def _id_token(sec: Setup, code: str) -> str:
    token: str = sec.tokens(code)["id_token"]
    return token


def _allow_bye(sec: Setup) -> str:
    client_id: str = sec.apps["acme"]["client_id"]
    r = sec.admin("PATCH", f"/tenants/acme/apps/{client_id}", {"post_logout_redirect_uris": [BYE]})
    assert r.status_code == 200, r.get_json()
    return client_id


def test_a_cross_site_logout_without_hint_asks_first(sec: Setup) -> None:
    client_id = _allow_bye(sec)
    _sign_in(sec)
    query = urlencode({"client_id": client_id, "post_logout_redirect_uri": BYE, "state": "z<1>"})
    asked = sec.client.get(f"/t/acme/logout?{query}", headers=CROSS_SITE)
    assert asked.status_code == 200 and "Location" not in asked.headers
    page = asked.get_data(as_text=True)
    assert '<form method="post" action="http://broker.test/t/acme/logout">' in page
    assert "z&lt;1&gt;" in page and "z<1>" not in page  # forwarded, escaped
    # browsers apply form-action to the redirect that follows the form: the registered target's origin too
    assert "form-action 'self' https://app.acme.test" in asked.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in asked.headers["Content-Security-Policy"]
    assert asked.headers["Cache-Control"] == "no-store"
    assert _signed_in(sec)  # nothing ended yet

    import re
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
    assert set(fields) == {"client_id", "post_logout_redirect_uri", "state", "confirm"}
    forged = sec.client.post("/t/acme/logout", data={**fields, "confirm": "0" * 64}, headers=CROSS_SITE)
    assert forged.status_code == 200 and "<form" in forged.get_data(as_text=True) and _signed_in(sec)
    as_get = sec.client.get(f"/t/acme/logout?{urlencode(fields)}", headers=CROSS_SITE)
    assert "<form" in as_get.get_data(as_text=True) and _signed_in(sec)  # the answer is a POST of the form

    fields["state"] = "z<1>"
    done = sec.client.post("/t/acme/logout", data=fields, headers={"Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 302 and done.headers["Location"] == f"{BYE}?{urlencode({'state': 'z<1>'})}"
    assert not _signed_in(sec)


@pytest.mark.parametrize(("headers", "asks"), [
    ({"Referer": "https://evil.test/page"}, True),  # an older browser, from another site
    ({"Origin": "null"}, True),
    ({"Origin": "https://app.acme.test"}, True),
    ({"Referer": "http://broker.test/t/acme/somewhere"}, False),  # from our own pages
    ({"Referer": "HTTP://BROKER.TEST/x"}, False),
    ({}, False),  # typed, bookmarked, or not a browser
    ({"Sec-Fetch-Site": "same-origin", "Referer": "https://evil.test/"}, False),  # the browser's word counts
    ({"Sec-Fetch-Site": "cross-site", "Referer": "http://broker.test/"}, True),
])
def test_without_sec_fetch_site_the_referer_or_origin_says_where_a_logout_comes_from(
        sec: Setup, headers: dict[str, str], asks: bool) -> None:
    _sign_in(sec)
    r = sec.client.get("/t/acme/logout", headers=headers)
    assert ("<form" in r.get_data(as_text=True)) is asks
    assert _signed_in(sec) is asks


def test_a_hint_of_the_current_session_signs_out_at_once_even_cross_site(sec: Setup) -> None:
    _allow_bye(sec)
    hint = _id_token(sec, _sign_in(sec))
    r = sec.client.get(f"/t/acme/logout?{urlencode({'id_token_hint': hint, 'post_logout_redirect_uri': BYE})}",
                       headers=CROSS_SITE)
    assert r.status_code == 302 and r.headers["Location"] == BYE
    assert not _signed_in(sec)


def test_a_hint_of_another_session_asks_first(sec: Setup) -> None:
    old_hint = _id_token(sec, _sign_in(sec))
    sec.client.get("/t/acme/logout", headers={"Sec-Fetch-Site": "same-origin"})
    _sign_in(sec)  # a new session: the old ID token is not of it
    r = sec.client.get(f"/t/acme/logout?{urlencode({'id_token_hint': old_hint})}")
    assert r.status_code == 200 and "<form" in r.get_data(as_text=True)
    assert _signed_in(sec)


def test_without_a_session_there_is_nothing_to_ask(sec: Setup) -> None:
    client_id = _allow_bye(sec)
    query = urlencode({"client_id": client_id, "post_logout_redirect_uri": BYE})
    r = sec.client.get(f"/t/acme/logout?{query}", headers=CROSS_SITE)
    assert r.status_code == 302 and r.headers["Location"] == BYE


def test_logout_errors_say_sign_out(sec: Setup) -> None:
    r = sec.client.get(f"/t/acme/logout?{urlencode({'post_logout_redirect_uri': 'https://evil.test/'})}")
    assert r.status_code == 400 and "Sign-out failed" in r.get_data(as_text=True)


@pytest.mark.parametrize("name", ["post_logout_redirect_uri", "client_id", "state", "confirm"])
def test_logout_refuses_a_repeated_parameter(sec: Setup, name: str) -> None:
    client_id = _allow_bye(sec)
    _sign_in(sec)
    params = [("client_id", client_id), ("post_logout_redirect_uri", BYE), ("state", "a")]
    if name == "confirm":
        params += [("confirm", "x"), ("confirm", "y")]
    else:
        params.append((name, "https://evil.test/x" if name == "post_logout_redirect_uri" else "other"))
    r = sec.client.get(f"/t/acme/logout?{urlencode(params)}")
    assert r.status_code == 400 and "Sign-out failed" in r.get_data(as_text=True)
    assert "Location" not in r.headers
    assert _signed_in(sec)



def _signed_in_as(sec: Setup, email: str, client: dict[str, Any] | None = None) -> str:
    """Sign in as `email` (through `client`'s authorize when given) and return the ID token issued for it."""
    app = client or sec.apps["acme"]
    r = _authorize(sec, client_id=app["client_id"], prompt="login")
    p = sec.pending(r.headers["Location"])
    resp = build_response(sec.idp_a, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id=email, attributes={"email": [email]})
    r = sec.post("acme", "okta", resp, p.relay_state)
    assert r.status_code == 302, r.data[:300]
    id_token: str = sec.tokens(query_of(r.headers["Location"])["code"], client=app)["id_token"]
    return id_token


def test_id_token_hint_of_the_signed_in_user_gets_a_code(sec: Setup) -> None:
    alice = _signed_in_as(sec, "alice@acme.test")
    r = _authorize(sec, prompt="none", id_token_hint=alice)
    assert "code" in query_of(r.headers["Location"]), r.headers["Location"]
    sec.clock.offset = 2 * 3600  # OIDC Core §3.1.2.1: an expired hint still names its user
    r = _authorize(sec, prompt="none", id_token_hint=alice)
    assert "code" in query_of(r.headers["Location"]), r.headers["Location"]


def test_id_token_hint_of_another_user_is_not_answered_with_the_session(sec: Setup) -> None:
    """OIDC Core §3.1.2.1: a silent renew after the user changed must not give the app someone else's code."""
    bob = _signed_in_as(sec, "bob@acme.test")
    _signed_in_as(sec, "alice@acme.test")  # the browser's session is now Alice's
    r = _authorize(sec, prompt="none", id_token_hint=bob)
    q = query_of(r.headers["Location"])
    assert q["error"] == "login_required" and "code" not in q and q["state"] == "s"
    assert [(e["reason"], e["details"]["prompt"]) for e in sec.failures()] == [("login_required", "none")]
    r = _authorize(sec, id_token_hint=bob)  # without prompt=none: a sign-in upstream, not Alice's session,
    assert r.status_code == 302 and "SAMLRequest=" in r.headers["Location"]
    assert sec.authn_request(r.headers["Location"]).get("ForceAuthn") == "true"  # and afresh at the IdP


@pytest.mark.parametrize(("who", "accepted"), [("bob@acme.test", True), ("alice@acme.test", False)])
def test_an_upstream_sign_in_must_be_the_hinted_user(sec: Setup, who: str, accepted: bool) -> None:
    """OIDC Core §3.1.2.1: with no broker session to compare, the user who signs in upstream (an IdP session
    of someone else, say) must still be the one the hint names: no code for anyone else."""
    bob = _signed_in_as(sec, "bob@acme.test")
    sec.client.delete_cookie("broker_session", path="/t/acme/")
    r = _authorize(sec, id_token_hint=bob)
    p = sec.pending(r.headers["Location"])
    resp = build_response(sec.idp_a, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id=who, attributes={"email": [who]})
    r = sec.post("acme", "okta", resp, p.relay_state)
    q = query_of(r.headers["Location"])
    if accepted:
        assert "code" in q
    else:
        assert q["error"] == "access_denied" and "code" not in q and q["state"] == "s"
        assert sec.failures()[0]["reason"] == "login_hint_other_user"


def test_an_empty_id_token_hint_is_no_hint_and_a_repeated_one_is_refused(sec: Setup) -> None:
    _signed_in_as(sec, "alice@acme.test")
    r = _authorize(sec, prompt="none", id_token_hint="")  # RFC 6749 §3.1: a parameter without a value is omitted
    assert "code" in query_of(r.headers["Location"])
    alice = _signed_in_as(sec, "alice@acme.test")
    q = {"response_type": "code", "client_id": sec.apps["acme"]["client_id"], "redirect_uri": REDIRECT_URI,
         "scope": "openid", "state": "s", "prompt": "none"}
    r = sec.client.get(f"/t/acme/authorize?{urlencode(q)}&id_token_hint={alice}&id_token_hint=x")
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


def test_id_token_hint_of_a_pairwise_app_names_its_user_in_that_apps_subjects(sec: Setup) -> None:
    pairwise = sec.admin("POST", "/tenants/acme/apps", {"name": "Pairwise", "redirect_uris": [REDIRECT_URI],
                                                        "subject_type": "pairwise"}).get_json()
    alice = _signed_in_as(sec, "alice@acme.test", pairwise)
    claims = json.loads(base64.urlsafe_b64decode(alice.split(".")[1] + "=="))
    assert claims["aud"] == pairwise["client_id"]
    r = _authorize(sec, client_id=pairwise["client_id"], prompt="none", id_token_hint=alice)
    assert "code" in query_of(r.headers["Location"])
    r = _authorize(sec, prompt="none", id_token_hint=alice)  # another (public-subject) app, the same user
    assert "code" in query_of(r.headers["Location"])
    _signed_in_as(sec, "bob@acme.test")
    r = _authorize(sec, client_id=pairwise["client_id"], prompt="none", id_token_hint=alice)
    assert query_of(r.headers["Location"])["error"] == "login_required"


@pytest.mark.parametrize("which", ["garbage", "other-tenant", "access-token"])
def test_an_id_token_hint_that_is_not_our_id_token_is_refused(sec: Setup, which: str) -> None:
    _signed_in_as(sec, "alice@acme.test")
    if which == "garbage":
        hint = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
    elif which == "access-token":
        r = _authorize(sec)
        hint = sec.tokens(query_of(r.headers["Location"])["code"])["access_token"]
    else:
        p = sec.begin("globex")
        resp = build_response(sec.idp_b, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                              name_id="alice@globex.test", attributes={"email": ["alice@globex.test"]},
                              signature_algorithm="ecdsa-sha256")
        r = sec.post("globex", "okta", resp, p.relay_state)
        hint = sec.tokens(query_of(r.headers["Location"])["code"], "globex")["id_token"]
    r = _authorize(sec, prompt="none", id_token_hint=hint)
    q = query_of(r.headers["Location"])
    assert r.headers["Location"].startswith(REDIRECT_URI)
    assert q["error"] == "invalid_request" and "code" not in q and q["state"] == "s"
    assert sec.failures()[0]["reason"] == "invalid_request"

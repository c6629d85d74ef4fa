"""SPEC token, userinfo, introspect, revoke, logout; claims by scope; refresh rotation and reuse detection."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.blackbox.conftest import REDIRECT_URI, Env, query_of

pytestmark = pytest.mark.slow

LOGOUT_URI = "https://app.blackbox.test/bye"
PROFILE = {"name", "given_name", "family_name"}


@pytest.fixture(scope="module")
def realm(env: Env) -> dict[str, Any]:
    t = env.tenant()
    idp = env.idp()
    env.saml_connection(t, idp, slug="okta", domains=["acme.test"])
    app = env.app(t, post_logout_redirect_uris=[LOGOUT_URI])
    public = env.app(t, name="spa", public=True)
    return {"t": t, "idp": idp, "app": app, "public": public}


def login(env: Env, realm: dict[str, Any], app: str = "app", **kw: Any) -> dict[str, Any]:
    return env.tokens_for(realm["t"], "okta", realm[app], realm["idp"], **kw)


def payload(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return out


def introspect(env: Env, realm: dict[str, Any], token: str) -> dict[str, Any]:
    app = realm["app"]
    r = requests.post(f"{env.issuer(realm['t'])}/introspect", data={"token": token},
                      auth=(app["client_id"], app["client_secret"]), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


# -- authorization_code ----------------------------------------------------------------------------

def test_code_exchange_and_id_token(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    assert tok["token_type"].lower() == "bearer" and tok["expires_in"] > 0 and tok["access_token"]
    assert "refresh_token" not in tok  # no offline_access
    claims = env.decode_id_token(realm["t"], tok["id_token"])
    assert claims["iss"] == env.issuer(realm["t"]) and claims["aud"] == realm["app"]["client_id"]
    assert claims["nonce"] == tok["_nonce"]
    assert claims["tenant"] == realm["t"] and claims["connection"] == "okta"
    assert claims["idp"] == realm["idp"].entity_id
    assert claims["email"] == "alice@acme.test" and set(claims["groups"]) == {"Everyone", "Admins"}
    assert claims["sub"] and "alice" not in claims["sub"]


def test_token_response_is_not_cached(env: Env, realm: dict[str, Any]) -> None:
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    r = env.token(realm["t"], realm["app"], {"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": REDIRECT_URI, "code_verifier": p["code_verifier"]})
    assert r.status_code == 200 and r.headers.get("Cache-Control") == "no-store"


def test_sub_is_stable_per_user(env: Env, realm: dict[str, Any]) -> None:
    a = env.decode_id_token(realm["t"], login(env, realm)["id_token"])
    b = env.decode_id_token(realm["t"], login(env, realm)["id_token"])
    assert a["sub"] == b["sub"]


def test_code_is_one_time(env: Env, realm: dict[str, Any]) -> None:
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": p["code_verifier"]}
    assert env.token(realm["t"], realm["app"], data).status_code == 200
    again = env.token(realm["t"], realm["app"], data)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_code_bound_to_redirect_uri_and_verifier(env: Env, realm: dict[str, Any]) -> None:
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    r = env.token(realm["t"], realm["app"], {"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": REDIRECT_URI, "code_verifier": "x" * 50})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    r = env.token(realm["t"], realm["app"], {"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": REDIRECT_URI + "x", "code_verifier": p["code_verifier"]})
    assert r.status_code == 400 and r.json()["error"] in ("invalid_grant", "invalid_request")
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    r = env.token(realm["t"], realm["app"], {"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": REDIRECT_URI})  # verifier missing
    assert r.status_code == 400 and r.json()["error"] in ("invalid_grant", "invalid_request")


def test_code_bound_to_client(env: Env, realm: dict[str, Any]) -> None:
    other = env.app(realm["t"], name="other")
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    r = env.token(realm["t"], other, {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                                      "code_verifier": p["code_verifier"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_client_secret_post_and_wrong_secret(env: Env, realm: dict[str, Any]) -> None:
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": p["code_verifier"]}
    bad = requests.post(f"{env.issuer(realm['t'])}/token", data=data, auth=(realm["app"]["client_id"], "wrong"),
                        timeout=10)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers.get("WWW-Authenticate", "").lower().startswith("basic")
    post_app = env.app(realm["t"], name="post", token_endpoint_auth_method="client_secret_post")
    assert post_app["token_endpoint_auth_method"] == "client_secret_post"
    code, p = env.code_for(realm["t"], "okta", post_app, realm["idp"])
    ok = env.token(realm["t"], post_app, {"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": REDIRECT_URI, "code_verifier": p["code_verifier"]},
                   basic=False)
    assert ok.status_code == 200, ok.text


def test_basic_credentials_are_form_urlencoded(env: Env, realm: dict[str, Any]) -> None:
    """RFC 6749 §2.3.1: client_id/secret are form-urlencoded before base64 (client ids here are url-safe)."""
    code, p = env.code_for(realm["t"], "okta", realm["app"], realm["idp"])
    app = realm["app"]
    creds = f"{quote(app['client_id'], safe='')}:{quote(app['client_secret'], safe='')}"
    r = requests.post(f"{env.issuer(realm['t'])}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": p["code_verifier"]},
        headers={"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}, timeout=10)
    assert r.status_code == 200, r.text


def test_public_client_with_pkce(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, app="public")
    assert tok["access_token"] and tok["id_token"]


def test_unsupported_grant_type(env: Env, realm: dict[str, Any]) -> None:
    r = env.token(realm["t"], realm["app"], {"grant_type": "password", "username": "a", "password": "b"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_token_errors_are_oauth_json(env: Env, realm: dict[str, Any]) -> None:
    r = env.token(realm["t"], realm["app"], {"grant_type": "authorization_code", "code": "nope",
                                             "redirect_uri": REDIRECT_URI})
    assert r.status_code == 400 and set(r.json()) >= {"error"} and r.json()["error"] == "invalid_grant"


# -- claims by scope -------------------------------------------------------------------------------

def test_scope_openid_only(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, scope="openid")
    claims = env.decode_id_token(realm["t"], tok["id_token"])
    assert claims["tenant"] == realm["t"] and claims["connection"] == "okta"
    assert claims["idp"] == realm["idp"].entity_id
    assert not {"email", "groups", *PROFILE} & set(claims), claims
    ui = requests.get(f"{env.issuer(realm['t'])}/userinfo",
                      headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10).json()
    assert ui["sub"] == claims["sub"]
    assert not {"email", "groups", *PROFILE} & set(ui), ui


def test_scope_email_only(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, scope="openid email")
    claims = env.decode_id_token(realm["t"], tok["id_token"])
    assert claims["email"] == "alice@acme.test" and "email_verified" in claims
    assert not {"groups", *PROFILE} & set(claims), claims


def test_scope_profile_and_groups(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, scope="openid profile groups")
    claims = env.decode_id_token(realm["t"], tok["id_token"])
    assert claims["given_name"] == "Alice" and claims["family_name"] == "Liddell" and claims["name"]
    assert set(claims["groups"]) == {"Everyone", "Admins"}
    assert "email" not in claims


def test_userinfo_get_and_post(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    url = f"{env.issuer(realm['t'])}/userinfo"
    auth = {"Authorization": f"Bearer {tok['access_token']}"}
    get = requests.get(url, headers=auth, timeout=10)
    post = requests.post(url, headers=auth, timeout=10)
    form = requests.post(url, data={"access_token": tok["access_token"]}, timeout=10)
    assert get.status_code == post.status_code == form.status_code == 200
    assert get.json() == post.json() == form.json()
    ui = get.json()
    assert ui["email"] == "alice@acme.test" and ui["tenant"] == realm["t"] and ui["connection"] == "okta"
    assert ui["idp"] == realm["idp"].entity_id


def test_userinfo_without_or_with_bad_token_is_401(env: Env, realm: dict[str, Any]) -> None:
    url = f"{env.issuer(realm['t'])}/userinfo"
    r = requests.get(url, timeout=10)
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    r = requests.get(url, headers={"Authorization": "Bearer junk"}, timeout=10)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers.get("WWW-Authenticate", "")


def test_id_token_is_not_an_access_token(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    r = requests.get(f"{env.issuer(realm['t'])}/userinfo",
                     headers={"Authorization": f"Bearer {tok['id_token']}"}, timeout=10)
    assert r.status_code == 401


def test_tokens_of_tenant_a_are_refused_by_tenant_b(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    other = env.tenant()
    r = requests.get(f"{env.issuer(other)}/userinfo", headers={"Authorization": f"Bearer {tok['access_token']}"},
                     timeout=10)
    assert r.status_code == 401


# -- refresh ---------------------------------------------------------------------------------------

def test_refresh_only_with_offline_access(env: Env, realm: dict[str, Any]) -> None:
    assert "refresh_token" not in login(env, realm, scope="openid email")
    assert login(env, realm, scope="openid offline_access")["refresh_token"]


def test_refresh_rotation_and_reuse_detection(env: Env, realm: dict[str, Any]) -> None:
    t, app = realm["t"], realm["app"]
    first = login(env, realm, scope="openid email offline_access")
    r1 = env.token(t, app, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert r1.status_code == 200, r1.text
    second = r1.json()
    assert second["refresh_token"] and second["refresh_token"] != first["refresh_token"]   # rotated
    assert second["access_token"]
    if "id_token" in second:
        claims = env.decode_id_token(t, second["id_token"])
        assert claims["tenant"] == t and claims["connection"] == "okta" and claims["idp"] == realm["idp"].entity_id
    assert introspect(env, realm, second["access_token"])["active"] is True
    # reuse of the rotated-out token: refused and the whole family is revoked
    reuse = env.token(t, app, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    after = env.token(t, app, {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert introspect(env, realm, second["access_token"])["active"] is False
    events = env.audit(t, "?type=token&outcome=failure")
    assert events and events[0]["type"] == "token" and events[0]["reason"]


def test_refresh_token_bound_to_client(env: Env, realm: dict[str, Any]) -> None:
    first = login(env, realm, scope="openid offline_access")
    other = env.app(realm["t"], name="other2")
    r = env.token(realm["t"], other, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_refresh_scope_cannot_grow(env: Env, realm: dict[str, Any]) -> None:
    first = login(env, realm, scope="openid offline_access")
    r = env.token(realm["t"], realm["app"], {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                             "scope": "openid offline_access email"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


# -- introspect / revoke ---------------------------------------------------------------------------

def test_introspection(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, scope="openid email offline_access")
    info = introspect(env, realm, tok["access_token"])
    assert info["active"] is True and info["client_id"] == realm["app"]["client_id"]
    assert info["iss"] == env.issuer(realm["t"]) and info["sub"] and info["exp"] > 0
    assert set(info["scope"].split()) == {"openid", "email", "offline_access"}
    assert introspect(env, realm, tok["refresh_token"])["active"] is True
    assert introspect(env, realm, "garbage") == {"active": False}
    r = requests.post(f"{env.issuer(realm['t'])}/introspect", data={"token": tok["access_token"]}, timeout=10)
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client", (r.status_code, r.text)


def test_revoke_access_token(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    app = realm["app"]
    r = requests.post(f"{env.issuer(realm['t'])}/revoke", data={"token": tok["access_token"]},
                      auth=(app["client_id"], app["client_secret"]), timeout=10)
    assert r.status_code == 200
    assert introspect(env, realm, tok["access_token"])["active"] is False
    r = requests.get(f"{env.issuer(realm['t'])}/userinfo",
                     headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10)
    assert r.status_code == 401


def test_revoke_refresh_token(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm, scope="openid offline_access")
    app = realm["app"]
    r = requests.post(f"{env.issuer(realm['t'])}/revoke",
                      data={"token": tok["refresh_token"], "token_type_hint": "refresh_token"},
                      auth=(app["client_id"], app["client_secret"]), timeout=10)
    assert r.status_code == 200
    again = env.token(realm["t"], app, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_revoke_unknown_token_is_200(env: Env, realm: dict[str, Any]) -> None:
    app = realm["app"]
    r = requests.post(f"{env.issuer(realm['t'])}/revoke", data={"token": "nope"},
                      auth=(app["client_id"], app["client_secret"]), timeout=10)
    assert r.status_code == 200


def test_revoke_needs_client_auth(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    r = requests.post(f"{env.issuer(realm['t'])}/revoke", data={"token": tok["access_token"]}, timeout=10)
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
    assert introspect(env, realm, tok["access_token"])["active"] is True


# -- logout ----------------------------------------------------------------------------------------

def test_logout_without_redirect_shows_page(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(f"{env.issuer(realm['t'])}/logout", allow_redirects=False, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")


def test_logout_redirects_to_registered_uri_with_state(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    r = requests.get(f"{env.issuer(realm['t'])}/logout", params={
        "id_token_hint": tok["id_token"], "post_logout_redirect_uri": LOGOUT_URI, "state": "bye1"},
        allow_redirects=False, timeout=10)
    assert r.status_code == 302
    assert r.headers["Location"].startswith(LOGOUT_URI) and query_of(r.headers["Location"])["state"] == "bye1"


def test_logout_with_client_id_and_registered_uri(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(f"{env.issuer(realm['t'])}/logout", params={
        "client_id": realm["app"]["client_id"], "post_logout_redirect_uri": LOGOUT_URI},
        allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith(LOGOUT_URI)


def test_logout_refuses_unregistered_redirect(env: Env, realm: dict[str, Any]) -> None:
    tok = login(env, realm)
    r = requests.get(f"{env.issuer(realm['t'])}/logout", params={
        "id_token_hint": tok["id_token"], "post_logout_redirect_uri": "https://evil.test/"},
        allow_redirects=False, timeout=10)
    assert 400 <= r.status_code < 500 and "Location" not in r.headers


def test_logout_ends_broker_session(env: Env, realm: dict[str, Any]) -> None:
    t, app, idp = realm["t"], realm["app"], realm["idp"]
    browser = requests.Session()
    answer = env.saml_login(browser, env.authorize_url(t, app, connection="okta"), idp)
    assert answer.status_code == 302 and "code=" in answer.headers["Location"]
    # single sign-on: the browser session answers without going upstream
    sso = browser.get(env.authorize_url(t, app, connection="okta", state="sso1"), allow_redirects=False, timeout=10)
    assert sso.status_code == 302 and sso.headers["Location"].startswith(REDIRECT_URI)
    assert query_of(sso.headers["Location"])["state"] == "sso1"
    browser.get(f"{env.issuer(t)}/logout", allow_redirects=False, timeout=10)
    silent = browser.get(env.authorize_url(t, app, connection="okta", prompt="none", state="sso2"),
                         allow_redirects=False, timeout=10)
    assert silent.status_code == 302 and query_of(silent.headers["Location"])["error"] == "login_required"


# -- signing keys ----------------------------------------------------------------------------------

def _kid(jwt: str) -> str:
    part = jwt.split(".")[0]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return str(header["kid"])


def test_staged_rotation_signs_with_the_new_key_only_from_its_time(env: Env) -> None:
    """Over HTTP with real logins: a key rotated with activate_after is in the JWKS at once while tokens are
    still signed with the current key; from its time on it signs, and the previous key stays published."""
    import time

    t = env.tenant()
    idp = env.idp()
    env.saml_connection(t, idp, slug="okta", domains=["acme.test"])
    realm = {"t": t, "idp": idp, "app": env.app(t)}
    first = _kid(login(env, realm)["id_token"])

    staged = env.api("POST", f"/tenants/{t}/keys/rotate", {"activate_after": 3600}).json()
    assert staged["active_kid"] == first and staged["next_kid"] != first
    jwks = {k["kid"] for k in requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]}
    assert jwks == {first, staged["next_kid"]}
    tok = login(env, realm)
    assert _kid(tok["id_token"]) == first and _kid(tok["access_token"]) == first

    # a second staged rotation, due sooner, takes over from the first one, whose key then never signs
    soon = env.api("POST", f"/tenants/{t}/keys/rotate", {"activate_after": 2}).json()
    time.sleep(max(0.0, datetime.fromisoformat(soon["activates_at"]).timestamp() - time.time()) + 0.2)
    tok = login(env, realm)
    assert _kid(tok["id_token"]) == soon["next_kid"] and _kid(tok["access_token"]) == soon["next_kid"]
    assert env.decode_id_token(t, tok["id_token"])["aud"] == realm["app"]["client_id"]
    jwks = {k["kid"] for k in requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]}
    assert jwks == {first, staged["next_kid"], soon["next_kid"]}, "the replaced keys stay published for a day"


def test_a_revoked_key_s_tokens_are_refused_at_once(env: Env) -> None:
    """A signing key that leaked: rotate at once, revoke it; over HTTP its access token is refused at userinfo
    and introspection and its kid leaves the JWKS, while logins go on with the new key."""
    t = env.tenant()
    idp = env.idp()
    env.saml_connection(t, idp, slug="okta", domains=["acme.test"])
    realm = {"t": t, "idp": idp, "app": env.app(t)}
    before = login(env, realm)
    old = _kid(before["id_token"])
    bearer = {"Authorization": f"Bearer {before['access_token']}"}
    assert requests.get(f"{env.issuer(t)}/userinfo", headers=bearer, timeout=10).status_code == 200

    new = env.api("POST", f"/tenants/{t}/keys/rotate").json()["active_kid"]
    assert requests.get(f"{env.issuer(t)}/userinfo", headers=bearer, timeout=10).status_code == 200, \
        "rotation alone leaves it trusted"
    r = env.api("POST", f"/tenants/{t}/keys/{old}/revoke")
    assert r.status_code == 200, r.text
    assert requests.get(f"{env.issuer(t)}/userinfo", headers=bearer, timeout=10).status_code == 401
    assert introspect(env, realm, before["access_token"]) == {"active": False}
    assert {k["kid"] for k in requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]} == {new}
    after = login(env, realm)
    assert _kid(after["id_token"]) == new and introspect(env, realm, after["access_token"])["active"] is True
    # the app's ID token from before still signs its user out (read as no hint: nothing forged with the leaked
    # key could do more), and starts a login rather than an invalid_request
    r = requests.get(f"{env.issuer(t)}/logout", params={"id_token_hint": before["id_token"]}, timeout=10,
                     allow_redirects=False)
    assert r.status_code == 200, r.text[:300]
    r = requests.get(env.authorize_url(t, realm["app"], id_token_hint=before["id_token"], connection="okta"),
                     timeout=10, allow_redirects=False)
    assert r.status_code in (200, 302) and "error=" not in r.headers.get("Location", ""), r.headers

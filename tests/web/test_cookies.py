"""Browser cookies: the login-binding cookie set at /authorize and the broker session cookie set after login.

SPEC/broker.web.cookies: on https the binding cookie is `SameSite=None; Secure; HttpOnly` (it must survive
the IdP's cross-site POST to the ACS); on plain-http development it is `SameSite=Lax`. The session cookie
is HttpOnly, SameSite=Lax, Secure on https, scoped to the tenant's path /t/<tenant>/.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree

from broker.web.cookies import BINDING_COOKIE, SESSION_COOKIE
from tests.conftest import BOOTSTRAP_KEY, close_app, make_env
from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding
from tests.support.saml_idp import SamlIdp, query_of

REDIRECT_URI = "https://app.acme.test/cb"
ENTITY_ID = "https://idp.cookies.test/metadata"
SAML_NS = "{urn:oasis:names:tc:SAML:2.0:assertion}"


@dataclass
class Cookie:
    name: str
    value: str
    attrs: dict[str, str]  # lowercased attribute name -> value ("" for flags)

    def has(self, flag: str) -> bool:
        return flag.lower() in self.attrs


def set_cookies(resp: Any) -> dict[str, Cookie]:
    out: dict[str, Cookie] = {}
    for header in resp.headers.getlist("Set-Cookie"):
        first, *rest = [p.strip() for p in header.split(";")]
        name, _, value = first.partition("=")
        attrs = {}
        for part in rest:
            k, _, v = part.partition("=")
            attrs[k.strip().lower()] = v.strip()
        out[name] = Cookie(name, value, attrs)
    return out


@dataclass
class Env:
    app: Flask
    client: FlaskClient
    base_url: str
    app_client: dict[str, Any]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.open(f"/admin/v1{path}", method=method, json=body, base_url=self.base_url,
                                headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})

    def authorize(self, state: str = "st") -> Any:
        q = urlencode({"response_type": "code", "client_id": self.app_client["client_id"],
                       "redirect_uri": REDIRECT_URI, "scope": "openid email profile", "state": state,
                       "connection": "idp"})
        return self.client.get(f"/t/acme/authorize?{q}", base_url=self.base_url)

    def acs(self, authorize_response: Any) -> Any:
        assert authorize_response.status_code == 302, authorize_response.data[:300]
        params = query_of(authorize_response.headers["Location"])
        root = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLRequest"]), -15))  # noqa: S320
        response = build_response(make_idp(ENTITY_ID), acs_url=root.get("AssertionConsumerServiceURL"),
                                  audience=root.find(f"{SAML_NS}Issuer").text, in_response_to=root.get("ID"),
                                  name_id="alice@acme.test",
                                  attributes={"email": ["alice@acme.test"], "firstName": ["Alice"]})
        return self.client.post("/t/acme/connections/idp/saml/acs", base_url=self.base_url,
                                data={"SAMLResponse": to_post_binding(response), "RelayState": params["RelayState"]})


def _env(sqlite_url: str, public_url: str) -> Iterator[Env]:
    from broker.app import create_app
    from broker.settings import load_settings

    app = create_app(load_settings(make_env(sqlite_url, BROKER_PUBLIC_URL=public_url)))
    e = Env(app=app, client=app.test_client(), base_url=public_url, app_client={})
    assert e.admin("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
    metadata = SamlIdp(idp=make_idp(ENTITY_ID), url="https://idp.cookies.test").metadata_xml()
    r = e.admin("POST", "/tenants/acme/connections", {
        "slug": "idp", "protocol": "saml", "domains": ["acme.test"], "mapping": {"preset": "okta", "rules": []},
        "saml": {"metadata_xml": metadata}})
    assert r.status_code == 201, r.get_json()
    a = e.admin("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    assert a.status_code == 201
    e.app_client = a.get_json()
    yield e
    close_app(app)


@pytest.fixture
def https(sqlite_url: str) -> Iterator[Env]:
    yield from _env(sqlite_url, "https://broker.test")


@pytest.fixture
def http(sqlite_url: str) -> Iterator[Env]:
    yield from _env(sqlite_url, "http://broker.test")


# --- the login-binding cookie ---------------------------------------------------------------------


HOST_BINDING = "__Host-" + BINDING_COOKIE
HOST_SESSION = f"__Host-{SESSION_COOKIE}-acme"


def test_binding_cookie_on_https_is_samesite_none_secure_httponly(https: Env) -> None:
    """`__Host-`: the browser takes it only from this host, Secure, Path=/, no Domain, so a sibling subdomain
    cannot plant a binding value of its own (login CSRF)."""
    r = https.authorize()
    assert r.status_code == 302
    cookies = set_cookies(r)
    assert BINDING_COOKIE not in cookies
    c = cookies[HOST_BINDING]
    assert c.value and len(c.value) >= 32
    assert c.attrs.get("samesite", "").lower() == "none"
    assert c.has("secure") and c.has("httponly")
    assert c.attrs.get("path") == "/"


def test_binding_cookie_on_plain_http_dev_is_samesite_lax(http: Env) -> None:
    r = http.authorize()
    assert r.status_code == 302
    c = set_cookies(r)[BINDING_COOKIE]
    assert c.attrs.get("samesite", "").lower() == "lax"
    assert c.has("httponly") and not c.has("secure")


def test_binding_cookie_is_kept_across_logins_of_the_same_browser(https: Env) -> None:
    first = set_cookies(https.authorize("a"))[HOST_BINDING]
    again = https.authorize("b")
    assert again.status_code == 302
    assert HOST_BINDING not in set_cookies(again)  # not reset: two tabs can log in at once
    assert first.value


def test_binding_cookie_value_is_not_the_relay_state(https: Env) -> None:
    r = https.authorize()
    c = set_cookies(r)[HOST_BINDING]
    relay_state = query_of(r.headers["Location"])["RelayState"]
    assert c.value != relay_state and c.value not in r.headers["Location"]


# --- the session cookie ---------------------------------------------------------------------------


def test_session_cookie_on_https_is_httponly_lax_secure_and_tenant_scoped(https: Env) -> None:
    """`__Host-` (no planted sessions from a sibling subdomain) requires Path=/: the tenant is in the name."""
    r = https.acs(https.authorize())
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.headers.get("Location")
    c = set_cookies(r)[HOST_SESSION]
    assert c.value
    assert c.has("httponly") and c.has("secure")
    assert c.attrs.get("samesite", "").lower() == "lax"
    assert c.attrs.get("path") == "/" and "domain" not in c.attrs


def test_session_cookie_on_plain_http_dev_is_httponly_lax_not_secure(http: Env) -> None:
    r = http.acs(http.authorize())
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"])
    c = set_cookies(r)[SESSION_COOKIE]
    assert c.has("httponly") and not c.has("secure")
    assert c.attrs.get("samesite", "").lower() == "lax"
    assert c.attrs.get("path") == "/t/acme/"


def test_session_cookie_gives_single_sign_on_and_logout_clears_it(https: Env) -> None:
    login = https.acs(https.authorize())
    assert HOST_SESSION in set_cookies(login)
    sso = https.authorize("again")
    assert sso.status_code == 302 and sso.headers["Location"].startswith(REDIRECT_URI)
    assert "code" in query_of(sso.headers["Location"])

    out = https.client.get("/t/acme/logout", base_url=https.base_url)
    cleared = set_cookies(out)[HOST_SESSION]
    assert cleared.value == "" and cleared.attrs.get("path") == "/" and cleared.has("secure")
    assert cleared.attrs.get("max-age") == "0" or "1970" in cleared.attrs.get("expires", "")


def test_signing_in_again_in_the_same_browser_ends_the_session_it_replaces(https: Env) -> None:
    """prompt=login, or a session the app wants refreshed: the new session's cookie replaces the old one, and
    the old session, which nothing could reach any more, is deleted rather than left in the store."""
    from broker.login import SESSION_PREFIX

    state = https.app.extensions["broker"].state
    first = set_cookies(https.acs(https.authorize()))[HOST_SESSION].value
    assert state.get(SESSION_PREFIX + first) is not None
    q = urlencode({"response_type": "code", "client_id": https.app_client["client_id"], "redirect_uri": REDIRECT_URI,
                   "scope": "openid", "state": "again", "connection": "idp", "prompt": "login"})
    second = set_cookies(https.acs(https.client.get(f"/t/acme/authorize?{q}", base_url=https.base_url)))
    new = second[HOST_SESSION].value
    assert new != first and state.get(SESSION_PREFIX + new) is not None
    assert state.get(SESSION_PREFIX + first) is None


def test_a_session_cookie_without_the_host_prefix_is_not_read_on_https(https: Env) -> None:
    """What a sibling subdomain can set (no __Host- prefix, a Domain or a tenant path) never gives SSO."""
    login = https.acs(https.authorize())
    planted = set_cookies(login)[HOST_SESSION].value
    https.client.delete_cookie(HOST_SESSION, path="/", domain="broker.test")
    https.client.set_cookie(SESSION_COOKIE, planted, path="/t/acme/", domain="broker.test")
    r = https.authorize("planted")
    assert r.status_code == 302 and not r.headers["Location"].startswith(REDIRECT_URI)  # off to the IdP

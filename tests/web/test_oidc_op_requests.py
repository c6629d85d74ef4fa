"""The downstream OP's HTTP surface, for what it checks before the issuer sees a request, and what browsers
need of it:

- RFC 6749 §3.1/§3.2: "Request and response parameters MUST NOT be included more than once." A repeated
  single-valued parameter is refused: at /authorize with an error page when client_id or redirect_uri is the
  repeated one (never a redirect to an unverified URI), else with an `invalid_request` redirect to the app; at
  the token, introspection and revocation endpoints with a 400 `invalid_request` (RFC 6749 §5.2), and the
  request changes nothing (a code stays redeemable).
- CORS: the token and revocation endpoints answer browsers (public clients with PKCE, i.e. SPAs) with
  `Access-Control-Allow-Origin: *` and a preflight; never with credentials.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from werkzeug.datastructures import MultiDict

from tests.conftest import BOOTSTRAP_KEY, close_app, make_env
from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding
from tests.support.saml_idp import SamlIdp, query_of

REDIRECT_URI = "https://app.acme.test/cb"
SPA_REDIRECT_URI = "https://spa.acme.test/callback"
SPA_ORIGIN = "https://spa.acme.test"
ENTITY_ID = "https://idp.acme.test/metadata"
SAML_NS = "{urn:oasis:names:tc:SAML:2.0:assertion}"
VERIFIER = "v" * 43 + "-the-pkce-verifier"


@dataclass
class Env:
    app: Flask
    client: FlaskClient
    web: dict[str, Any]  # confidential app: client_id, client_secret
    spa: dict[str, Any]  # public app (PKCE)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.open(f"/admin/v1{path}", method=method, json=body,
                                headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})

    def authorize_params(self, **extra: str) -> list[tuple[str, str]]:
        q = {"response_type": "code", "client_id": self.web["client_id"], "redirect_uri": REDIRECT_URI,
             "scope": "openid email", "state": "st", "connection": "idp", **extra}
        return list(q.items())

    def authorize(self, params: list[tuple[str, str]]) -> Any:
        return self.client.get(f"/t/acme/authorize?{urlencode(params)}")

    def login_code(self, *, spa: bool = False) -> str:
        """A real login through the SAML connection; the authorization code it ends with."""
        if spa:
            challenge = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
            params = self.authorize_params(client_id=self.spa["client_id"], redirect_uri=SPA_REDIRECT_URI,
                                           scope="openid email offline_access", code_challenge=challenge,
                                           code_challenge_method="S256")
        else:
            params = self.authorize_params()
        r = self.authorize(params)
        assert r.status_code == 302, r.data[:300]
        query = query_of(r.headers["Location"])
        root = etree.fromstring(zlib.decompress(base64.b64decode(query["SAMLRequest"]), -15))  # noqa: S320
        response = build_response(make_idp(ENTITY_ID), acs_url=root.get("AssertionConsumerServiceURL"),
                                  audience=root.find(f"{SAML_NS}Issuer").text, in_response_to=root.get("ID"),
                                  name_id="alice@acme.test", attributes={"email": ["alice@acme.test"]})
        r = self.client.post("/t/acme/connections/idp/saml/acs",
                             data={"SAMLResponse": to_post_binding(response), "RelayState": query["RelayState"]})
        assert r.status_code == 302, r.data[:300]
        return query_of(r.headers["Location"])["code"]

    def basic(self) -> dict[str, str]:
        creds = base64.b64encode(f"{self.web['client_id']}:{self.web['client_secret']}".encode()).decode()
        return {"Authorization": f"Basic {creds}"}

    def post_form(self, path: str, fields: list[tuple[str, str]], headers: dict[str, str] | None = None) -> Any:
        return self.client.post(f"/t/acme/{path}", data=urlencode(fields), headers=headers or {},
                                content_type="application/x-www-form-urlencoded")


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    from broker.app import create_app
    from broker.settings import load_settings

    app = create_app(load_settings(make_env(database_url)))
    e = Env(app=app, client=app.test_client(), web={}, spa={})
    assert e.admin("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
    metadata = SamlIdp(idp=make_idp(ENTITY_ID), url="https://idp.acme.test").metadata_xml()
    r = e.admin("POST", "/tenants/acme/connections", {
        "slug": "idp", "protocol": "saml", "domains": ["acme.test"], "mapping": {"preset": "okta", "rules": []},
        "saml": {"metadata_xml": metadata}})
    assert r.status_code == 201, r.get_json()
    web = e.admin("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    spa = e.admin("POST", "/tenants/acme/apps", {"name": "SPA", "redirect_uris": [SPA_REDIRECT_URI], "public": True})
    assert web.status_code == 201 and spa.status_code == 201, (web.get_json(), spa.get_json())
    e.web, e.spa = web.get_json(), spa.get_json()
    yield e
    close_app(app)


def _oauth_400(r: Any, *names: str) -> None:
    """The RFC 6749 §5.2 answer with the headers of every token-endpoint error."""
    assert r.status_code == 400, r.data[:300]
    body = r.get_json()
    assert body["error"] == "invalid_request"
    assert all(n in body["error_description"] for n in names), body
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
    assert r.mimetype == "application/json"


# --- /authorize: repeated parameters ----------------------------------------------------------------


@pytest.mark.parametrize("second", [REDIRECT_URI, "https://evil.test/cb"], ids=["same", "other"])
def test_repeated_redirect_uri_is_an_error_page_not_a_redirect(env: Env, second: str) -> None:
    r = env.authorize([*env.authorize_params(), ("redirect_uri", second)])
    assert r.status_code == 400 and "Location" not in r.headers
    assert b"<html" in r.data.lower() and b"redirect_uri" in r.data


def test_repeated_client_id_is_an_error_page_not_a_redirect(env: Env) -> None:
    r = env.authorize([*env.authorize_params(), ("client_id", env.spa["client_id"])])
    assert r.status_code == 400 and "Location" not in r.headers
    assert b"client_id" in r.data


@pytest.mark.parametrize(("name", "value"), [
    ("response_type", "code"), ("scope", "openid profile"), ("nonce", "n2"), ("prompt", "login"),
    ("max_age", "0"), ("login_hint", "bob@acme.test"), ("connection", "other"), ("response_mode", "query"),
    ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"), ("code_challenge_method", "S256"),
])
def test_repeated_parameter_is_an_invalid_request_redirect_to_the_app(env: Env, name: str, value: str) -> None:
    params = env.authorize_params()
    if name.startswith("code_challenge"):  # a valid pair, then one of them again
        params += [("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"), ("code_challenge_method", "S256")]
    if name not in dict(params):
        params.append((name, value))
    params.append((name, value))  # the same value twice is a repeat too
    r = env.authorize(params)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI + "?"), r.headers.get("Location")
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and name in q["error_description"]
    assert q["state"] == "st" and q["iss"] == "http://broker.test/t/acme" and "code" not in q


def test_repeated_state_is_refused_without_echoing_a_state(env: Env) -> None:
    r = env.authorize([*env.authorize_params(), ("state", "other")])
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT_URI + "?")
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and "state" in q["error_description"] and "state" not in q


def test_repeated_parameter_wins_over_other_errors_of_a_valid_client(env: Env) -> None:
    params = [*env.authorize_params(response_type="token"), ("scope", "openid")]
    q = query_of(env.authorize(params).headers["Location"])
    assert q["error"] == "invalid_request" and "scope" in q["error_description"]


def test_repeated_parameter_with_an_unregistered_redirect_uri_is_an_error_page(env: Env) -> None:
    r = env.authorize([*env.authorize_params(redirect_uri="https://evil.test/cb"), ("scope", "openid")])
    assert r.status_code == 400 and "Location" not in r.headers


def test_empty_repeat_counts_as_a_repeat(env: Env) -> None:
    r = env.authorize([*env.authorize_params(), ("nonce", ""), ("nonce", "n")])
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


# --- token, introspection, revocation: repeated parameters ------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("code", "another-code"), ("grant_type", "refresh_token"), ("redirect_uri", "https://evil.test/cb"),
    ("client_id", "someone-else"), ("code_verifier", VERIFIER),
])
def test_token_request_with_a_repeated_parameter_is_refused_and_changes_nothing(env: Env, name: str,
                                                                                value: str) -> None:
    code = env.login_code()
    fields = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT_URI),
              ("client_id", env.web["client_id"]), ("code_verifier", VERIFIER)]
    r = env.post_form("token", [*fields, (name, value)], env.basic())
    _oauth_400(r, name)
    # the code was not redeemed (nor burnt): the same request without the repeat gets tokens
    ok = env.post_form("token", [("grant_type", "authorization_code"), ("code", code),
                                 ("redirect_uri", REDIRECT_URI)], env.basic())
    assert ok.status_code == 200, ok.get_json()


def test_token_request_with_a_repeated_client_secret_is_refused(env: Env) -> None:
    fields = [("grant_type", "authorization_code"), ("code", "c"), ("redirect_uri", REDIRECT_URI),
              ("client_id", env.web["client_id"]), ("client_secret", env.web["client_secret"]),
              ("client_secret", "guess")]
    _oauth_400(env.post_form("token", fields), "client_secret")


@pytest.mark.parametrize("endpoint", ["introspect", "revoke"])
@pytest.mark.parametrize("name", ["token", "token_type_hint"])
def test_introspect_and_revoke_with_a_repeated_parameter_are_refused(env: Env, endpoint: str, name: str) -> None:
    fields = [("token", "t1"), ("token_type_hint", "access_token"), (name, "refresh_token")]
    _oauth_400(env.post_form(endpoint, fields, env.basic()), name)
    event = env.admin("GET", "/tenants/acme/audit?type=token&outcome=failure").get_json()["events"][0]
    assert event["reason"] == "invalid_request"
    assert event["details"]["endpoint"] == endpoint and event["details"]["repeated"] == [name]


# --- CORS for browser-based public clients ----------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["token", "revoke"])
def test_cors_preflight(env: Env, endpoint: str) -> None:
    r = env.client.options(f"/t/acme/{endpoint}", headers={
        "Origin": SPA_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert [m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")] == ["POST"]
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_a_browser_app_may_read_why_userinfo_refused_its_token(env: Env) -> None:
    r = env.client.get("/t/acme/userinfo", headers={"Origin": SPA_ORIGIN, "Authorization": "Bearer nope"})
    assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Expose-Headers"] == "WWW-Authenticate"


def test_userinfo_preflight_admits_a_bearer_token_by_get_and_post(env: Env) -> None:
    """A browser app sends its access token in Authorization, which makes the browser preflight first."""
    r = env.client.options("/t/acme/userinfo", headers={
        "Origin": SPA_ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")} == {"GET", "POST"}
    assert "authorization" in {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert "Access-Control-Allow-Credentials" not in r.headers
    refused = env.client.get("/t/acme/userinfo", headers={"Origin": SPA_ORIGIN, "Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"


def test_spa_redeems_its_code_and_revokes_its_token_across_origins(env: Env) -> None:
    code = env.login_code(spa=True)
    origin = {"Origin": SPA_ORIGIN}
    r = env.post_form("token", [("grant_type", "authorization_code"), ("code", code),
                                ("redirect_uri", SPA_REDIRECT_URI), ("client_id", env.spa["client_id"]),
                                ("code_verifier", VERIFIER)], origin)
    assert r.status_code == 200, r.get_json()
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers
    refresh = r.get_json()["refresh_token"]
    r = env.post_form("revoke", [("token", refresh), ("token_type_hint", "refresh_token"),
                                 ("client_id", env.spa["client_id"])], origin)
    assert r.status_code == 200, r.data[:300]
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_token_errors_are_readable_by_the_browser_too(env: Env) -> None:
    r = env.post_form("token", [("grant_type", "authorization_code"), ("code", "nope"),
                                ("redirect_uri", SPA_REDIRECT_URI), ("client_id", env.spa["client_id"]),
                                ("code_verifier", VERIFIER)], {"Origin": SPA_ORIGIN})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    repeated = env.post_form("token", [("grant_type", "authorization_code"), ("grant_type", "refresh_token")])
    assert repeated.headers["Access-Control-Allow-Origin"] == "*"


def test_unknown_tenant_token_error_is_readable_by_the_browser(env: Env) -> None:
    r = env.client.post("/t/nobody/token", data={"grant_type": "authorization_code"}, headers={"Origin": SPA_ORIGIN})
    assert r.status_code == 404 and r.headers["Access-Control-Allow-Origin"] == "*"


def test_introspection_is_not_opened_to_browsers(env: Env) -> None:
    """Introspection is for resource servers, with the client's secret: no CORS there."""
    r = env.post_form("introspect", [("token", "t1")], {**env.basic(), "Origin": SPA_ORIGIN})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


# --- OIDC Core §3.1.2.1: the authorization endpoint takes GET and POST; so does RP-initiated logout ---------


def test_authorize_by_post_starts_the_same_login(env: Env) -> None:
    r = env.client.post("/t/acme/authorize", data=dict(env.authorize_params()))
    assert r.status_code == 302, r.data[:300]
    assert "SAMLRequest=" in r.headers["Location"]
    repeated = env.client.post("/t/acme/authorize", data=MultiDict(env.authorize_params() + [("scope", "openid")]))
    assert repeated.status_code == 302 and query_of(repeated.headers["Location"])["error"] == "invalid_request"
    as_json = env.client.post("/t/acme/authorize", json=dict(env.authorize_params()))
    assert as_json.status_code == 400 and b"application/x-www-form-urlencoded" in as_json.data


def test_logout_by_post(env: Env) -> None:
    r = env.client.post("/t/acme/logout", data={})
    assert r.status_code == 200 and b"signed out" in r.data


def test_refused_authorization_requests_are_audited(env: Env) -> None:
    """SPEC: every rejected login gets an audit event with the reason, also when it is refused before any
    upstream login: an unknown client (error page) and a bad parameter (error redirect)."""
    assert env.authorize(env.authorize_params(client_id="nobody")).status_code == 400
    r = env.authorize(env.authorize_params(code_challenge_method="plain", code_challenge="x" * 43))
    assert r.status_code == 302 and "error=" in r.headers["Location"]
    events = env.admin("GET", "/tenants/acme/audit?type=login&outcome=failure").get_json()["events"]
    assert [(e["app"], bool(e["reason"])) for e in events[:2]] == [(env.web["client_id"], True), ("nobody", True)]


@pytest.mark.parametrize(("target", "source"), [
    ("https://App.Example.com:8443/bye?x=1", " https://app.example.com:8443"),
    ("http://127.0.0.1:9000/bye", " http://127.0.0.1:9000"),
    ("https://[::1]:8443/bye", " https://[::1]:8443"),
    ("com.example.app:/logout", " com.example.app:"),
    (None, ""),
    ("", ""),
    ("javascript:alert(1)", ""),
    ("https://a.example;script-src *", ""),  # never more than one source
    ("https://a.example, *", ""),
])
def test_the_logout_forms_csp_lets_its_redirect_reach_only_the_registered_target(
    target: str | None, source: str
) -> None:
    from broker.web.oidc_op import _form_action_source

    assert _form_action_source(target) == source


def test_repeated_params_names_each_repeated_single_valued_parameter_once_in_a_fixed_order() -> None:
    from werkzeug.datastructures import MultiDict

    from broker.web.oidc_op import SINGLE_VALUED, repeated_params

    values = MultiDict([("state", "a"), ("resource", "x"), ("resource", "y"), ("client_id", "c"), ("state", "b"),
                        ("state", "c"), ("scope", "openid"), ("client_id", "c")])
    assert repeated_params(values) == ["client_id", "state"]  # SINGLE_VALUED's order; `resource` may repeat
    assert repeated_params(MultiDict([(name, "v") for name in SINGLE_VALUED])) == []
    assert repeated_params(MultiDict([(name, "v") for name in SINGLE_VALUED] * 2)) == list(SINGLE_VALUED)

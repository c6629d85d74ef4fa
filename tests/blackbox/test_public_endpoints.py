"""SPEC "Public endpoints": discovery, JWKS, authorize (connection selection, PKCE), SP metadata, health."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from cryptography import x509
from lxml import etree

from tests.blackbox.conftest import MD, REDIRECT_URI, SAMLP, Env, pkce_pair, query_of, uniq
from tests.support.saml_idp import SamlIdp

pytestmark = pytest.mark.slow

UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"


@pytest.fixture(scope="module")
def realm(env: Env) -> dict[str, Any]:
    t = env.tenant()
    idp_a, idp_b = env.idp(), env.idp()
    env.saml_connection(t, idp_a, slug="alpha", domains=["alpha.test"])
    env.saml_connection(t, idp_b, slug="beta", domains=["beta.test", "Mixed.Example"])
    app = env.app(t)
    public = env.app(t, name="spa", public=True)
    return {"t": t, "app": app, "public": public, "idp_a": idp_a, "idp_b": idp_b}


# -- discovery and JWKS ----------------------------------------------------------------------------

def test_discovery_document(env: Env, realm: dict[str, Any]) -> None:
    iss = env.issuer(realm["t"])
    r = requests.get(f"{iss}/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    d = r.json()
    assert d["issuer"] == iss
    expected = {"authorization_endpoint": "/authorize", "token_endpoint": "/token", "userinfo_endpoint": "/userinfo",
                "jwks_uri": "/jwks", "introspection_endpoint": "/introspect", "revocation_endpoint": "/revoke",
                "end_session_endpoint": "/logout"}
    for field, path in expected.items():
        assert d[field] == iss + path, field
    # OIDC Discovery + RFC 8414 fields
    assert d["response_types_supported"] == ["code"]
    assert "public" in d["subject_types_supported"]
    assert "RS256" in d["id_token_signing_alg_values_supported"]
    assert set(d["scopes_supported"]) >= {"openid", "profile", "email", "groups", "offline_access"}
    assert set(d["grant_types_supported"]) >= {"authorization_code", "refresh_token"}
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert set(d["token_endpoint_auth_methods_supported"]) >= {"client_secret_basic", "none"}
    assert "response_modes_supported" in d
    assert d["revocation_endpoint_auth_methods_supported"]
    assert d["introspection_endpoint_auth_methods_supported"]
    assert set(d["claims_supported"]) >= {"sub", "email", "groups", "tenant", "connection", "idp"}


def test_rfc8414_well_known_path(env: Env, realm: dict[str, Any]) -> None:
    iss = env.issuer(realm["t"])
    r = requests.get(f"{iss}/.well-known/oauth-authorization-server", timeout=10)
    assert r.status_code == 200 and r.json()["issuer"] == iss


def test_unknown_tenant_endpoints_are_404(env: Env) -> None:
    for path in ("/.well-known/openid-configuration", "/jwks", "/authorize"):
        assert requests.get(f"{env.url}/t/no-such-tenant-x{path}", timeout=10).status_code == 404


def test_jwks(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(f"{env.issuer(realm['t'])}/jwks", timeout=10)
    assert r.status_code == 200
    # a rotation signs with the new key at once: caches may not hold the set without it for long
    assert r.headers["Cache-Control"] == "public, max-age=60"
    keys = r.json()["keys"]
    assert keys
    for k in keys:
        assert k["kid"] and k["kty"] in ("RSA", "EC") and k.get("use", "sig") == "sig"
        assert "d" not in k and "p" not in k and "q" not in k  # public only
        if k["kty"] == "RSA":
            assert k["alg"] == "RS256"


def test_tenants_have_distinct_keys(env: Env, realm: dict[str, Any]) -> None:
    other = env.tenant()
    a = {k["kid"] for k in requests.get(f"{env.issuer(realm['t'])}/jwks", timeout=10).json()["keys"]}
    b = {k["kid"] for k in requests.get(f"{env.issuer(other)}/jwks", timeout=10).json()["keys"]}
    assert not a & b


# -- health ----------------------------------------------------------------------------------------

def test_health_ready_metrics(env: Env) -> None:
    assert requests.get(f"{env.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{env.url}/readyz", timeout=10).status_code == 200
    r = requests.get(f"{env.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert re.search(r"^# TYPE \w+ (counter|gauge|histogram|summary)", r.text, re.M)


# -- authorize: connection selection ---------------------------------------------------------------

def _sso_target(env: Env, url: str) -> str:
    r = requests.get(url, allow_redirects=False, timeout=10)
    assert r.status_code in (200, 302), (r.status_code, r.text[:300])
    if r.status_code == 302:
        return r.headers["Location"].split("?", 1)[0]
    m = re.search(r'<form[^>]*action="([^"]+)"', r.text)
    assert m and "SAMLRequest" in r.text, r.text[:300]
    return m.group(1)


def test_connection_parameter_selects(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], connection="beta")
    assert _sso_target(env, url) == realm["idp_b"].sso_url


def test_connection_parameter_wins_over_login_hint(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], connection="beta", login_hint="bob@alpha.test")
    assert _sso_target(env, url) == realm["idp_b"].sso_url


def test_login_hint_domain_selects(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], login_hint="bob@alpha.test")
    assert _sso_target(env, url) == realm["idp_a"].sso_url


def test_login_hint_domain_is_case_insensitive(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], login_hint="Bob@BETA.Test")
    assert _sso_target(env, url) == realm["idp_b"].sso_url


def test_configured_domain_with_capitals_matches(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], login_hint="bob@mixed.example")
    assert _sso_target(env, url) == realm["idp_b"].sso_url


def test_no_hint_shows_email_page_that_keeps_the_request(env: Env, realm: dict[str, Any]) -> None:
    url = env.authorize_url(realm["t"], realm["app"], state="keep-me")
    r = requests.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'name="login_hint"' in r.text
    assert "keep-me" in r.text and realm["app"]["client_id"] in r.text
    # submitting the form (GET back to authorize with login_hint) goes upstream
    assert _sso_target(env, url + "&login_hint=carol%40alpha.test") == realm["idp_a"].sso_url


def test_unknown_domain_shows_email_page_again(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(env.authorize_url(realm["t"], realm["app"], login_hint="x@unknown.test"),
                     allow_redirects=False, timeout=10)
    assert r.status_code == 200 and 'name="login_hint"' in r.text


def test_unknown_connection_is_error_to_app(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(env.authorize_url(realm["t"], realm["app"], connection="nope", state="s9"),
                     allow_redirects=False, timeout=10)
    assert r.status_code in (302, 400)
    if r.status_code == 302:
        q = query_of(r.headers["Location"])
        assert r.headers["Location"].startswith(REDIRECT_URI) and q["error"] and q["state"] == "s9"


# -- authorize: request validation -----------------------------------------------------------------

def test_unregistered_redirect_uri_is_not_redirected(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(env.authorize_url(realm["t"], realm["app"], redirect_uri="https://evil.test/cb",
                                       connection="alpha"), allow_redirects=False, timeout=10)
    assert 400 <= r.status_code < 500 and "Location" not in r.headers


def test_unknown_client_is_not_redirected(env: Env, realm: dict[str, Any]) -> None:
    r = requests.get(env.authorize_url(realm["t"], {"client_id": "nope"}, connection="alpha"),
                     allow_redirects=False, timeout=10)
    assert 400 <= r.status_code < 500 and "Location" not in r.headers


def _error_redirect(env: Env, url: str) -> dict[str, str]:
    r = requests.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    assert r.headers["Location"].startswith(REDIRECT_URI + "?")
    return query_of(r.headers["Location"])


def test_pkce_plain_is_refused(env: Env, realm: dict[str, Any]) -> None:
    _, challenge = pkce_pair()
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["app"], connection="alpha", state="p1",
                                               code_challenge=challenge, code_challenge_method="plain"))
    assert q["error"] == "invalid_request" and q["state"] == "p1"


def test_pkce_challenge_without_method_is_refused(env: Env, realm: dict[str, Any]) -> None:
    _, challenge = pkce_pair()
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["app"], connection="alpha", state="p2",
                                               code_challenge=challenge))
    assert q["error"] == "invalid_request" and q["state"] == "p2"


def test_public_client_requires_pkce(env: Env, realm: dict[str, Any]) -> None:
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["public"], connection="alpha", state="p3"))
    assert q["error"] == "invalid_request" and q["state"] == "p3"


def test_confidential_client_may_skip_pkce(env: Env, realm: dict[str, Any]) -> None:
    assert _sso_target(env, env.authorize_url(realm["t"], realm["app"], connection="alpha")) == realm["idp_a"].sso_url


def test_scope_not_allowed_is_invalid_scope(env: Env, realm: dict[str, Any]) -> None:
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["app"], connection="alpha", state="p4",
                                               scope="openid admin"))
    assert q["error"] == "invalid_scope" and q["state"] == "p4"


def test_response_type_token_is_refused(env: Env, realm: dict[str, Any]) -> None:
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["app"], connection="alpha", state="p5",
                                               response_type="token"))
    assert q["error"] == "unsupported_response_type" and q["state"] == "p5"


def test_prompt_none_without_session_is_login_required(env: Env, realm: dict[str, Any]) -> None:
    q = _error_redirect(env, env.authorize_url(realm["t"], realm["app"], connection="alpha", state="p6",
                                               prompt="none"))
    assert q["error"] == "login_required" and q["state"] == "p6"


# -- SP metadata -----------------------------------------------------------------------------------

def test_sp_metadata_contents(env: Env, realm: dict[str, Any]) -> None:
    t = realm["t"]
    url = f"{env.issuer(t)}/connections/alpha/saml/metadata"
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0] in ("application/samlmetadata+xml", "application/xml")
    root = etree.fromstring(r.content)
    assert root.get("entityID") == url
    sp = root.find(f"{{{MD}}}SPSSODescriptor")
    assert sp is not None
    assert sp.get("AuthnRequestsSigned") in ("true", "false")
    assert sp.get("WantAssertionsSigned") == "true"
    acs = sp.findall(f"{{{MD}}}AssertionConsumerService")
    assert [a.get("Location") for a in acs] == [f"{env.issuer(t)}/connections/alpha/saml/acs"]
    assert acs[0].get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    uses = {}
    for kd in sp.findall(f"{{{MD}}}KeyDescriptor"):
        cert_b64 = kd.findtext(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
        assert cert_b64
        cert = x509.load_der_x509_certificate(base64.b64decode("".join(cert_b64.split())))
        uses[kd.get("use")] = cert
    assert set(uses) >= {"signing", "encryption"}


def test_sp_metadata_custom_entity_id(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/connections", {"slug": "c", "protocol": "saml",
                                                       "saml": {"sp_entity_id": "urn:acme:sp"}})
    assert r.status_code == 201, r.text
    root = etree.fromstring(requests.get(f"{env.issuer(t)}/connections/c/saml/metadata", timeout=10).content)
    assert root.get("entityID") == "urn:acme:sp"


def test_sp_metadata_unknown_connection_404(env: Env, realm: dict[str, Any]) -> None:
    assert requests.get(f"{env.issuer(realm['t'])}/connections/nope/saml/metadata", timeout=10).status_code == 404


def test_sp_metadata_signing_flag_follows_setting(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/connections", {"slug": "c", "protocol": "saml",
                                                       "saml": {"sign_authn_requests": True}})
    assert r.status_code == 201, r.text
    root = etree.fromstring(requests.get(f"{env.issuer(t)}/connections/c/saml/metadata", timeout=10).content)
    assert root.find(f"{{{MD}}}SPSSODescriptor").get("AuthnRequestsSigned") == "true"


# -- AuthnRequest ----------------------------------------------------------------------------------

def _authn_request(env: Env, t: str, app: dict[str, Any], conn: str) -> etree._Element:
    return env.saml_start(requests.Session(), env.authorize_url(t, app, connection=conn)).xml


def test_authn_request_defaults(env: Env, realm: dict[str, Any]) -> None:
    t = realm["t"]
    xml = _authn_request(env, t, realm["app"], "alpha")
    assert xml.get("AssertionConsumerServiceURL") == f"{env.issuer(t)}/connections/alpha/saml/acs"
    assert xml.findtext("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer") == \
        f"{env.issuer(t)}/connections/alpha/saml/metadata"
    policy = xml.find(f"{{{SAMLP}}}NameIDPolicy")
    assert policy is not None and policy.get("Format") == UNSPECIFIED


def test_authn_request_uses_configured_name_id_format(env: Env) -> None:
    t = env.tenant()
    idp: SamlIdp = env.idp()
    fmt = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    env.saml_connection(t, idp, slug="p", saml={"name_id_format": fmt})
    app = env.app(t)
    policy = _authn_request(env, t, app, "p").find(f"{{{SAMLP}}}NameIDPolicy")
    assert policy is not None and policy.get("Format") == fmt


def test_saml_connection_without_metadata_cannot_login(env: Env) -> None:
    t = env.tenant()
    env.saml_connection(t, None, slug="empty")
    app = env.app(t)
    r = requests.get(env.authorize_url(t, app, connection="empty", state="nm"), allow_redirects=False, timeout=10)
    assert r.status_code != 200 and r.status_code < 500, r.status_code
    if r.status_code == 302:
        q = query_of(r.headers["Location"])
        assert q.get("error") and q.get("state") == "nm"


def test_authorize_form_is_get_only_query_encoded(env: Env, realm: dict[str, Any]) -> None:
    # an openid-client style URL with everything url-encoded works
    params = {"response_type": "code", "client_id": realm["app"]["client_id"], "redirect_uri": REDIRECT_URI,
              "scope": "openid email", "state": uniq("s"), "login_hint": "dave@alpha.test"}
    assert _sso_target(env, f"{env.issuer(realm['t'])}/authorize?{urlencode(params)}") == realm["idp_a"].sso_url



def test_rfc8414_path_inserted_well_known_location(env: Env, realm: dict[str, Any]) -> None:
    """RFC 8414 §3.1: {host}/.well-known/oauth-authorization-server{issuer path}."""
    iss = env.issuer(realm["t"])
    r = requests.get(f"{env.url}/.well-known/oauth-authorization-server/t/{realm['t']}", timeout=10)
    assert r.status_code == 200 and r.json()["issuer"] == iss

"""The SAML side of the browser surface, where uploaded IdP metadata and oversized posts meet it:

- a SingleSignOnService Location that is not an http(s) URL (`javascript:`…) never becomes the action of the
  self-submitting form /authorize serves (the metadata parser drops it; the page's CSP allows only http(s)
  form targets);
- a SAML POST over BROKER_MAX_SAML_BYTES gets 413 and, like every refused login, a login failure audit event.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.conftest import BOOTSTRAP_KEY, close_app, make_env
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp, query_of

REDIRECT_URI = "https://app.acme.test/cb"
IDP_URL = "https://idp.acme.test"
SSO_URL = f"{IDP_URL}/sso"  # SamlIdp publishes it for both the HTTP-Redirect and the HTTP-POST binding
EVIL = "javascript:alert(document.domain)//"
MAX_SAML_BYTES = 4096


@dataclass
class Env:
    app: Flask
    client: FlaskClient
    app_client: dict[str, Any]

    def admin(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", **kw.pop("headers", {})}
        return self.client.open(f"/admin/v1{path}", method=method, json=body, headers=headers, **kw)

    def connection(self, slug: str, metadata: str, **saml: Any) -> None:
        r = self.admin("POST", "/tenants/acme/connections", {
            "slug": slug, "protocol": "saml", "domains": [f"{slug}.acme.test"],
            "mapping": {"preset": "okta", "rules": []}, "saml": {"metadata_xml": metadata, **saml}})
        assert r.status_code == 201, r.get_json()

    def authorize(self, connection: str) -> Any:
        q = urlencode({"response_type": "code", "client_id": self.app_client["client_id"],
                       "redirect_uri": REDIRECT_URI, "scope": "openid email", "state": "st",
                       "connection": connection})
        return self.client.get(f"/t/acme/authorize?{q}")

    def login_failures(self) -> list[dict[str, Any]]:
        r = self.admin("GET", "/tenants/acme/audit?type=login&outcome=failure")
        assert r.status_code == 200
        events: list[dict[str, Any]] = r.get_json()["events"]
        return events


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    from broker.app import create_app
    from broker.settings import load_settings

    app = create_app(load_settings(make_env(database_url, BROKER_MAX_SAML_BYTES=str(MAX_SAML_BYTES))))
    e = Env(app=app, client=app.test_client(), app_client={})
    assert e.admin("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
    a = e.admin("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    assert a.status_code == 201
    e.app_client = a.get_json()
    e.connection("okta", _metadata())
    yield e
    close_app(app)


def _metadata(*, redirect: str = SSO_URL, post: str = SSO_URL) -> str:
    xml = SamlIdp(idp=make_idp("https://idp.acme.test/metadata"), url=IDP_URL).metadata_xml()
    redirect_binding = 'Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
    post_binding = 'Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
    assert f'{redirect_binding}Location="{SSO_URL}"' in xml and f'{post_binding}Location="{SSO_URL}"' in xml
    return (xml.replace(f'{redirect_binding}Location="{SSO_URL}"', f'{redirect_binding}Location="{redirect}"')
               .replace(f'{post_binding}Location="{SSO_URL}"', f'{post_binding}Location="{post}"'))


# --- SingleSignOnService Locations ------------------------------------------------------------------


def test_metadata_upload_reports_a_javascript_location_as_ignored(env: Env) -> None:
    env.connection("evil", _metadata(redirect=f"{IDP_URL}/other"))
    r = env.admin("PUT", "/tenants/acme/connections/evil/metadata", data=_metadata(redirect=EVIL, post=EVIL),
                  headers={"Content-Type": "application/xml"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["sso"] == []
    codes = [w.split(":", 1)[0] for w in body["warnings"]]
    assert codes.count("endpoint_location_invalid") == 2 and "no_sso_endpoint" in codes


@pytest.mark.parametrize("binding", ["post", "redirect"])
def test_authorize_never_serves_a_javascript_form_action(env: Env, binding: str) -> None:
    env.connection("evil", _metadata(redirect=EVIL, post=EVIL), authn_request_binding=binding)
    r = env.authorize("evil")
    assert b"javascript:" not in r.data.lower()
    # no usable login endpoint: the app hears of it like any connection that is not ready
    assert r.status_code == 302, r.data[:300]
    assert r.headers["Location"].startswith(REDIRECT_URI)
    assert query_of(r.headers["Location"])["error"] == "access_denied"
    assert env.login_failures()[0]["reason"] == "saml_connection_not_ready"


def test_post_binding_falls_back_to_the_usable_redirect_endpoint(env: Env) -> None:
    env.connection("evil", _metadata(post=EVIL), authn_request_binding="post")
    r = env.authorize("evil")
    assert r.status_code == 302, r.data[:300]
    assert r.headers["Location"].startswith(f"{SSO_URL}?SAMLRequest=")
    assert b"javascript:" not in r.data.lower()


def test_post_binding_page_allows_only_http_form_targets(env: Env) -> None:
    env.connection("post", _metadata(), authn_request_binding="post")
    r = env.authorize("post")
    assert r.status_code == 200 and f'action="{SSO_URL}"'.encode() in r.data
    directives = {d.split()[0]: d.split()[1:] for d in r.headers["Content-Security-Policy"].split(";")}
    assert directives["form-action"] == ["https:", "http:"]
    assert "*" not in r.headers["Content-Security-Policy"]
    # never framed (a framed auto-post would sign the user in inside another site's page), and the SAML
    # message's page leaves no Referer
    assert directives["frame-ancestors"] == ["'none'"] and r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"


# --- oversized SAML posts -----------------------------------------------------------------------------


def _oversized() -> dict[str, str]:
    return {"SAMLResponse": "A" * (MAX_SAML_BYTES + 1), "RelayState": "r"}


def test_oversized_post_is_413_and_audited_as_a_failed_login(env: Env) -> None:
    r = env.client.post("/t/acme/connections/okta/saml/acs", data=_oversized())
    assert r.status_code == 413
    assert b"saml_response_too_large" in r.data
    event = env.login_failures()[0]
    assert event["type"] == "login" and event["outcome"] == "failure"
    assert event["reason"] == "saml_response_too_large"
    assert event["tenant"] == "acme" and event["connection"] == "okta" and event["app"] is None
    assert "A" * 100 not in str(event)  # nothing of the body is recorded


def test_oversized_post_to_an_unknown_connection_is_audited_under_the_tenant(env: Env) -> None:
    r = env.client.post("/t/acme/connections/nope/saml/acs", data=_oversized())
    assert r.status_code == 413
    event = env.login_failures()[0]
    assert event["reason"] == "saml_response_too_large"
    assert event["tenant"] == "acme" and event["connection"] is None


def test_oversized_post_to_an_unknown_tenant_is_413(env: Env) -> None:
    r = env.client.post("/t/nobody/connections/okta/saml/acs", data=_oversized())
    assert r.status_code == 413
    assert env.login_failures() == []


@pytest.mark.parametrize("size", [MAX_SAML_BYTES + 1, 64 * 1024], ids=["over_limit", "over_max_content_length"])
def test_oversized_chunked_post_is_413_and_audited(env: Env, size: int) -> None:
    """No Content-Length (chunked transfer, which the WSGI server ends: wsgi.input_terminated): the body is read
    up to the app's MAX_CONTENT_LENGTH, where werkzeug silently cuts it off; either way the same 413 and audit."""
    env.app.config["MAX_CONTENT_LENGTH"] = 16 * 1024
    body = urlencode({"SAMLResponse": "A" * size}).encode()
    environ = EnvironBuilder(path="/t/acme/connections/okta/saml/acs", method="POST", input_stream=io.BytesIO(body),
                             content_type="application/x-www-form-urlencoded").get_environ()
    del environ["CONTENT_LENGTH"]  # the test client would put it back: call the WSGI app directly
    environ["wsgi.input_terminated"] = True
    _, status, _ = run_wsgi_app(env.app, environ, buffered=True)
    assert status.startswith("413 ")
    event = env.login_failures()[0]
    assert event["reason"] == "saml_response_too_large" and event["connection"] == "okta"

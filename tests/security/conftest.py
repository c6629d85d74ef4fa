"""A broker app with two tenants, each with a SAML connection to its own IdP (the same entityID in both:
SPEC allows that), plus a helper that plays the browser up to the IdP and returns the pending request."""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree

from tests.conftest import BOOTSTRAP_KEY, close_app, make_env
from tests.samlxml.idp_fixtures import Idp, make_idp, to_post_binding
from tests.support.saml_idp import SamlIdp, query_of

PUBLIC = "http://broker.test"
REDIRECT_URI = "https://app.acme.test/cb"
SHARED_ENTITY_ID = "https://idp.shared.test/metadata"


@dataclass
class Pending:
    request_id: str
    relay_state: str
    acs_url: str
    audience: str
    location: str = ""  # the redirect to the IdP that carried the request


@dataclass
class OffsetClock:
    """The real time, moved by `offset` seconds when a test needs the broker to be later than it is."""

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class Setup:
    client: FlaskClient
    app: Flask
    idp_a: Idp
    idp_b: Idp
    apps: dict[str, dict[str, Any]]
    clock: OffsetClock

    def admin(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.open(f"/admin/v1{path}", method=method, json=body,
                                headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}, **kw)

    def begin(self, tenant: str = "acme", conn: str = "okta", state: str = "st", *, prompt: str | None = "login",
              max_age: int | None = None) -> Pending:
        app = self.apps[tenant]
        params = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI,
                  "scope": "openid email profile", "state": state, "connection": conn}
        if prompt is not None:
            params["prompt"] = prompt
        if max_age is not None:
            params["max_age"] = str(max_age)
        r = self.client.get(f"/t/{tenant}/authorize?{urlencode(params)}")
        assert r.status_code == 302, r.data[:300]
        return self.pending(r.headers["Location"])

    @staticmethod
    def authn_request(location: str) -> Any:
        """The AuthnRequest element of an HTTP-Redirect binding URL."""
        xml = zlib.decompress(base64.b64decode(query_of(location)["SAMLRequest"]), -15)
        return etree.fromstring(xml)  # noqa: S320 - our own AuthnRequest in a test

    def pending(self, location: str) -> Pending:
        """The pending SAML request of a redirect to the IdP (HTTP-Redirect binding)."""
        root = self.authn_request(location)
        return Pending(request_id=root.get("ID"), relay_state=query_of(location)["RelayState"],
                       acs_url=root.get("AssertionConsumerServiceURL"),
                       audience=root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer").text, location=location)

    def post(self, tenant: str, conn: str, response: bytes | str, relay_state: str | None) -> Any:
        body = {"SAMLResponse": response if isinstance(response, str) else to_post_binding(response)}
        if relay_state is not None:
            body["RelayState"] = relay_state
        return self.client.post(f"/t/{tenant}/connections/{conn}/saml/acs", data=body)

    def tokens(self, code: str, tenant: str = "acme", client: dict[str, Any] | None = None) -> dict[str, Any]:
        """Redeem `code` with the tenant's app (or `client`): the token response."""
        app = client or self.apps[tenant]
        basic = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode()).decode()
        r = self.client.post(f"/t/{tenant}/token", data={"grant_type": "authorization_code", "code": code,
                                                         "redirect_uri": REDIRECT_URI},
                             headers={"Authorization": f"Basic {basic}"})
        assert r.status_code == 200, r.get_json()
        out: dict[str, Any] = r.get_json()
        return out

    def id_token_claims(self, code: str, tenant: str = "acme") -> dict[str, Any]:
        """Redeem `code` and return the ID token's claims (not verified: a test reads them)."""
        return decode_claims(self.tokens(code, tenant)["id_token"])

    def failures(self, tenant: str = "acme") -> list[dict[str, Any]]:
        r = self.admin("GET", f"/tenants/{tenant}/audit?type=login&outcome=failure")
        events: list[dict[str, Any]] = r.get_json()["events"]
        return events


def decode_claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _metadata(idp: Idp) -> str:
    return SamlIdp(idp=idp, url="https://idp.shared.test").metadata_xml()


@pytest.fixture
def sec(sqlite_url: str) -> Iterator[Setup]:
    from broker.app import create_app
    from broker.settings import load_settings

    clock = OffsetClock()
    app = create_app(load_settings(make_env(sqlite_url)), clock=clock)
    client = app.test_client()
    idp_a = make_idp(SHARED_ENTITY_ID)
    idp_b = make_idp(SHARED_ENTITY_ID, key_type="ec")
    setup = Setup(client=client, app=app, idp_a=idp_a, idp_b=idp_b, apps={}, clock=clock)
    for tenant, idp in (("acme", idp_a), ("globex", idp_b)):
        assert setup.admin("POST", "/tenants", {"slug": tenant, "name": tenant}).status_code == 201
        r = setup.admin("POST", f"/tenants/{tenant}/connections", {
            "slug": "okta", "protocol": "saml", "domains": [f"{tenant}.test"],
            "mapping": {"preset": "okta", "rules": []}, "saml": {"metadata_xml": _metadata(idp)}})
        assert r.status_code == 201, r.get_json()
        a = setup.admin("POST", f"/tenants/{tenant}/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
        setup.apps[tenant] = a.get_json()
    yield setup
    close_app(app)

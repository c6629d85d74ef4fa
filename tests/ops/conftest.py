"""Fixtures and helpers for operations tests: real `broker serve` processes on PostgreSQL and Redis.

PostgreSQL comes from TEST_DATABASE_URL (a fresh schema per test module, dropped afterwards) and Redis from
TEST_REDIS_URL; tests skip with the reason when either is not configured. Fault tests start throwaway
servers of their own (tests/support/throwaway.py) and never stop the shared ones.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.support.broker_server import BrokerServer
from tests.support.saml_idp import SamlIdp, parse_autopost, query_of

REDIRECT_URI = "https://app.acme.test/callback"


@pytest.fixture(scope="module")
def ops_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema for this module (skips without TEST_DATABASE_URL)."""
    base: str = request.getfixturevalue("pg_url")
    schema = f"ops_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@dataclass
class Tenant:
    slug: str
    client_id: str
    client_secret: str
    connection: str = "okta"

    def issuer(self, public_url: str) -> str:
        return f"{public_url}/t/{self.slug}"


def setup_saml_tenant(broker: BrokerServer, idp: SamlIdp, slug: str | None = None,
                      domains: tuple[str, ...] = ("acme.test",)) -> Tenant:
    """A tenant with one SAML connection `okta` trusting `idp`, and one confidential app."""
    slug = slug or f"t{uuid.uuid4().hex[:8]}"
    r = broker.api("POST", "/tenants", {"slug": slug, "name": slug.title()})
    assert r.status_code == 201, r.text
    r = broker.api("POST", f"/tenants/{slug}/connections", {
        "slug": "okta", "protocol": "saml", "domains": list(domains), "mapping": {"preset": "okta", "rules": []},
    })
    assert r.status_code == 201, r.text
    r = broker.api("PUT", f"/tenants/{slug}/connections/okta/metadata", data=idp.metadata_xml().encode(),
                   headers={"Content-Type": "application/samlmetadata+xml"})
    assert r.status_code == 200, r.text
    app = broker.api("POST", f"/tenants/{slug}/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    assert app.status_code == 201, app.text
    return Tenant(slug=slug, client_id=app.json()["client_id"], client_secret=app.json()["client_secret"])


def authorize_url(base: str, tenant: Tenant, state: str, *, scope: str = "openid profile email groups",
                  **extra: str) -> str:
    params = {"response_type": "code", "client_id": tenant.client_id, "redirect_uri": REDIRECT_URI,
              "scope": scope, "state": state, "nonce": f"n-{state}", **extra}
    if "login_hint" not in extra and "connection" not in extra:
        params["connection"] = tenant.connection
    return f"{base}/t/{tenant.slug}/authorize?{urlencode(params)}"


def on(base: str, url: str) -> str:
    """`url` (built on the shared public URL) re-pointed at one replica's own base URL."""
    scheme_host = url.split("/t/", 1)
    assert len(scheme_host) == 2, url
    return f"{base}/t/{scheme_host[1]}"


def begin_login(session: requests.Session, url: str) -> tuple[str, dict[str, str]]:
    """Browser: authorize -> IdP. Returns the IdP's auto-POST (ACS URL, fields) without posting it."""
    r = session.get(url, allow_redirects=False, timeout=30)
    if r.status_code == 302:
        r = session.get(r.headers["Location"], allow_redirects=False, timeout=30)
    elif r.status_code == 200 and "SAMLRequest" in r.text:
        action, fields = parse_autopost(r.text)
        r = session.post(action, data=fields, allow_redirects=False, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return parse_autopost(r.text)


def post_acs(session: requests.Session, base: str, action: str, fields: dict[str, str]) -> requests.Response:
    return session.post(on(base, action), data=fields, allow_redirects=False, timeout=30)


def code_of(acs_answer: requests.Response) -> str:
    assert acs_answer.status_code == 302, (acs_answer.status_code, acs_answer.text[:500])
    q = query_of(acs_answer.headers["Location"])
    assert "code" in q, q
    return q["code"]


def redeem(base: str, tenant: Tenant, code: str) -> requests.Response:
    return requests.post(f"{base}/t/{tenant.slug}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
    }, auth=(tenant.client_id, tenant.client_secret), timeout=30)


def full_login(session: requests.Session, base: str, tenant: Tenant, state: str = "s") -> str:
    """A whole browser login against one server; returns the authorization code."""
    action, fields = begin_login(session, authorize_url(base, tenant, state))
    return code_of(post_acs(session, base, action, fields))


def jwt_header(token: str) -> dict[str, Any]:
    import json

    head = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


def jwt_claims(token: str) -> dict[str, Any]:
    import json

    body = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))

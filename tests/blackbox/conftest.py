"""Black-box fixtures: a real broker (`python -m broker serve`) on loopback, independent SAML IdPs, and
helpers that only speak HTTP to the broker (admin API, OIDC endpoints, SAML ACS)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from lxml import etree

from tests.samlxml.idp_fixtures import build_response, to_post_binding
from tests.support.broker_server import BrokerServer, running_broker
from tests.support.saml_idp import SamlIdp, parse_autopost, running_saml_idp

REDIRECT_URI = "https://app.blackbox.test/cb"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def assert_error_shape(r: requests.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers.get("Content-Type")
    body: dict[str, Any] = r.json()
    assert set(body) >= {"error", "message", "details"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    assert "Traceback" not in r.text
    if code is not None:
        assert body["error"] == code, body
    return body


@dataclass
class SamlStart:
    """What the broker sent to the IdP: the AuthnRequest (parsed) and the RelayState."""

    xml: etree._Element
    request_id: str
    acs_url: str
    issuer: str
    relay_state: str | None
    sso_url: str


class Env:
    def __init__(self, broker: BrokerServer, stack: ExitStack) -> None:
        self.broker = broker
        self.url = broker.url
        self._stack = stack

    # -- admin ----------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.broker.api(method, path, body, **kw)

    def tenant(self, slug: str | None = None) -> str:
        slug = slug or uniq("t")
        r = self.api("POST", "/tenants", {"slug": slug, "name": slug.title()})
        assert r.status_code == 201, r.text
        return slug

    def idp(self, entity_id: str | None = None) -> SamlIdp:
        return self._stack.enter_context(running_saml_idp(entity_id))

    def saml_connection(self, tenant: str, idp: SamlIdp | None, *, slug: str | None = None,
                        domains: list[str] | None = None, preset: str = "okta",
                        rules: list[dict[str, Any]] | None = None, saml: dict[str, Any] | None = None,
                        **extra: Any) -> str:
        slug = slug or uniq("c")
        saml_settings = dict(saml or {})
        if idp is not None:
            saml_settings.setdefault("metadata_xml", idp.metadata_xml())
        body: dict[str, Any] = {"slug": slug, "protocol": "saml", "domains": domains or [],
                                "mapping": {"preset": preset, "rules": rules or []}, "saml": saml_settings, **extra}
        r = self.api("POST", f"/tenants/{tenant}/connections", body)
        assert r.status_code == 201, r.text
        return slug

    def app(self, tenant: str, **kw: Any) -> dict[str, Any]:
        body = {"name": "App", "redirect_uris": [REDIRECT_URI], **kw}
        r = self.api("POST", f"/tenants/{tenant}/apps", body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def audit(self, tenant: str, query: str = "") -> list[dict[str, Any]]:
        r = self.api("GET", f"/tenants/{tenant}/audit{query}")
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()["events"]
        return events

    # -- OIDC -----------------------------------------------------------------------------------

    def issuer(self, tenant: str) -> str:
        return f"{self.url}/t/{tenant}"

    def authorize_url(self, tenant: str, app: dict[str, Any], **params: str) -> str:
        q = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI,
             "scope": "openid email profile groups", "state": uniq("st"), "nonce": uniq("n"), **params}
        q = {k: v for k, v in q.items() if v is not None}
        return f"{self.issuer(tenant)}/authorize?{urlencode(q)}"

    def token(self, tenant: str, app: dict[str, Any], data: dict[str, str], *, basic: bool = True) -> requests.Response:
        kw: dict[str, Any] = {}
        data = dict(data)
        if app.get("client_secret") and basic:
            kw["auth"] = (app["client_id"], app["client_secret"])
        elif app.get("client_secret"):
            data.update(client_id=app["client_id"], client_secret=app["client_secret"])
        else:
            data["client_id"] = app["client_id"]
        return requests.post(f"{self.issuer(tenant)}/token", data=data, timeout=15, **kw)

    # -- SAML -----------------------------------------------------------------------------------

    def saml_start(self, session: requests.Session, authorize_url: str) -> SamlStart:
        """authorize -> (302 or auto-POST) towards the IdP; returns the AuthnRequest without calling the IdP."""
        r = session.get(authorize_url, allow_redirects=False, timeout=15)
        if r.status_code == 302:
            loc = r.headers["Location"]
            q = query_of(loc)
            assert "SAMLRequest" in q, loc
            xml = zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15)
            relay = q.get("RelayState")
            sso = loc.split("?", 1)[0]
        else:
            assert r.status_code == 200 and "SAMLRequest" in r.text, (r.status_code, r.text[:400])
            sso, fields = parse_autopost(r.text)
            xml = base64.b64decode(fields["SAMLRequest"])
            relay = fields.get("RelayState")
        root = etree.fromstring(xml)
        issuer = root.find(f"{{{SAML}}}Issuer")
        return SamlStart(xml=root, request_id=root.get("ID", ""), acs_url=root.get("AssertionConsumerServiceURL", ""),
                         issuer=issuer.text if issuer is not None else "", relay_state=relay, sso_url=sso)

    def post_acs(self, session: requests.Session, acs_url: str, xml: bytes, relay: str | None = None,
                 **extra: str) -> requests.Response:
        data = {"SAMLResponse": to_post_binding(xml), **extra}
        if relay is not None:
            data["RelayState"] = relay
        return session.post(acs_url, data=data, allow_redirects=False, timeout=15)

    def saml_login(self, session: requests.Session, authorize_url: str, idp: SamlIdp,
                   **overrides: Any) -> requests.Response:
        """Full browser login through `idp`; `overrides` go to build_response. Returns the ACS answer."""
        start = self.saml_start(session, authorize_url)
        kwargs: dict[str, Any] = {"acs_url": start.acs_url, "audience": start.issuer,
                                  "in_response_to": start.request_id, "name_id": idp.user.name_id,
                                  "attributes": idp.user.attributes, "style": idp.user.style}
        kwargs.update(overrides)
        xml = build_response(idp.idp, **kwargs)
        return self.post_acs(session, start.acs_url, xml, start.relay_state)

    def code_for(self, tenant: str, conn: str, app: dict[str, Any], idp: SamlIdp, *,
                 scope: str = "openid email profile groups", **params: str) -> tuple[str, dict[str, str]]:
        """A full login; returns (code, authorize params incl. code_verifier when PKCE used)."""
        verifier, challenge = pkce_pair()
        p = {"scope": scope, "connection": conn, "code_challenge": challenge, "code_challenge_method": "S256",
             "state": uniq("st"), "nonce": uniq("n"), **params}
        answer = self.saml_login(requests.Session(), self.authorize_url(tenant, app, **p), idp)
        assert answer.status_code == 302, (answer.status_code, answer.text[:500])
        q = query_of(answer.headers["Location"])
        assert "code" in q, answer.headers["Location"]
        assert q["state"] == p["state"]
        return q["code"], {**p, "code_verifier": verifier}

    def tokens_for(self, tenant: str, conn: str, app: dict[str, Any], idp: SamlIdp, **kw: Any) -> dict[str, Any]:
        code, p = self.code_for(tenant, conn, app, idp, **kw)
        r = self.token(tenant, app, {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                                     "code_verifier": p["code_verifier"]})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        out["_nonce"] = p["nonce"]
        return out

    def decode_id_token(self, tenant: str, token: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.jwk import KeySet

        jwks = KeySet.import_key_set(requests.get(f"{self.issuer(tenant)}/jwks", timeout=10).json())
        claims: dict[str, Any] = dict(jwt.decode(token, jwks).claims)
        return claims


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ExitStack() as stack:
        broker = stack.enter_context(running_broker(tmp_path_factory.mktemp("bb")))
        yield Env(broker, stack)

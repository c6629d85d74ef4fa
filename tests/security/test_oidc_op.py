"""Downstream invariants over HTTP: exact redirect_uri (never an open redirect), one-time codes bound to
client and PKCE, and tenant isolation of tokens."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.samlxml.idp_fixtures import build_response
from tests.security.conftest import REDIRECT_URI, Setup
from tests.support.saml_idp import query_of


def _authorize(sec: Setup, tenant: str = "acme", **params: str) -> Any:
    q = {"response_type": "code", "client_id": sec.apps[tenant]["client_id"], "redirect_uri": REDIRECT_URI,
         "scope": "openid email", "state": "xyz", "connection": "okta", **params}
    return sec.client.get(f"/t/{tenant}/authorize?{urlencode(q)}")


@pytest.mark.parametrize("uri", [
    REDIRECT_URI + "/extra", REDIRECT_URI + "x", "https://app.acme.test:8443/cb", REDIRECT_URI + "#frag",
    "https://evil.test/cb", REDIRECT_URI.upper(), REDIRECT_URI + "?next=https://evil.test",
])
def test_redirect_uri_variants_get_an_error_page_not_a_redirect(sec: Setup, uri: str) -> None:
    r = _authorize(sec, redirect_uri=uri)
    assert r.status_code == 400 and "Location" not in r.headers
    assert b"<html" in r.data.lower()


def test_plain_pkce_is_refused_with_a_redirect(sec: Setup) -> None:
    r = _authorize(sec, code_challenge="a" * 43, code_challenge_method="plain")
    assert r.status_code == 302
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


def _login_code(sec: Setup, tenant: str = "acme", verifier: str | None = None) -> str:
    extra = {}
    if verifier:
        digest = hashlib.sha256(verifier.encode()).digest()
        extra = {"code_challenge": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
                 "code_challenge_method": "S256"}
    p = sec.begin(tenant) if not extra else None
    if p is None:
        r = _authorize(sec, tenant, **extra)
        import zlib

        from lxml import etree
        params = query_of(r.headers["Location"])
        root = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLRequest"]), -15))  # noqa: S320
        from tests.security.conftest import Pending

        p = Pending(root.get("ID"), params["RelayState"], root.get("AssertionConsumerServiceURL"),
                    root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer").text)
    idp = sec.idp_a if tenant == "acme" else sec.idp_b
    sig = "rsa-sha256" if tenant == "acme" else "ecdsa-sha256"
    resp = build_response(idp, acs_url=p.acs_url, audience=p.audience, in_response_to=p.request_id,
                          name_id=f"alice@{tenant}.test", signature_algorithm=sig,
                          attributes={"email": [f"alice@{tenant}.test"]})
    r = sec.post(tenant, "okta", resp, p.relay_state)
    assert r.status_code == 302, r.data[:300]
    return query_of(r.headers["Location"])["code"]


def _token(sec: Setup, tenant: str, code: str, **extra: str) -> Any:
    app = sec.apps[tenant]
    basic = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode()).decode()
    return sec.client.post(f"/t/{tenant}/token", data={"grant_type": "authorization_code", "code": code,
                                                       "redirect_uri": REDIRECT_URI, **extra},
                           headers={"Authorization": f"Basic {basic}"})


def test_code_reuse_fails_and_revokes_first_tokens(sec: Setup) -> None:
    code = _login_code(sec)
    first = _token(sec, "acme", code)
    assert first.status_code == 200
    access = first.get_json()["access_token"]
    assert sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {access}"}).status_code == 200
    second = _token(sec, "acme", code)
    assert second.status_code == 400 and second.get_json()["error"] == "invalid_grant"
    assert sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {access}"}).status_code == 401


def test_wrong_pkce_verifier_is_refused(sec: Setup) -> None:
    code = _login_code(sec, verifier="v" * 50)
    r = _token(sec, "acme", code, code_verifier="w" * 50)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_code_of_tenant_a_is_refused_by_tenant_b(sec: Setup) -> None:
    code = _login_code(sec, "acme")
    r = _token(sec, "globex", code)
    assert r.status_code in (400, 401)
    assert "access_token" not in (r.get_json() or {})


def test_access_token_of_tenant_a_is_refused_by_tenant_b(sec: Setup) -> None:
    code = _login_code(sec, "acme")
    access = _token(sec, "acme", code).get_json()["access_token"]
    r = sec.client.get("/t/globex/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 401


def _id_token_sub(sec: Setup, tenant: str, code: str, client: dict[str, Any]) -> str:
    import json

    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    r = sec.client.post(f"/t/{tenant}/token", data={"grant_type": "authorization_code", "code": code,
                                                    "redirect_uri": REDIRECT_URI},
                        headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.get_json()
    payload = r.get_json()["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    sub: str = claims["sub"]
    info = sec.client.get(f"/t/{tenant}/userinfo", headers={"Authorization": f"Bearer {r.get_json()['access_token']}"})
    assert info.get_json()["sub"] == sub
    return sub


def test_pairwise_apps_see_different_subjects_for_the_same_user(sec: Setup) -> None:
    public_sub = _id_token_sub(sec, "acme", _login_code(sec), sec.apps["acme"])
    pairwise = sec.admin("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": [REDIRECT_URI],
                                                        "subject_type": "pairwise"}).get_json()
    assert pairwise["subject_type"] == "pairwise"
    sec.apps["acme"] = pairwise
    first = _id_token_sub(sec, "acme", _login_code(sec), pairwise)
    second = _id_token_sub(sec, "acme", _login_code(sec), pairwise)
    assert first == second != public_sub
    assert "pairwise" in sec.client.get("/t/acme/.well-known/openid-configuration").get_json()[
        "subject_types_supported"]

"""Downstream invariants over HTTP: exact redirect_uri (never an open redirect), one-time codes bound to
client and PKCE, and tenant isolation of tokens."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.samlxml.idp_fixtures import build_response
from tests.security.conftest import REDIRECT_URI, Setup, decode_claims
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


def _login_code(sec: Setup, tenant: str = "acme", verifier: str | None = None, scope: str | None = None) -> str:
    extra = {"scope": scope} if scope else {}
    if verifier:
        digest = hashlib.sha256(verifier.encode()).digest()
        extra |= {"code_challenge": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
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


def test_tenant_b_cannot_consume_or_revoke_a_code_of_tenant_a(sec: Setup) -> None:
    """Tenant isolation is more than refusing the code at B: B's token endpoint must not find A's code at all,
    so it neither uses it up nor (as a "reused" code) revokes the grant A issued for it."""
    unused = _login_code(sec, "acme")
    refused = _token(sec, "globex", unused)
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_grant"
    assert _token(sec, "acme", unused).status_code == 200  # still A's to redeem

    used = _login_code(sec, "acme")
    first = _token(sec, "acme", used)
    access = first.get_json()["access_token"]
    assert _token(sec, "globex", used).get_json()["error"] == "invalid_grant"
    assert sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {access}"}).status_code == 200
    assert _token(sec, "acme", used).get_json()["error"] == "invalid_grant"  # reuse at A still revokes
    assert sec.client.get("/t/acme/userinfo", headers={"Authorization": f"Bearer {access}"}).status_code == 401


def test_tenant_b_cannot_revoke_a_refresh_family_of_tenant_a(sec: Setup) -> None:
    first = _token(sec, "acme", _login_code(sec, "acme", scope="openid email offline_access")).get_json()

    def refresh(tenant: str, token: str) -> Any:  # as that tenant's own app
        app = sec.apps[tenant]
        basic = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode()).decode()
        return sec.client.post(f"/t/{tenant}/token", data={"grant_type": "refresh_token", "refresh_token": token},
                               headers={"Authorization": f"Basic {basic}"})

    rotated = refresh("acme", first["refresh_token"])
    assert rotated.status_code == 200, rotated.get_json()
    # A's rotated-away token presented at B: unknown there, and A's family is left alone
    assert refresh("globex", first["refresh_token"]).get_json()["error"] == "invalid_grant"
    again = refresh("acme", rotated.get_json()["refresh_token"])
    assert again.status_code == 200, again.get_json()
    # presented at A, the same old token is reuse, and ends the family
    assert refresh("acme", first["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert refresh("acme", again.get_json()["refresh_token"]).get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize("endpoint", ["token", "introspect", "revoke"])
@pytest.mark.parametrize("credentials", ["\xe2\x80\xae", "\xe9", "dXNlcjpwYXNz\xe9", "\xf0\x9f\x98\x80"])
def test_basic_credentials_that_are_not_ascii_are_invalid_client(sec: Setup, endpoint: str,
                                                                  credentials: str) -> None:
    # header bytes arrive as latin-1 characters (PEP 3333); these are not base64 at all
    r = sec.client.post(f"/t/acme/{endpoint}", data={"grant_type": "authorization_code", "code": "x", "token": "x"},
                        headers={"Authorization": "Basic " + credentials.encode().decode("unicode_escape")})
    assert r.status_code == 401, (r.status_code, r.data[:200])
    assert r.get_json()["error"] == "invalid_client" and r.headers["WWW-Authenticate"].startswith("Basic")


def test_access_token_of_tenant_a_is_refused_by_tenant_b(sec: Setup) -> None:
    code = _login_code(sec, "acme")
    access = _token(sec, "acme", code).get_json()["access_token"]
    r = sec.client.get("/t/globex/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 401


def _id_token_sub(sec: Setup, tenant: str, code: str, client: dict[str, Any]) -> str:
    tokens = sec.tokens(code, tenant, client)
    sub: str = decode_claims(tokens["id_token"])["sub"]
    info = sec.client.get(f"/t/{tenant}/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
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

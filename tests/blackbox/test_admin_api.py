"""SPEC "Admin API": status codes, error body shape, tenant-scoped keys, resources and defaults."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.blackbox.conftest import REDIRECT_URI, Env, assert_error_shape, uniq

pytestmark = pytest.mark.slow


def scoped(env: Env, key: str, method: str, path: str, body: Any = None) -> requests.Response:
    kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}, "timeout": 15}
    if body is not None:
        kw["json"] = body
    return requests.request(method, f"{env.url}/admin/v1{path}", **kw)


# -- authentication and error shape ----------------------------------------------------------------

def test_missing_and_wrong_admin_key_are_401_with_error_shape(env: Env) -> None:
    assert_error_shape(requests.get(f"{env.url}/admin/v1/tenants", timeout=10), 401)
    assert_error_shape(requests.get(f"{env.url}/admin/v1/tenants", headers={"Authorization": "Bearer nope"},
                                    timeout=10), 401)


def test_openapi_document_is_served(env: Env) -> None:
    r = requests.get(f"{env.url}/admin/v1/openapi.json", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert str(doc.get("openapi", "")).startswith("3")
    paths = doc["paths"]
    assert any(p.endswith("/tenants") for p in paths)
    assert any("connections" in p and p.endswith("/metadata") for p in paths)


def test_validation_errors_are_400_with_shape(env: Env) -> None:
    body = assert_error_shape(env.api("POST", "/tenants", {"slug": "Not A Slug!", "name": "x"}), 400)
    assert body["details"]
    assert_error_shape(env.api("POST", "/tenants", {"name": "no slug"}), 400)


def test_invalid_json_is_4xx_with_shape(env: Env) -> None:
    r = env.api("POST", "/tenants", data=b"{not json", headers={"Content-Type": "application/json"})
    assert_error_shape(r, (400, 415, 422))


def test_unknown_admin_route_is_json_404(env: Env) -> None:
    assert_error_shape(env.api("GET", "/no-such-resource"), 404)


def test_wrong_method_on_admin_route_is_json_4xx(env: Env) -> None:
    assert_error_shape(env.api("PUT", "/tenants"), (404, 405))


# -- tenants ---------------------------------------------------------------------------------------

def test_tenant_crud(env: Env) -> None:
    slug = uniq("acme")
    r = env.api("POST", "/tenants", {"slug": slug, "name": "Acme Corp"})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["slug"] == slug and t["name"] == "Acme Corp"
    assert t.get("issuer", f"{env.url}/t/{slug}") == f"{env.url}/t/{slug}"
    assert_error_shape(env.api("POST", "/tenants", {"slug": slug, "name": "again"}), 409)
    assert slug in [x["slug"] for x in env.api("GET", "/tenants").json()["tenants"]]
    assert env.api("GET", f"/tenants/{slug}").json()["name"] == "Acme Corp"
    r = env.api("PATCH", f"/tenants/{slug}", {"name": "Acme Renamed"})
    assert r.status_code == 200 and r.json()["name"] == "Acme Renamed"
    assert env.api("GET", f"/tenants/{slug}").json()["name"] == "Acme Renamed"
    r = env.api("DELETE", f"/tenants/{slug}")
    assert r.status_code in (200, 204)
    assert_error_shape(env.api("GET", f"/tenants/{slug}"), 404)
    assert requests.get(f"{env.url}/t/{slug}/.well-known/openid-configuration", timeout=10).status_code == 404


def test_unknown_tenant_is_404(env: Env) -> None:
    for method, path in [("GET", "/tenants/nope-x"), ("PATCH", "/tenants/nope-x"), ("DELETE", "/tenants/nope-x"),
                         ("GET", "/tenants/nope-x/connections/c"), ("GET", "/tenants/nope-x/apps/x"),
                         ("GET", "/tenants/nope-x/audit")]:
        body = {"name": "x"} if method == "PATCH" else None
        assert_error_shape(env.api(method, path, body), 404)


# -- tenant-scoped admin keys ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_tenants(env: Env) -> dict[str, Any]:
    a, b = env.tenant(), env.tenant()
    r = env.api("POST", f"/tenants/{a}/admin-keys", {})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) >= {"id", "key"} and body["key"]
    env.saml_connection(b, None, slug="conn-b")
    app_b = env.app(b)
    return {"a": a, "b": b, "key": body["key"], "key_id": body["id"], "app_b": app_b}


def test_admin_key_shown_once(env: Env, two_tenants: dict[str, Any]) -> None:
    events = env.audit(two_tenants["a"], "?type=admin")
    assert two_tenants["key"] not in str(events)
    assert two_tenants["key"] not in env.api("GET", f"/tenants/{two_tenants['a']}").text


def test_scoped_key_sees_only_its_tenant(env: Env, two_tenants: dict[str, Any]) -> None:
    key, a = two_tenants["key"], two_tenants["a"]
    r = scoped(env, key, "GET", "/tenants")
    assert r.status_code == 200
    assert [t["slug"] for t in r.json()["tenants"]] == [a]
    assert scoped(env, key, "GET", f"/tenants/{a}").status_code == 200


def test_scoped_key_cannot_create_tenants(env: Env, two_tenants: dict[str, Any]) -> None:
    assert_error_shape(scoped(env, two_tenants["key"], "POST", "/tenants", {"slug": uniq("x"), "name": "x"}), 403)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/tenants/{b}", None),
    ("PATCH", "/tenants/{b}", {"name": "pwned"}),
    ("DELETE", "/tenants/{b}", None),
    ("POST", "/tenants/{b}/admin-keys", {}),
    ("GET", "/tenants/{b}/connections/conn-b", None),
    ("PATCH", "/tenants/{b}/connections/conn-b", {"domains": ["evil.test"]}),
    ("DELETE", "/tenants/{b}/connections/conn-b", None),
    ("POST", "/tenants/{b}/connections", {"slug": "x", "protocol": "saml"}),
    ("POST", "/tenants/{b}/apps", {"name": "x", "redirect_uris": [REDIRECT_URI]}),
    ("GET", "/tenants/{b}/apps/{app}", None),
    ("DELETE", "/tenants/{b}/apps/{app}", None),
    ("POST", "/tenants/{b}/keys/rotate", None),
    ("GET", "/tenants/{b}/keys", None),
    ("POST", "/tenants/{b}/keys/some-kid/revoke", None),
    ("GET", "/tenants/{b}/audit", None),
])
def test_scoped_key_gets_404_for_other_tenant(env: Env, two_tenants: dict[str, Any], method: str, path: str,
                                               body: Any) -> None:
    p = path.format(b=two_tenants["b"], app=two_tenants["app_b"]["client_id"])
    assert_error_shape(scoped(env, two_tenants["key"], method, p, body), 404)
    # and nothing changed
    assert env.api("GET", f"/tenants/{two_tenants['b']}").status_code == 200
    assert env.api("GET", f"/tenants/{two_tenants['b']}/connections/conn-b").json()["domains"] == []


def test_scoped_key_manages_its_own_tenant(env: Env, two_tenants: dict[str, Any]) -> None:
    key, a = two_tenants["key"], two_tenants["a"]
    r = scoped(env, key, "POST", f"/tenants/{a}/apps", {"name": "mine", "redirect_uris": [REDIRECT_URI]})
    assert r.status_code == 201, r.text


# -- connections -----------------------------------------------------------------------------------

def test_connection_crud_and_sp_urls(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/connections", {"slug": "okta", "protocol": "saml", "domains": ["acme.test"],
                                                       "mapping": {"preset": "okta"}})
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["slug"] == "okta" and c["protocol"] == "saml" and c["domains"] == ["acme.test"]
    assert c["mapping"]["preset"] == "okta" and c["mapping"]["rules"] == []   # rules optional -> []
    assert_error_shape(env.api("POST", f"/tenants/{t}/connections", {"slug": "okta", "protocol": "saml"}), 409)
    got = env.api("GET", f"/tenants/{t}/connections/okta")
    assert got.status_code == 200
    text = got.text
    assert f"{env.url}/t/{t}/connections/okta/saml/acs" in text
    assert f"{env.url}/t/{t}/connections/okta/saml/metadata" in text
    r = env.api("PATCH", f"/tenants/{t}/connections/okta", {"domains": ["acme.test", "acme.example"]})
    assert r.status_code == 200 and r.json()["domains"] == ["acme.test", "acme.example"]
    assert env.api("DELETE", f"/tenants/{t}/connections/okta").status_code in (200, 204)
    assert_error_shape(env.api("GET", f"/tenants/{t}/connections/okta"), 404)


def test_saml_connection_reports_default_settings(env: Env) -> None:
    t = env.tenant()
    env.saml_connection(t, None, slug="d")
    saml = env.api("GET", f"/tenants/{t}/connections/d").json()["saml"]
    assert saml["allow_idp_initiated"] is False and saml["want_assertions_signed"] is True
    assert saml["clock_skew_seconds"] == 120


def test_connection_validation(env: Env) -> None:
    t = env.tenant()
    assert_error_shape(env.api("POST", f"/tenants/{t}/connections", {"slug": "x", "protocol": "ldap"}), 400)
    assert_error_shape(env.api("POST", f"/tenants/{t}/connections",
                               {"slug": "x", "protocol": "saml", "mapping": {"preset": "no-such-preset"}}), 400)
    assert_error_shape(env.api("POST", f"/tenants/{t}/connections", {
        "slug": "x", "protocol": "saml", "mapping": {"preset": "okta", "rules": [{"op": "explode"}]}}), 400)


def test_connection_with_inline_metadata_xml(env: Env) -> None:
    t = env.tenant()
    idp = env.idp()
    r = env.api("POST", f"/tenants/{t}/connections", {"slug": "inline", "protocol": "saml",
                                                       "saml": {"metadata_xml": idp.metadata_xml()}})
    assert r.status_code == 201, r.text
    assert idp.entity_id in env.api("GET", f"/tenants/{t}/connections/inline").text


def test_put_metadata_reports_what_was_understood(env: Env) -> None:
    t = env.tenant()
    idp = env.idp()
    env.saml_connection(t, None, slug="md")
    for ctype in ("application/samlmetadata+xml", "application/xml"):
        r = env.api("PUT", f"/tenants/{t}/connections/md/metadata", data=idp.metadata_xml().encode(),
                    headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["entity_id"] == idp.entity_id
        text = r.text
        assert idp.sso_url in text
        assert "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" in text
        assert "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" in text
        assert "warnings" in body and isinstance(body["warnings"], list)
        certs = body.get("signing_certificates") or body.get("certificates")
        assert certs, body
        assert any("not_after" in c or "expires" in str(c) for c in certs), certs


def test_put_metadata_garbage_is_400(env: Env) -> None:
    t = env.tenant()
    env.saml_connection(t, None, slug="md")
    r = env.api("PUT", f"/tenants/{t}/connections/md/metadata", data=b"<not-metadata/>",
                headers={"Content-Type": "application/xml"})
    assert_error_shape(r, (400, 422))
    r = env.api("PUT", f"/tenants/{t}/connections/md/metadata", data=b"<<<",
                headers={"Content-Type": "application/xml"})
    assert_error_shape(r, (400, 422))


def test_put_metadata_with_entity_expansion_is_refused(env: Env) -> None:
    t = env.tenant()
    env.saml_connection(t, None, slug="md")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&b;"/>')
    r = env.api("PUT", f"/tenants/{t}/connections/md/metadata", data=bomb, headers={"Content-Type": "application/xml"})
    assert_error_shape(r, (400, 413, 422))


# -- apps ------------------------------------------------------------------------------------------

def test_confidential_app_defaults(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI], "public": False})
    assert r.status_code == 201, r.text
    app = r.json()
    assert app["client_id"] and app["client_secret"]
    assert set(app["allowed_scopes"]) == {"openid", "profile", "email", "groups", "offline_access"}
    assert app["token_endpoint_auth_method"] == "client_secret_basic"
    got = env.api("GET", f"/tenants/{t}/apps/{app['client_id']}")
    assert got.status_code == 200
    assert "client_secret" not in got.json() and app["client_secret"] not in got.text   # shown once
    assert app["client_id"] in [a["client_id"] for a in env.api("GET", f"/tenants/{t}/apps").json()["apps"]]


def test_public_app_defaults(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/apps", {"name": "SPA", "redirect_uris": [REDIRECT_URI], "public": True})
    assert r.status_code == 201, r.text
    app = r.json()
    assert not app.get("client_secret")
    assert app["token_endpoint_auth_method"] == "none"


def test_app_patch_and_delete(env: Env) -> None:
    t = env.tenant()
    app = env.app(t)
    r = env.api("PATCH", f"/tenants/{t}/apps/{app['client_id']}",
                {"redirect_uris": [REDIRECT_URI, "https://app.blackbox.test/other"]})
    assert r.status_code == 200, r.text
    assert r.json()["redirect_uris"] == [REDIRECT_URI, "https://app.blackbox.test/other"]
    r = env.api("PATCH", f"/tenants/{t}/apps/{app['client_id']}", {"allowed_scopes": ["openid", "email"]})
    assert r.status_code == 200 and set(r.json()["allowed_scopes"]) == {"openid", "email"}
    assert env.api("DELETE", f"/tenants/{t}/apps/{app['client_id']}").status_code in (200, 204)
    assert_error_shape(env.api("GET", f"/tenants/{t}/apps/{app['client_id']}"), 404)


def test_app_validation(env: Env) -> None:
    t = env.tenant()
    assert_error_shape(env.api("POST", f"/tenants/{t}/apps", {"name": "x", "redirect_uris": ["not a url"]}), 400)
    assert_error_shape(env.api("POST", f"/tenants/{t}/apps", {"name": "x", "redirect_uris": [REDIRECT_URI],
                                                              "allowed_scopes": ["openid", "admin:all"]}), 400)


# -- keys ------------------------------------------------------------------------------------------

def test_key_rotation_keeps_previous_keys_published(env: Env) -> None:
    t = env.tenant()
    before = {k["kid"] for k in requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]}
    r = env.api("POST", f"/tenants/{t}/keys/rotate")
    assert r.status_code in (200, 201), r.text
    after = {k["kid"] for k in requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]}
    assert before < after and len(after) == len(before) + 1


def test_es256_on_request(env: Env) -> None:
    t = env.tenant()
    r = env.api("POST", f"/tenants/{t}/keys/rotate", {"alg": "ES256"})
    assert r.status_code in (200, 201), r.text
    keys = requests.get(f"{env.issuer(t)}/jwks", timeout=10).json()["keys"]
    assert any(k["kty"] == "EC" and k.get("crv") == "P-256" for k in keys)


# -- audit -----------------------------------------------------------------------------------------

def test_audit_event_shape_order_filters_pagination(env: Env) -> None:
    t = env.tenant()
    for i in range(3):
        env.app(t, name=f"app{i}")
    events = env.audit(t)
    assert events
    for e in events:
        assert set(e) >= {"id", "time", "type", "tenant", "connection", "app", "outcome", "reason", "details"}, e
        assert e["type"] in ("login", "admin", "token") and e["outcome"] in ("success", "failure")
        assert e["tenant"] == t and isinstance(e["details"], dict)
    times = [e["time"] for e in events]
    assert times == sorted(times, reverse=True)
    assert all(e["type"] == "admin" for e in env.audit(t, "?type=admin"))
    assert env.audit(t, "?type=login") == []
    assert all(e["outcome"] == "success" for e in env.audit(t, "?outcome=success"))
    assert env.audit(t, "?outcome=failure") == []
    page1 = env.api("GET", f"/tenants/{t}/audit?limit=2").json()
    assert len(page1["events"]) == 2
    cursor = page1.get("next_cursor") or page1.get("next")
    assert cursor
    page2 = env.api("GET", f"/tenants/{t}/audit?limit=2&cursor={cursor}").json()
    assert page2["events"] and not {e["id"] for e in page2["events"]} & {e["id"] for e in page1["events"]}


def test_audit_bad_filter_is_400(env: Env) -> None:
    t = env.tenant()
    assert_error_shape(env.api("GET", f"/tenants/{t}/audit?type=bogus"), 400)


def test_oversized_admin_bodies_are_413_with_shape(env: Env) -> None:
    r = env.api("POST", "/tenants", data=b'{"slug":"big","name":"' + b"a" * 3_000_000 + b'"}',
                headers={"Content-Type": "application/json"})
    assert_error_shape(r, 413)
    t = env.tenant()
    env.saml_connection(t, None, slug="md")
    r = env.api("PUT", f"/tenants/{t}/connections/md/metadata", data=b"<x>" + b"a" * 20_000_000 + b"</x>",
                headers={"Content-Type": "application/xml"})
    assert_error_shape(r, 413)

"""Input that no row can hold or no token can carry: NUL characters (PostgreSQL text refuses them), lone UTF-16
surrogates (JSON's \\u escapes allow them, UTF-8 does not), hosts urllib3 cannot use, over-long names. Each is
a clear 4xx (or simply "not found") with nothing written, never a 500 or a 503 that blames an outage, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import BOOTSTRAP_KEY, AdminClient
from tests.web.test_admin_ui import UI, sign_in

SAML = {"slug": "okta", "protocol": "saml", "domains": ["acme.test"], "mapping": {"preset": "okta"}}


@pytest.fixture
def acme(admin: AdminClient) -> dict[str, Any]:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", SAML).status_code == 201
    app = admin.call("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": ["https://app.test/cb"]})
    assert app.status_code == 201
    body: dict[str, Any] = app.get_json()
    return body


def _raw_json(client: FlaskClient, method: str, path: str, raw: bytes) -> Any:
    return client.open(f"/admin/v1{path}", method=method, data=raw,
                       headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", "Content-Type": "application/json"})


@pytest.mark.parametrize("path", [
    "/t/%00/jwks", "/t/a%00b/.well-known/openid-configuration", "/t/acme/connections/okta%00/saml/metadata",
    "/t/acme/authorize?response_type=code&client_id=%00&redirect_uri=https://app.test/cb",
])
def test_a_nul_in_a_public_lookup_is_not_found(client: FlaskClient, acme: dict[str, Any], path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, (r.status_code, r.get_data(as_text=True)[:300])


def test_a_nul_client_id_at_the_token_endpoint_is_invalid_client(client: FlaskClient, acme: dict[str, Any]) -> None:
    for form in ({"grant_type": "authorization_code", "code": "x", "client_id": "\x00"},
                 {"grant_type": "authorization_code", "code": "x", "client_id": "a\x00", "client_secret": "y"}):
        assert client.post("/t/acme/token", data=form).status_code in (400, 401)
    basic = base64.b64encode(b"conf%00:x").decode()
    r = client.post("/t/acme/token", data={"grant_type": "authorization_code", "code": "x"},
                    headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    for endpoint in ("introspect", "revoke"):
        assert client.post(f"/t/acme/{endpoint}", data={"token": "t", "client_id": "\x00"}).status_code < 500


@pytest.mark.parametrize("path", ["/tenants/%00", "/tenants/acme/connections/%00", "/tenants/acme/apps/%00"])
def test_a_nul_in_an_admin_path_is_404(admin: AdminClient, acme: dict[str, Any], path: str) -> None:
    assert admin.call("GET", path).status_code == 404
    assert admin.call("DELETE", "/admin-keys/%00").status_code == 404


@pytest.mark.parametrize(("method", "path", "raw", "field"), [
    ("POST", "/tenants/acme/admin-keys", b'{"label": "va\\u0000b"}', "label"),
    ("POST", "/admin-keys", b'{"label": "\\ud800"}', "label"),
    ("PATCH", "/tenants/acme/connections/okta",
     b'{"mapping": {"preset": "okta", "rules": [{"op": "constant", "claim": "department", "value": "\\ud800"}]}}',
     "mapping.rules[0].value"),
    ("PATCH", "/tenants/acme/connections/okta", b'{"saml": {"sp_entity_id": "va\\ud800b"}}', "saml.sp_entity_id"),
    ("PATCH", "/tenants/acme/connections/okta", b'{"saml": {"metadata_xml": "a\\ud800"}}', "saml.metadata_xml"),
    ("PATCH", "/tenants/acme", b'{"name": "Acme \\u0000"}', "name"),
    ("PATCH", "/tenants/acme", b'{"na\\udfffme": "x"}', "(body)"),
])
def test_json_with_a_nul_or_a_lone_surrogate_is_refused_and_writes_nothing(
        client: FlaskClient, admin: AdminClient, acme: dict[str, Any], method: str, path: str, raw: bytes,
        field: str) -> None:
    before = admin.call("GET", "/tenants/acme/connections/okta").headers["ETag"]
    keys = len(admin.call("GET", "/admin-keys").get_json()["admin_keys"])
    r = _raw_json(client, method, path, raw)
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["error"] == "invalid_request" and body["details"]["field"] == field
    assert "cannot be stored" in body["message"]
    assert admin.call("GET", "/tenants/acme/connections/okta").headers["ETag"] == before
    assert len(admin.call("GET", "/admin-keys").get_json()["admin_keys"]) == keys
    # the same body without the character is fine (the check is not a blanket refusal)
    fine = raw.replace(b"\\u0000", b"").replace(b"\\ud800", b"x").replace(b"\\udfff", b"")
    json.loads(fine)
    if path != "/tenants/acme/connections/okta" or b"metadata_xml" not in raw:
        assert _raw_json(client, method, path, fine).status_code in (200, 201), fine


@pytest.mark.parametrize(("settings", "field"), [
    ({"saml": {"metadata_url": "https://a..test/md"}}, "saml.metadata_url"),
    ({"saml": {"metadata_url": "https://" + "a" * 64 + ".test/md"}}, "saml.metadata_url"),
    ({"saml": {"metadata_url": "https://[nothex]/md"}}, "saml.metadata_url"),
    ({"saml": {"idp_initiated_redirect_uri": "https://[::1/cb"}}, "saml.idp_initiated_redirect_uri"),
])
def test_a_url_with_a_host_no_client_could_use_is_refused(admin: AdminClient, acme: dict[str, Any],
                                                          settings: dict[str, Any], field: str) -> None:
    r = admin.call("PATCH", "/tenants/acme/connections/okta", settings)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["details"]["field"] == field


@pytest.mark.parametrize("issuer", ["https://a..test", "https://" + "b" * 64 + ".test", "https://[nothex]"])
def test_an_oidc_issuer_with_a_bad_host_is_refused_when_saved(admin: AdminClient, acme: dict[str, Any],
                                                              issuer: str) -> None:
    r = admin.call("POST", "/tenants/acme/connections", {
        "slug": "op", "protocol": "oidc", "domains": ["op.test"],
        "oidc": {"issuer": issuer, "client_id": "c", "client_secret": "s"}})
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "oidc.issuer", r.get_json()


def test_a_refused_token_request_with_a_long_client_id_is_still_audited(admin: AdminClient, client: FlaskClient,
                                                                        acme: dict[str, Any]) -> None:
    long_id = "x" * 101 + "\x00"
    r = client.post("/t/acme/token", data={"grant_type": "authorization_code", "code": "c", "client_id": long_id,
                                           "client_secret": "y"})
    assert r.status_code in (400, 401), r.get_json()
    events = admin.call("GET", "/tenants/acme/audit?type=token&outcome=failure").get_json()["events"]
    assert events and events[0]["app"] == "x" * 100  # cut to its column, not lost to a failed insert


def test_audit_limit_takes_ascii_digits_only(admin: AdminClient, acme: dict[str, Any]) -> None:
    assert admin.call("GET", "/tenants/acme/audit?limit=%D9%A1%D9%A2").status_code == 400
    assert admin.call("GET", "/tenants/acme/audit?limit=12").status_code == 200


def test_an_admin_form_with_a_nul_is_refused_and_writes_nothing(client: FlaskClient, admin: AdminClient,
                                                                acme: dict[str, Any]) -> None:
    csrf = sign_in(client)
    keys = len(admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"])
    r = client.post(f"{UI}/tenants/acme/admin-keys", data={"csrf": csrf, "label": "a\x00b"})
    assert r.status_code == 400 and "NUL" in r.get_data(as_text=True)
    assert len(admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]) == keys


def test_a_logout_referer_that_is_not_a_url_is_not_an_error(client: FlaskClient, acme: dict[str, Any]) -> None:
    r = client.get("/t/acme/logout", headers={"Referer": "https://[::1/x"})
    assert r.status_code == 200

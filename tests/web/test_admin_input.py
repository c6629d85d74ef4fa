"""Admin API input: redirect URIs are registered exactly as they will be compared (no whitespace or control
characters, no credentials in the authority, a real port), and a tenant PATCH is a merge patch."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import AdminClient


@pytest.mark.parametrize("uri", [
    "https://a.example/c b", "https://a.example/cb\n", "https://a.example/\tcb", "https://a.example/cb\x7f",
    "https://user:pass@a.example/cb", "https://user@a.example/cb",
    "https://a.example:99999/cb", "https://a.example:port/cb",
])
def test_malformed_redirect_uris_are_refused(admin: AdminClient, uri: str) -> None:
    admin.tenant("acme")
    for field in ("redirect_uris", "post_logout_redirect_uris"):
        body = {"name": "P", "redirect_uris": ["https://a.example/ok"], field: [uri]}
        r = admin.call("POST", "/tenants/acme/apps", body)
        assert r.status_code == 400, (field, uri, r.get_json())
        assert set(r.get_json()) == {"error", "message", "details"}
    assert admin.call("GET", "/tenants/acme/apps").get_json()["apps"] == []


def test_well_formed_redirect_uris_are_kept_exactly(admin: AdminClient) -> None:
    admin.tenant("acme")
    uris = ["https://a.example:8443/cb?x=1&y=a%20b", "http://127.0.0.1:3000/callback", "com.example.app:/oauth"]
    r = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": uris})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["redirect_uris"] == uris


def test_an_empty_tenant_patch_changes_nothing(admin: AdminClient) -> None:
    """PATCH is a JSON merge patch (as for connections and apps): {} is no change, not a missing name."""
    admin.tenant("acme", "Acme Corp")
    r = admin.call("PATCH", "/tenants/acme", {})
    assert r.status_code == 200 and r.get_json()["name"] == "Acme Corp"
    assert admin.call("PATCH", "/tenants/acme", {"name": ""}).status_code == 400
    assert admin.call("PATCH", "/tenants/acme", {"name": "Acme"}).get_json()["name"] == "Acme"


def test_openapi_documents_the_optional_key_rotation_body(client: FlaskClient) -> None:
    doc = client.get("/admin/v1/openapi.json").get_json()
    body = doc["paths"]["/tenants/{t}/keys/rotate"]["post"]["requestBody"]
    assert body["required"] is False
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/KeyRotate"}
    assert doc["components"]["schemas"]["KeyRotate"]["properties"]["alg"]["enum"] == ["RS256", "ES256"]

"""Admin API: the contract of SPEC "Admin API", bad input, and tenant isolation (on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from broker.ports import FrozenClock
from broker.store.state import MemoryStateStore
from tests.conftest import BOOTSTRAP_KEY, AdminClient, close_app, make_env

OIDC_CONN = {
    "slug": "okta-oidc",
    "protocol": "oidc",
    "domains": ["acme.com"],
    "oidc": {"issuer": "https://acme.okta.com", "client_id": "abc", "client_secret": "s3cret-value"},
}


def _count_tenants(admin: AdminClient) -> int:
    return len(admin.call("GET", "/tenants").get_json()["tenants"])


def _admin_events(admin: AdminClient, slug: str) -> list[dict[str, Any]]:
    r = admin.call("GET", f"/tenants/{slug}/audit?type=admin")
    assert r.status_code == 200
    events: list[dict[str, Any]] = r.get_json()["events"]
    return events


# -- authentication ----------------------------------------------------------------------------------


def test_missing_key_is_401_json(client: FlaskClient) -> None:
    r = client.get("/admin/v1/tenants")
    assert r.status_code == 401
    body = r.get_json()
    assert body["error"] == "unauthorized" and body["message"] and "details" in body


def test_wrong_key_is_401(client: FlaskClient) -> None:
    r = client.get("/admin/v1/tenants", headers={"Authorization": "Bearer not-a-key"})
    assert r.status_code == 401


def test_missing_key_401_names_the_bearer_scheme(client: FlaskClient) -> None:
    """RFC 7235 §3.1: a 401 carries a challenge; RFC 6750 §3.1: no error code when no key was sent."""
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        r = client.get("/admin/v1/tenants", headers=headers)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="admin"', headers
        assert set(r.get_json()) == {"error", "message", "details"}


def test_wrong_key_401_says_invalid_token(client: FlaskClient) -> None:
    for value in ("Bearer not-a-key", "bearer not-a-key", "Bearer " + "x" * 600):
        r = client.get("/admin/v1/tenants", headers={"Authorization": value})
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="admin", error="invalid_token"'
        body = r.get_json()
        assert set(body) == {"error", "message", "details"} and body["error"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_auth_scheme_is_case_insensitive(client: FlaskClient, scheme: str) -> None:
    """RFC 7235 §2.1: the auth-scheme is a case-insensitive token."""
    r = client.get("/admin/v1/tenants", headers={"Authorization": f"{scheme} {BOOTSTRAP_KEY}"})
    assert r.status_code == 200, r.get_json()
    assert "WWW-Authenticate" not in r.headers


def test_bootstrap_key_is_global(admin: AdminClient) -> None:
    assert admin.call("GET", "/tenants").status_code == 200


# -- tenants -----------------------------------------------------------------------------------------


def test_create_get_patch_delete_tenant(admin: AdminClient) -> None:
    t = admin.tenant("acme", "Acme Corp")
    assert t["slug"] == "acme" and t["name"] == "Acme Corp"
    assert t["issuer"] == "http://broker.test/t/acme"
    assert admin.call("GET", "/tenants/acme").get_json()["name"] == "Acme Corp"
    r = admin.call("PATCH", "/tenants/acme", {"name": "Acme Inc"})
    assert r.status_code == 200 and r.get_json()["name"] == "Acme Inc"
    assert admin.call("DELETE", "/tenants/acme").status_code == 204
    assert admin.call("GET", "/tenants/acme").status_code == 404


def test_tenant_gets_signing_key_published(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    app = client.application
    svc = app.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    keys = svc.config.signing_keys(tenant.id)
    assert len(keys) == 1 and keys[0].alg == "RS256" and keys[0].active
    assert int.bit_length(int.from_bytes(__import__("base64").urlsafe_b64decode(
        keys[0].public_jwk["n"] + "=="), "big")) >= 2048


def test_duplicate_slug_is_409_and_writes_nothing(admin: AdminClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants", {"slug": "acme", "name": "Other"})
    assert r.status_code == 409
    assert r.get_json()["error"] == "tenant_exists"
    assert admin.call("GET", "/tenants/acme").get_json()["name"] == "Acme Corp"


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme-", "ac me", "a" * 64, "", "acme/../x", "ácme"])
def test_invalid_slug_is_400(admin: AdminClient, slug: str) -> None:
    r = admin.call("POST", "/tenants", {"slug": slug, "name": "X"})
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "invalid_request"
    assert body["details"]["errors"][0]["field"] == "slug"
    assert _count_tenants(admin) == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"slug": 5, "name": "X"}, "slug"),
        ({"slug": "acme", "name": ["X"]}, "name"),
        ({"slug": "acme"}, "name"),
        ({"slug": "acme", "name": "X", "extra": 1}, "extra"),
        ({"slug": "acme", "name": ""}, "name"),
    ],
)
def test_wrong_types_missing_and_unknown_fields_are_400(admin: AdminClient, body: Any, field: str) -> None:
    r = admin.call("POST", "/tenants", body)
    assert r.status_code == 400
    fields = [e["field"] for e in r.get_json()["details"]["errors"]]
    assert field in fields
    assert _count_tenants(admin) == 0


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1,2", b"\xff\xfe", b""])
def test_malformed_json_is_400(client: FlaskClient, admin_headers: dict[str, str], raw: bytes) -> None:
    r = client.post("/admin/v1/tenants", data=raw, headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.get_json()["error"] in ("invalid_json", "invalid_request")


def test_json_array_body_is_400(admin: AdminClient) -> None:
    r = admin.call("POST", "/tenants", [{"slug": "acme", "name": "X"}])
    assert r.status_code == 400


def test_wrong_content_type_is_415(client: FlaskClient, admin_headers: dict[str, str]) -> None:
    r = client.post("/admin/v1/tenants", data="slug=acme", headers={**admin_headers,
                    "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_oversized_body_is_413_and_writes_nothing(client: FlaskClient, admin_headers: dict[str, str],
                                                  admin: AdminClient) -> None:
    big = b'{"slug": "acme", "name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = client.post("/admin/v1/tenants", data=big, headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.get_json()["error"] == "payload_too_large"
    assert _count_tenants(admin) == 0


def test_unknown_route_is_json_404(admin: AdminClient) -> None:
    r = admin.call("GET", "/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"


# -- tenant isolation --------------------------------------------------------------------------------


@pytest.fixture
def two_tenants(admin: AdminClient, client: FlaskClient) -> tuple[AdminClient, AdminClient]:
    admin.tenant("acme")
    admin.tenant("globex", "Globex")
    ka = admin.call("POST", "/tenants/acme/admin-keys", {"label": "acme admin"})
    kg = admin.call("POST", "/tenants/globex/admin-keys")
    assert ka.status_code == 201 and kg.status_code == 201
    assert ka.get_json()["key"] and ka.get_json()["id"]
    return AdminClient(client, ka.get_json()["key"]), AdminClient(client, kg.get_json()["key"])


def test_tenant_key_sees_only_its_tenant(two_tenants: tuple[AdminClient, AdminClient]) -> None:
    acme, _ = two_tenants
    r = acme.call("GET", "/tenants")
    assert [t["slug"] for t in r.get_json()["tenants"]] == ["acme"]
    assert acme.call("GET", "/tenants/acme").status_code == 200


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/tenants/globex", None),
        ("PATCH", "/tenants/globex", {"name": "pwned"}),
        ("DELETE", "/tenants/globex", None),
        ("POST", "/tenants/globex/admin-keys", {}),
        ("GET", "/tenants/globex/connections", None),
        ("POST", "/tenants/globex/connections", OIDC_CONN),
        ("GET", "/tenants/globex/connections/okta-oidc", None),
        ("PATCH", "/tenants/globex/connections/okta-oidc", {"enabled": False}),
        ("DELETE", "/tenants/globex/connections/okta-oidc", None),
        ("POST", "/tenants/globex/apps", {"name": "x", "redirect_uris": ["https://x.example/cb"]}),
        ("GET", "/tenants/globex/apps", None),
        ("POST", "/tenants/globex/keys/rotate", None),
        ("GET", "/tenants/globex/keys", None),
        ("POST", "/tenants/globex/keys/some-kid/revoke", None),
        ("GET", "/tenants/globex/audit", None),
        ("GET", "/tenants/nonexistent", None),
    ],
)
def test_other_tenants_resources_are_404(two_tenants: tuple[AdminClient, AdminClient], admin: AdminClient,
                                         method: str, path: str, body: Any) -> None:
    acme, globex = two_tenants
    assert globex.call("POST", "/tenants/globex/connections", OIDC_CONN).status_code == 201
    before = admin.call("GET", "/tenants/globex").get_json()
    r = acme.call(method, path, body)
    assert r.status_code == 404, r.get_json()
    assert r.get_json()["error"] in ("tenant_not_found", "not_found")
    assert admin.call("GET", "/tenants/globex").get_json() == before
    assert admin.call("GET", "/tenants/globex/connections/okta-oidc").get_json()["enabled"] is True


def test_tenant_key_cannot_create_tenants(two_tenants: tuple[AdminClient, AdminClient], admin: AdminClient) -> None:
    acme, _ = two_tenants
    r = acme.call("POST", "/tenants", {"slug": "evil", "name": "Evil"})
    assert r.status_code == 403
    assert _count_tenants(admin) == 2


def test_tenant_key_cannot_reach_app_of_other_tenant(two_tenants: tuple[AdminClient, AdminClient]) -> None:
    acme, globex = two_tenants
    created = globex.call("POST", "/tenants/globex/apps", {"name": "x", "redirect_uris": ["https://x.example/cb"]})
    cid = created.get_json()["client_id"]
    assert acme.call("GET", f"/tenants/globex/apps/{cid}").status_code == 404
    assert acme.call("GET", f"/tenants/acme/apps/{cid}").status_code == 404
    assert acme.call("DELETE", f"/tenants/acme/apps/{cid}").status_code == 404
    assert globex.call("GET", f"/tenants/globex/apps/{cid}").status_code == 200


# -- apps ----------------------------------------------------------------------------------------------


def test_app_secret_shown_once_and_defaults(admin: AdminClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": ["https://portal.example/cb"]})
    assert r.status_code == 201
    body = r.get_json()
    assert body["client_id"] and len(body["client_secret"]) >= 32
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["allowed_scopes"] == ["openid", "profile", "email", "groups", "offline_access"]
    got = admin.call("GET", f"/tenants/acme/apps/{body['client_id']}").get_json()
    assert "client_secret" not in got and "client_secret_hash" not in str(got)


def test_public_app_uses_none(admin: AdminClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/apps", {"name": "SPA", "redirect_uris": ["https://spa.example/cb"],
                                                  "public": True})
    assert r.status_code == 201
    body = r.get_json()
    assert body["token_endpoint_auth_method"] == "none" and "client_secret" not in body


def test_client_secret_is_stored_only_as_hash(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    body = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://p.example/cb"]}).get_json()
    svc = client.application.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    stored = svc.config.app(tenant.id, body["client_id"])
    assert stored.client_secret_hash != body["client_secret"]
    assert body["client_secret"] not in stored.client_secret_hash
    assert svc.admin.hasher.verify(body["client_secret"], stored.client_secret_hash)


@pytest.mark.parametrize(
    "uris",
    [["not a url"], ["https://x.example/cb#frag"], ["https://*.example/cb"], ["javascript:alert(1)"], []],
)
def test_bad_redirect_uris_are_400(admin: AdminClient, uris: list[str]) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": uris})
    assert r.status_code == 400
    assert admin.call("GET", "/tenants/acme/apps").get_json()["apps"] == []


def test_patch_and_delete_app(admin: AdminClient) -> None:
    admin.tenant("acme")
    cid = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://p.example/cb"]}
                     ).get_json()["client_id"]
    r = admin.call("PATCH", f"/tenants/acme/apps/{cid}", {"redirect_uris": ["https://p.example/cb2"]})
    assert r.status_code == 200 and r.get_json()["redirect_uris"] == ["https://p.example/cb2"]
    r = admin.call("PATCH", f"/tenants/acme/apps/{cid}", {"access_token_ttl": "long"})
    assert r.status_code == 400
    assert admin.call("DELETE", f"/tenants/acme/apps/{cid}").status_code == 204
    assert admin.call("GET", f"/tenants/acme/apps/{cid}").status_code == 404


# -- connections -------------------------------------------------------------------------------------


def test_oidc_connection_crud_and_secret_redacted(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", OIDC_CONN)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["protocol"] == "oidc" and body["domains"] == ["acme.com"]
    assert "s3cret-value" not in str(body) and body["oidc"]["client_secret_set"] is True
    assert body["mapping"]["preset"] == "generic-oidc"
    assert body["redirect_uri"] == "http://broker.test/t/acme/connections/okta-oidc/oidc/callback"
    # the secret is sealed at rest, readable by the broker
    svc = client.application.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    assert svc.config.connection(tenant.id, "okta-oidc").settings["client_secret"] == "s3cret-value"
    r = admin.call("PATCH", "/tenants/acme/connections/okta-oidc", {"domains": ["acme.com", "acme.org"]})
    assert r.status_code == 200 and r.get_json()["version"] == 2
    # a patch that does not mention the secret keeps it
    assert svc.config.connection(tenant.id, "okta-oidc").settings["client_secret"] == "s3cret-value"
    assert admin.call("DELETE", "/tenants/acme/connections/okta-oidc").status_code == 204
    assert admin.call("GET", "/tenants/acme/connections/okta-oidc").status_code == 404


def test_renaming_a_connection_warns_which_urls_moved(admin: AdminClient) -> None:
    admin.tenant("acme")
    base = "http://broker.test/t/acme/connections"
    assert admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "domains": ["acme.net"]}).status_code == 201
    r = admin.call("PATCH", "/tenants/acme/connections/okta", {"slug": "okta-prod"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["sp"]["acs_url"] == f"{base}/okta-prod/saml/acs"
    moved = [w for w in body["warnings"] if w.startswith("connection_urls_changed: ")]
    assert len(moved) == 1
    assert f"ACS URL {base}/okta/saml/acs -> {base}/okta-prod/saml/acs" in moved[0]
    assert f"SP entityID {base}/okta/saml/metadata -> {base}/okta-prod/saml/metadata" in moved[0]
    # setting an SP entityID moves it too; a fixed one then stays put through a rename
    r = admin.call("PATCH", "/tenants/acme/connections/okta-prod", {"saml": {"sp_entity_id": "urn:acme:sp"}})
    (set_id,) = [w for w in r.get_json()["warnings"] if w.startswith("connection_urls_changed")]
    assert f"this change changed its SP entityID {base}/okta-prod/saml/metadata -> urn:acme:sp" in set_id
    assert "ACS URL" not in set_id
    r = admin.call("PATCH", "/tenants/acme/connections/okta-prod", {"domains": ["acme.org"]})
    assert not [w for w in r.get_json()["warnings"] if w.startswith("connection_urls_changed")]
    r = admin.call("PATCH", "/tenants/acme/connections/okta-prod", {"slug": "okta"})
    (moved_again,) = [w for w in r.get_json()["warnings"] if w.startswith("connection_urls_changed: ")]
    assert "ACS URL" in moved_again and "entityID" not in moved_again
    # rename and unset the fixed entityID at once: the old one named is the one the IdP had
    r = admin.call("PATCH", "/tenants/acme/connections/okta", {"slug": "okta-2", "saml": {"sp_entity_id": None}})
    (both,) = [w for w in r.get_json()["warnings"] if w.startswith("connection_urls_changed: ")]
    assert f"SP entityID urn:acme:sp -> {base}/okta-2/saml/metadata" in both and "is updated" in both
    # OIDC: the redirect URI registered at the OP
    assert admin.call("POST", "/tenants/acme/connections", OIDC_CONN).status_code == 201
    r = admin.call("PATCH", "/tenants/acme/connections/okta-oidc", {"slug": "okta-oidc-2"})
    assert r.status_code == 200
    (oidc_moved,) = r.get_json()["warnings"]
    assert f"redirect URI {base}/okta-oidc/oidc/callback -> {base}/okta-oidc-2/oidc/callback" in oidc_moved
    assert "at the OP are updated" in oidc_moved


def test_saml_connection_without_metadata(admin: AdminClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", {"slug": "okta", "protocol": "saml", "domains": ["acme.com"],
                                                         "mapping": {"preset": "okta", "rules": []}})
    assert r.status_code == 201, r.get_json()
    sp = r.get_json()["sp"]
    assert sp["acs_url"] == "http://broker.test/t/acme/connections/okta/saml/acs"
    assert sp["entity_id"] == sp["metadata_url"] == "http://broker.test/t/acme/connections/okta/saml/metadata"
    assert "BEGIN CERTIFICATE" in sp["signing_certificate"]


@pytest.mark.parametrize(
    "body",
    [
        {**OIDC_CONN, "protocol": "ldap"},
        {**OIDC_CONN, "slug": "Bad Slug"},
        {**OIDC_CONN, "domains": "acme.com"},
        {**OIDC_CONN, "domains": ["not a domain"]},
        {**OIDC_CONN, "mapping": {"preset": "okta", "rules": [{"op": "no_such_op"}]}},
        {**OIDC_CONN, "mapping": {"preset": "no-such-preset"}},
        {**OIDC_CONN, "oidc": {"client_id": "abc"}},
        {**OIDC_CONN, "saml": {}},
        {**OIDC_CONN, "unknown": True},
        {"slug": "s", "protocol": "saml", "saml": {"metadata_xml": "<not-metadata/>"}},
        {"slug": "s", "protocol": "saml", "saml": {"allow_idp_initiated": "yes"}},
    ],
)
def test_bad_connections_are_400_and_write_nothing(admin: AdminClient, body: dict[str, Any]) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["message"]
    assert admin.call("GET", "/tenants/acme/connections").get_json()["connections"] == []


def test_duplicate_connection_and_domain_conflict(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", OIDC_CONN).status_code == 201
    assert admin.call("POST", "/tenants/acme/connections", OIDC_CONN).status_code == 409
    r = admin.call("POST", "/tenants/acme/connections", {**OIDC_CONN, "slug": "other"})
    assert r.status_code == 400 and r.get_json()["error"] == "domain_conflict"


def test_bad_mapping_rule_names_index(admin: AdminClient) -> None:
    admin.tenant("acme")
    body = {**OIDC_CONN, "mapping": {"preset": "generic-oidc", "rules": [
        {"op": "copy", "from": "a", "to": "b"}, {"op": "regex_replace", "from": "a", "to": "a", "pattern": "(",
                                                  "replacement": ""}]}}
    r = admin.call("POST", "/tenants/acme/connections", body)
    assert r.status_code == 400
    assert r.get_json()["details"]["index"] == 1


# -- keys and audit ----------------------------------------------------------------------------------


def test_rotate_keeps_previous_published(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    svc = client.application.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    first = svc.config.signing_keys(tenant.id)[0].kid
    r = admin.call("POST", "/tenants/acme/keys/rotate")
    assert r.status_code == 200
    body = r.get_json()
    assert body["active_kid"] != first
    keys = svc.config.signing_keys(tenant.id)
    assert keys[0].kid == body["active_kid"] and keys[0].active
    assert {k.kid for k in keys} == {first, body["active_kid"]}
    listed = {k["kid"]: k for k in body["keys"]}
    assert listed[first]["active"] is False and listed[first]["retired_at"] and listed[first]["published"] is True
    assert listed[body["active_kid"]]["active"] is True and listed[body["active_kid"]]["published"] is True


@pytest.fixture
def clocked(database_url: str) -> Iterator[tuple[AdminClient, FrozenClock]]:
    """An app on a frozen clock (its state store too) with the tenant acme."""
    from broker.app import create_app
    from broker.settings import load_settings

    clock = FrozenClock(time.time())
    app = create_app(load_settings(make_env(database_url)), clock=clock, state=MemoryStateStore(clock=clock.now))
    try:
        admin = AdminClient(app.test_client(), BOOTSTRAP_KEY)
        admin.tenant("acme")
        yield admin, clock
    finally:
        close_app(app)


def test_rotated_out_key_leaves_the_jwks_once_its_tokens_have_expired(
        clocked: tuple[AdminClient, FrozenClock]) -> None:
    """Through the real store (its retirement time) and the HTTP JWKS: published a day and an hour, then
    gone; the rotate answer says which keys are published."""
    from broker.issuer.keys import RETIRED_KEY_PUBLISHED_SECONDS

    admin, clock = clocked
    first = admin.client.get("/t/acme/jwks").get_json()["keys"][0]["kid"]
    second = admin.call("POST", "/tenants/acme/keys/rotate").get_json()["active_kid"]
    assert {k["kid"] for k in admin.client.get("/t/acme/jwks").get_json()["keys"]} == {first, second}
    clock.advance(RETIRED_KEY_PUBLISHED_SECONDS + 5)
    assert [k["kid"] for k in admin.client.get("/t/acme/jwks").get_json()["keys"]] == [second]
    third = admin.call("POST", "/tenants/acme/keys/rotate").get_json()
    published = {k["kid"]: k["published"] for k in third["keys"]}
    assert published[third["active_kid"]] is True and published[first] is False


def test_staged_rotation_publishes_the_key_before_it_signs(clocked: tuple[AdminClient, FrozenClock]) -> None:
    """activate_after: the new key is in the JWKS at once, the current key signs until then; the answer and the
    audit event say when it starts."""
    from broker.issuer.keys import select_signing_key

    admin, clock = clocked
    first = admin.client.get("/t/acme/jwks").get_json()["keys"][0]["kid"]
    r = admin.call("POST", "/tenants/acme/keys/rotate", {"activate_after": 600})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["active_kid"] == first and out["next_kid"] != first
    assert out["activates_at"] == datetime.fromtimestamp(clock.now() + 600, UTC).isoformat().replace(
        "+00:00", "Z")
    listed = {k["kid"]: k for k in out["keys"]}
    assert listed[first]["active"] is True and listed[first]["retired_at"] == out["activates_at"]
    assert listed[out["next_kid"]]["active"] is False and listed[out["next_kid"]]["published"] is True
    assert {k["kid"] for k in admin.client.get("/t/acme/jwks").get_json()["keys"]} == {first, out["next_kid"]}
    listed = admin.call("GET", "/tenants/acme/keys").get_json()["keys"]
    assert [(k["kid"], k["status"], k["activates_at"]) for k in listed] == [
        (out["next_kid"], "pending", out["activates_at"]), (first, "active", None)]
    assert all(set(k) == {"kid", "alg", "status", "active", "published", "created_at", "activates_at",
                          "retired_at", "revoked_at"} for k in listed), "public parts only"

    svc = admin.client.application.extensions["broker"]
    tid = svc.config.tenant_by_slug("acme").id
    clock.advance(599)
    assert select_signing_key(svc.config.signing_keys(tid), "RS256", clock.now()).kid == first
    clock.advance(1.001)  # activates_at is stored to the microsecond
    assert select_signing_key(svc.config.signing_keys(tid), "RS256", clock.now()).kid == out["next_kid"]
    listed = admin.call("GET", "/tenants/acme/keys").get_json()["keys"]
    assert [(k["kid"], k["status"], k["published"]) for k in listed] == [
        (out["next_kid"], "active", True), (first, "retired", True)]
    event = _admin_events(admin, "acme")[0]
    assert event["details"]["action"] == "keys.rotate" and event["details"]["kid"] == out["next_kid"]
    assert event["details"]["activates_at"] == out["activates_at"]


def test_revoking_a_leaked_key(clocked: tuple[AdminClient, FrozenClock]) -> None:
    """Rotate at once, then revoke the old key: it leaves the JWKS at once (not 25 hours later), the listing says
    revoked, one audit event. The key that signs cannot be revoked; an unknown kid is 404."""
    admin, _ = clocked
    first = admin.client.get("/t/acme/jwks").get_json()["keys"][0]["kid"]
    r = admin.call("POST", f"/tenants/acme/keys/{first}/revoke")
    assert r.status_code == 409 and r.get_json()["error"] == "key_in_use"
    second = admin.call("POST", "/tenants/acme/keys/rotate").get_json()["active_kid"]
    assert admin.call("POST", f"/tenants/acme/keys/{second}/revoke").status_code == 409
    r = admin.call("POST", f"/tenants/acme/keys/{first}/revoke")
    assert r.status_code == 200 and r.get_json()["revoked_kid"] == first
    listed = {k["kid"]: k for k in r.get_json()["keys"]}
    assert listed[first]["status"] == "revoked" and listed[first]["published"] is False
    assert listed[first]["revoked_at"] and listed[second]["status"] == "active"
    assert [k["kid"] for k in admin.client.get("/t/acme/jwks").get_json()["keys"]] == [second]
    assert admin.call("POST", f"/tenants/acme/keys/{first}/revoke").status_code == 200  # already: no change
    assert [e["details"]["action"] for e in _admin_events(admin, "acme")].count("keys.revoke") == 1
    for unknown in ("no-such-kid", "a%00b", "%ED%A0%80"):  # a NUL, a lone surrogate: no stored kid has one
        r = admin.call("POST", f"/tenants/acme/keys/{unknown}/revoke")
        assert r.status_code == 404 and r.get_json()["error"] == "key_not_found", unknown


@pytest.mark.parametrize("value", [-1, 30 * 86400 + 1, 1.5, "600", True, None])
def test_staged_rotation_refuses_a_bad_delay(admin: AdminClient, value: Any) -> None:
    admin.tenant("acme")
    before = admin.client.get("/t/acme/jwks").get_json()
    r = admin.call("POST", "/tenants/acme/keys/rotate", {"activate_after": value})
    assert r.status_code == 400 and r.get_json()["details"] == {"field": "activate_after"}
    assert admin.client.get("/t/acme/jwks").get_json() == before, "nothing written"


def test_audit_lists_admin_events_newest_first_paginated(admin: AdminClient) -> None:
    admin.tenant("acme")
    for i in range(5):
        admin.call("PATCH", "/tenants/acme", {"name": f"Acme {i}"})
    r = admin.call("GET", "/tenants/acme/audit?limit=2&type=admin")
    page = r.get_json()
    assert len(page["events"]) == 2 and page["next_cursor"]
    ev = page["events"][0]
    assert set(ev) >= {"id", "time", "type", "tenant", "connection", "app", "outcome", "reason", "details"}
    assert ev["type"] == "admin" and ev["outcome"] == "success" and ev["tenant"] == "acme"
    seen = [e["id"] for e in page["events"]]
    cursor = page["next_cursor"]
    while cursor:
        nxt = admin.call("GET", f"/tenants/acme/audit?limit=2&type=admin&cursor={cursor}").get_json()
        seen += [e["id"] for e in nxt["events"]]
        cursor = nxt["next_cursor"]
    assert len(seen) == len(set(seen)) == 6  # create + 5 renames
    times = [e["time"] for e in _admin_events(admin, "acme")]
    assert times == sorted(times, reverse=True)
    assert admin.call("GET", "/tenants/acme/audit?outcome=failure").get_json()["events"] == []
    assert admin.call("GET", "/tenants/acme/audit?type=bogus").status_code == 400
    assert admin.call("GET", "/tenants/acme/audit?limit=0").status_code == 400


def test_failed_write_leaves_no_audit_event(admin: AdminClient) -> None:
    admin.tenant("acme")
    before = len(_admin_events(admin, "acme"))
    admin.call("PATCH", "/tenants/acme", {"name": 42})
    assert len(_admin_events(admin, "acme")) == before


def test_openapi_document_matches_routes(client: FlaskClient) -> None:
    r = client.get("/admin/v1/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    documented = set()
    for path, ops in doc["paths"].items():
        for method in ops:
            if method != "parameters":
                documented.add((method.upper(), "/admin/v1" + path.replace("{", "<").replace("}", ">")))
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.rule.startswith("/admin/v1") and not rule.rule.endswith("openapi.json"):
            for m in rule.methods - {"HEAD", "OPTIONS"}:
                served.add((m, rule.rule))
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_private_key_jwt_key_is_sealed_and_never_shown(admin: AdminClient, client: FlaskClient) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    admin.tenant("acme")
    body = {"slug": "pkj", "protocol": "oidc", "oidc": {"issuer": "https://op.example", "client_id": "c1",
                                                       "token_endpoint_auth_method": "private_key_jwt",
                                                       "private_key_jwt": pem}}
    r = admin.call("POST", "/tenants/acme/connections", body)
    assert r.status_code == 201, r.get_json()
    shown = admin.call("GET", "/tenants/acme/connections/pkj").get_json()
    assert "PRIVATE KEY" not in str(shown) and "PRIVATE KEY" not in str(r.get_json())
    assert shown["oidc"]["private_key_jwt_set"] is True
    svc = client.application.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    assert svc.config.connection(tenant.id, "pkj").settings["private_key_jwt"] == pem
    from sqlalchemy import text

    with svc.extras["engine"].connect() as conn:
        raw = conn.execute(text("SELECT settings, sealed_secrets FROM connections")).one()
    assert "PRIVATE KEY" not in str(raw.settings) and "PRIVATE KEY" not in raw.sealed_secrets


def test_admin_writes_are_not_made_while_the_state_store_is_down(client: FlaskClient, admin: AdminClient) -> None:
    """Writes are announced to the other replicas through the state store: with it down, a write answers 503
    and is not made (before, a tenant was created behind a 503 and a retry got 409)."""
    from broker.store.state_redis import RedisStateStore

    svc = client.application.extensions["broker"]
    up = svc.state
    svc.state = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    try:
        r = admin.call("POST", "/tenants", {"slug": "outage", "name": "Outage"})
        assert r.status_code == 503 and r.get_json()["error"] == "state_store_unavailable"
        assert admin.call("GET", "/tenants/outage").status_code == 404
    finally:
        svc.state = up
    assert admin.call("POST", "/tenants", {"slug": "outage", "name": "Outage"}).status_code == 201


def test_a_write_whose_announcement_fails_answers_as_written_and_is_audited(app: Any, admin: AdminClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The state store answered the pre-write check, then failed to take the announcement: the write has
    committed, so it answers as written (not a 503 that hides it), writes its audit event, and the next
    request announces it."""
    from broker.errors import StateStoreError

    admin.tenant("acme")
    svc = app.extensions["broker"]
    first = admin.client.get("/t/acme/jwks").get_json()["keys"][0]["kid"]
    second = admin.call("POST", "/tenants/acme/keys/rotate").get_json()["active_kid"]
    generation = svc.config.generation
    bumps: list[object] = []
    real_bump = generation.bump

    def unreachable(scopes: object = None) -> None:
        raise StateStoreError("The state store is unavailable.")

    monkeypatch.setattr(generation, "bump", unreachable)
    r = admin.call("POST", f"/tenants/acme/keys/{first}/revoke")
    assert r.status_code == 200 and r.get_json()["revoked_kid"] == first
    assert svc.config.announcement_owed
    assert [e["details"]["action"] for e in _admin_events(admin, "acme")][:1] == ["keys.revoke"]

    def reachable(scopes: object = None) -> None:
        bumps.append(scopes)
        real_bump(scopes)

    monkeypatch.setattr(generation, "bump", reachable)
    assert [k["kid"] for k in admin.client.get("/t/acme/jwks").get_json()["keys"]] == [second]
    assert bumps and not svc.config.announcement_owed  # paid at the start of that request

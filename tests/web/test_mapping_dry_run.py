"""POST /admin/v1/tenants/{t}/connections/{c}/mapping/test: what an admin uses to debug a mapping."""

from __future__ import annotations

from tests.conftest import AdminClient

SAML_CONN = {"slug": "okta", "protocol": "saml", "domains": ["acme.com"],
             "mapping": {"preset": "okta", "rules": [
                 {"op": "map_values", "from": "groups", "to": "roles", "table": {"Admins": "admin"},
                  "default": "member"},
                 {"op": "require", "claim": "email"}]}}


def test_dry_run_returns_profile_and_each_rules_effect(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", SAML_CONN).status_code == 201
    r = admin.call("POST", "/tenants/acme/connections/okta/mapping/test", {
        "subject": "00u1abcd", "subject_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        "attributes": {"email": "Alice@Acme.com", "firstName": ["Alice"], "lastName": ["Liddell"],
                       "groups": ["Everyone", "Admins"]}})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    profile = body["profile"]
    assert profile["email"].lower() == "alice@acme.com"
    assert profile["given_name"] == "Alice" and profile["family_name"] == "Liddell"
    assert profile["roles"] == ["admin"] and set(profile["groups"]) == {"Everyone", "Admins"}
    assert profile["sub"] and "alice" not in profile["sub"].lower()
    rule_steps = [s for s in body["steps"] if s["source"] == "rule"]
    assert [s["index"] for s in rule_steps] == [0, 1]
    assert rule_steps[0]["changed"]["roles"]["after"] == ["admin"]
    assert body["raw"]["groups"] == ["Everyone", "Admins"]


def test_dry_run_reports_a_missing_required_claim(admin: AdminClient) -> None:
    admin.tenant("acme")
    admin.call("POST", "/tenants/acme/connections", SAML_CONN)
    r = admin.call("POST", "/tenants/acme/connections/okta/mapping/test",
                   {"subject": "00u1", "attributes": {"firstName": "Alice"}})
    assert r.status_code == 200
    body = r.get_json()
    assert body["profile"] is None
    assert body["error"]["error"] == "mapping_required_claim_missing"
    assert "email" in body["error"]["message"] and "okta" in body["error"]["message"]


def test_dry_run_with_draft_rules_saves_nothing(admin: AdminClient) -> None:
    admin.tenant("acme")
    admin.call("POST", "/tenants/acme/connections", SAML_CONN)
    r = admin.call("POST", "/tenants/acme/connections/okta/mapping/test", {
        "subject": "u1", "attributes": {"email": "a@acme.com", "department": "R&D"},
        "mapping": {"preset": "okta", "rules": [{"op": "copy", "from": "department", "to": "department"}]}})
    assert r.status_code == 200
    assert r.get_json()["profile"]["department"] == "R&D"
    conn = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    assert conn["mapping"]["rules"] == SAML_CONN["mapping"]["rules"] and conn["version"] == 1


def test_dry_run_refuses_bad_rules_with_their_index(admin: AdminClient) -> None:
    admin.tenant("acme")
    admin.call("POST", "/tenants/acme/connections", SAML_CONN)
    r = admin.call("POST", "/tenants/acme/connections/okta/mapping/test", {
        "attributes": {}, "mapping": {"rules": [{"op": "copy", "from": "a", "to": "b"}, {"op": "eval", "code": "1"}]}})
    assert r.status_code == 400 and r.get_json()["details"]["index"] == 1


def test_dry_run_of_another_tenants_connection_is_404(admin: AdminClient, client: object) -> None:
    admin.tenant("acme")
    admin.tenant("globex", "Globex")
    admin.call("POST", "/tenants/globex/connections", SAML_CONN)
    key = admin.call("POST", "/tenants/acme/admin-keys", {}).get_json()["key"]
    acme = AdminClient(admin.client, key)
    r = acme.call("POST", "/tenants/globex/connections/okta/mapping/test", {"attributes": {}})
    assert r.status_code == 404

"""Admin API input: redirect URIs are registered exactly as they will be compared (no whitespace or control
characters, no credentials in the authority, a real port), and a tenant PATCH is a merge patch."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import AdminClient
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp


@pytest.mark.parametrize("uri", [
    "https://a.example/c b", "https://a.example/cb\n", "https://a.example/\tcb", "https://a.example/cb\x7f",
    "https://user:pass@a.example/cb", "https://user@a.example/cb",
    "https://a.example:99999/cb", "https://a.example:port/cb", "https://a.example:0/cb", "https://[::1]:0/cb",
    "https://\u202eelpmaxe.a/cb", "https://a\u200b.example/cb", "https://xn--\u2066.example/", "https://a.example/\ufeffcb",
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


@pytest.mark.parametrize("cursor", ["99999999999999999999", "9223372036854775808", "\u00b2", "\u0661", "-1", "1.0"])
def test_an_audit_cursor_that_is_not_a_plain_number_is_400(admin: AdminClient, cursor: str) -> None:
    admin.tenant("acme")
    r = admin.call("GET", "/tenants/acme/audit", query_string={"cursor": cursor})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["details"] == {"field": "cursor"}


@pytest.mark.parametrize("body", ["null", "[]", "0", "false", '"x"', "-1.05e16"])
def test_key_rotation_with_a_body_that_is_not_an_object_rotates_nothing(admin: AdminClient, client: FlaskClient,
                                                                       body: str) -> None:
    admin.tenant("acme")
    before = client.get("/t/acme/jwks").get_json()["keys"]
    r = client.post("/admin/v1/tenants/acme/keys/rotate", data=body,
                    headers={**admin.headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request", r.get_json()
    assert client.get("/t/acme/jwks").get_json()["keys"] == before
    empty = client.post("/admin/v1/tenants/acme/keys/rotate", headers=admin.headers)  # no body: RS256
    assert empty.status_code == 200 and len(client.get("/t/acme/jwks").get_json()["keys"]) == len(before) + 1


def test_admin_key_bodies_are_optional_objects(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    for path in ("/admin/v1/tenants/acme/admin-keys", "/admin/v1/admin-keys"):
        assert client.post(path, headers=admin.headers).status_code == 201  # no body: no label
        refused = client.post(path, data="null", headers={**admin.headers, "Content-Type": "application/json"})
        assert refused.status_code == 400, refused.get_json()
    doc = client.get("/admin/v1/openapi.json").get_json()
    assert doc["paths"]["/admin-keys"]["post"]["requestBody"]["required"] is False
    assert doc["paths"]["/tenants/{t}/admin-keys"]["post"]["requestBody"]["required"] is False


def test_a_405_names_the_allowed_methods(admin: AdminClient, client: FlaskClient) -> None:
    r = client.put("/admin/v1/tenants", headers=admin.headers)
    assert r.status_code == 405 and r.get_json()["error"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} >= {"GET", "POST"}
    r = client.delete("/t/acme/token")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]


def test_openapi_limits_match_the_server(admin: AdminClient, client: FlaskClient) -> None:
    from broker.claims.pipeline import MAX_SUBJECT_SOURCE_CHARS

    doc = client.get("/admin/v1/openapi.json").get_json()
    limit = doc["components"]["schemas"]["MappingBody"]["properties"]["subject_source"]
    assert MAX_SUBJECT_SOURCE_CHARS in (limit.get("maxLength"), *(x.get("maxLength") for x in limit.get("anyOf", [])))
    for path, method in (("/tenants/{t}", "delete"), ("/tenants/{t}/apps/{client_id}", "delete")):
        assert "400" in doc["paths"][path][method]["responses"]  # an empty If-Match


@pytest.mark.parametrize("slug", ["acme\n", "acme\r\n", "\nacme"])
def test_a_slug_with_a_line_break_is_refused(admin: AdminClient, slug: str) -> None:
    """`^...$` in Python matches before a final newline: slugs are checked to the end of the string, or
    `acme\\n` would be a second tenant that looks like `acme` (and an issuer URL with a line break)."""
    r = admin.call("POST", "/tenants", {"slug": slug, "name": "Lookalike"})
    assert r.status_code == 400, r.get_json()
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", {"slug": slug.replace("acme", "okta"), "protocol": "saml"})
    assert r.status_code == 400, r.get_json()
    assert [t["slug"] for t in admin.call("GET", "/tenants").get_json()["tenants"]] == ["acme"]


def test_openapi_states_the_slug_rule(client: FlaskClient) -> None:
    import re

    doc = client.get("/admin/v1/openapi.json").get_json()
    for schema in ("TenantCreate", "ConnectionBody"):
        pattern = doc["components"]["schemas"][schema]["properties"]["slug"]["pattern"]
        assert re.fullmatch(pattern.rstrip("$"), "acme-1") and not re.fullmatch(pattern.rstrip("$"), "Acme")


@pytest.mark.parametrize("name", ["invoice\u202egnp.exe", "a\u2066b", "line\nbreak", "tab\tname"])
def test_names_with_direction_overrides_or_control_characters_are_refused(admin: AdminClient, name: str) -> None:
    """A name shown to admins must display as what it is (`invoice\u202egnp.exe` shows as `invoiceexe.png`)."""
    assert admin.call("POST", "/tenants", {"slug": "acme", "name": name}).status_code == 400
    admin.tenant("acme")
    assert admin.call("PATCH", "/tenants/acme", {"name": name}).status_code == 400
    r = admin.call("POST", "/tenants/acme/apps", {"name": name, "redirect_uris": ["https://a.example/cb"]})
    assert r.status_code == 400
    ok = admin.call("POST", "/tenants/acme/apps", {"name": "Портал \u05e9\u05dc\u05d5\u05dd \U0001f469\u200d\U0001f4bb",
                                                    "redirect_uris": ["https://a.example/cb"]})
    assert ok.status_code == 201, ok.get_json()  # other scripts, right-to-left text and emoji are names


@pytest.mark.parametrize("raw", [
    b'{"name": "P", "redirect_uris": ["https://a.example/ok"], "redirect_uris": ["https://evil.example/cb"]}',
    b'{"name": "P", "redirect_uris": ["https://a.example/ok"], "public": true, "public": false}',
])
def test_a_json_body_naming_a_member_twice_is_refused(admin: AdminClient, client: FlaskClient, raw: bytes) -> None:
    """Parsers disagree on duplicate members (first wins, last wins): the admin API takes neither guess."""
    admin.tenant("acme")
    r = client.post("/admin/v1/tenants/acme/apps", data=raw, content_type="application/json",
                    headers=admin.headers)
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["error"] == "invalid_json" and "more than once" in body["message"]
    assert body["details"]["member"] in ("redirect_uris", "public")
    assert admin.call("GET", "/tenants/acme/apps").get_json()["apps"] == []


def test_a_nested_duplicate_member_is_refused_and_changes_nothing(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    before = admin.call("GET", "/tenants/acme").get_json()
    raw = b'{"name": "Acme", "settings": {"x": 1, "x": 2}}'
    r = client.patch("/admin/v1/tenants/acme", data=raw, content_type="application/json", headers=admin.headers)
    assert r.status_code == 400 and r.get_json()["details"] == {"member": "x"}
    assert admin.call("GET", "/tenants/acme").get_json() == before


def test_domains_are_kept_in_one_form_and_login_hints_are_compared_in_it(admin: AdminClient,
                                                                         client: FlaskClient) -> None:
    """Full-width letters, punycode, capitals and a trailing dot name the same domain (IDNA mapping), both
    when an admin saves it and when a login hint is routed to a connection."""
    admin.tenant("acme")
    metadata = SamlIdp(idp=make_idp("https://idp.acme.test"), url="https://idp.acme.test").metadata_xml()
    r = admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "domains": ["ＡＣＭＥ.test", "xn--bcher-kva.test", "Mixed.Test."],
        "saml": {"metadata_xml": metadata}})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["domains"] == ["acme.test", "bücher.test", "mixed.test"]
    app = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://a.example/cb"]})
    query = {"response_type": "code", "client_id": app.get_json()["client_id"], "scope": "openid",
             "redirect_uri": "https://a.example/cb", "state": "s"}
    for hint in ("bob@acme.test", "bob@ａｃｍｅ.test", "bob@xn--bcher-kva.test", "bob@BÜCHER.test", "bob@mixed.test."):
        r = client.get("/t/acme/authorize", query_string={**query, "login_hint": hint})
        assert r.status_code == 302 and r.headers["Location"].startswith("https://idp.acme.test/sso?SAMLRequest="), hint
    for hint in ("bob@acme.test.evil", "bob@acme", "bob@"):
        r = client.get("/t/acme/authorize", query_string={**query, "login_hint": hint})
        assert r.status_code == 200 and 'name="login_hint"' in r.get_data(as_text=True), hint


@pytest.mark.parametrize("domain", ["a..test", "x" * 64 + ".test", ".", "acme"])
def test_a_domain_that_is_no_domain_name_is_refused(admin: AdminClient, domain: str) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", {"slug": "okta", "protocol": "saml", "domains": [domain]})
    assert r.status_code == 400, r.get_json()
    assert admin.call("GET", "/tenants/acme/connections").get_json()["connections"] == []


@pytest.mark.parametrize("depth", [101, 600, 5000])
def test_json_nested_deeper_than_the_limit_is_400_not_a_crash(admin: AdminClient, client: FlaskClient,
                                                               depth: int) -> None:
    """A mapping rule is copied and checked level by level: a body nesting hundreds of levels used to end in
    RecursionError (a 500). Refused at the door, naming the limit, whatever the route."""
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "mapping": {"preset": "okta"}}).status_code == 201
    deep = "[" * depth + "]" * depth
    raw = ('{"attributes": {}, "mapping": {"rules": [{"op": "copy", "from": "a", "to": "b", "x": ' + deep
           + '}]}}').encode()
    for method, path in (("POST", "/tenants/acme/connections/okta/mapping/test"),
                         ("PATCH", "/tenants/acme/connections/okta")):
        r = client.open(f"/admin/v1{path}", method=method, data=raw, content_type="application/json",
                        headers=admin.headers)
        assert r.status_code == 400, (path, r.status_code, r.get_data()[:300])
        assert r.get_json()["error"] == "invalid_json" and "100 levels" in r.get_json()["message"]
    assert admin.call("GET", "/tenants/acme/connections/okta").get_json()["mapping"]["rules"] == []


def test_json_nested_as_deep_as_a_real_document_is_accepted(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    value: object = {}
    for _ in range(20):
        value = {"v": [value]}
    r = admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "mapping": {"preset": "okta"}, "x": value})
    assert r.status_code == 400 and r.get_json()["error"] != "invalid_json"  # parsed; refused as an unknown field


@pytest.mark.parametrize("label", ["evil\u202egnp.exe", "bell\u0007", "two\nlines"])
def test_admin_key_labels_are_names_too(admin: AdminClient, label: str) -> None:
    admin.tenant("acme")
    for path in ("/admin-keys", "/tenants/acme/admin-keys"):
        r = admin.call("POST", path, {"label": label})
        assert r.status_code == 400, r.get_json()
    assert [k["label"] for k in admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]] == []


def test_answers_carrying_a_secret_are_never_stored_and_reads_are_revalidated(admin: AdminClient) -> None:
    admin.tenant("acme")
    for path, body in (("/tenants/acme/admin-keys", {}), ("/admin-keys", {}),
                       ("/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://a.example/cb"]})):
        r = admin.call("POST", path, body)
        assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store", path
    assert admin.call("GET", "/tenants/acme").headers["Cache-Control"] == "private, no-cache"
    assert admin.call("GET", "/tenants/nope").headers["Cache-Control"] == "private, no-cache"


def test_a_long_name_in_the_path_is_not_echoed_whole(admin: AdminClient) -> None:
    r = admin.call("GET", "/tenants/" + "a" * 3000)
    assert r.status_code == 404 and len(r.get_json()["message"]) < 200


@pytest.mark.parametrize("patch", [{"public": 0}, {"access_token_ttl": 600.0}])
def test_a_patch_of_the_wrong_type_is_refused_even_when_python_calls_it_equal(admin: AdminClient,
                                                                             patch: dict[str, object]) -> None:
    admin.tenant("acme")
    created = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://a.example/cb"],
                                                         "access_token_ttl": 600})
    assert created.status_code == 201, created.get_json()
    r = admin.call("PATCH", f"/tenants/acme/apps/{created.get_json()['client_id']}", patch)
    assert r.status_code == 400, r.get_json()

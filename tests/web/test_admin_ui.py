"""Admin pages (/admin/ui) through the Flask test client: sign-in and sessions, CSRF refusals, tenant-scoped
isolation (404), the two-step SAML connection wizard, the mapping dry run, the connection test, apps and audit.
Every bad form input is a clear message and writes nothing."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tests.conftest import BOOTSTRAP_KEY, AdminClient
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp, User, parse_autopost

UI = "/admin/ui"
ENTITY_ID = "https://idp.ui.test/saml"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
DRAFT_RE = re.compile(r'name="draft" value="([^"]+)"')


def idp() -> SamlIdp:
    return SamlIdp(idp=make_idp(ENTITY_ID), url="http://idp.ui.test")


def metadata_xml() -> str:
    return idp().metadata_xml()


def text(r: Any) -> str:
    return html.unescape(r.get_data(as_text=True))


def csrf_of(client: FlaskClient, path: str = f"{UI}/sign-in") -> str:
    r = client.get(path)
    assert r.status_code == 200, r.status_code
    m = CSRF_RE.search(r.get_data(as_text=True))
    assert m, "no csrf field"
    return m.group(1)


def sign_in(client: FlaskClient, key: str = BOOTSTRAP_KEY) -> str:
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": key, "next": "/admin/ui/"})
    assert r.status_code == 303, text(r)
    return csrf_of(client, f"{UI}/tenants")


def connection_count(admin: AdminClient, tenant: str = "acme") -> int:
    return len(admin.call("GET", f"/tenants/{tenant}/connections").get_json()["connections"])


def upload(client: FlaskClient, csrf: str, tenant: str = "acme", xml: str | None = None, **extra: Any) -> Any:
    data: dict[str, Any] = {"csrf": csrf, **extra}
    if xml is not None:
        data["metadata_file"] = (__import__("io").BytesIO(xml.encode()), "idp-metadata.xml")
    return client.post(f"{UI}/tenants/{tenant}/connections/new", data=data, content_type="multipart/form-data")


def create_saml(client: FlaskClient, csrf: str, slug: str = "okta", domains: str = "acme.test",
                preset: str = "okta", tenant: str = "acme") -> Any:
    r = upload(client, csrf, tenant, metadata_xml())
    assert r.status_code == 200, text(r)
    draft = DRAFT_RE.search(r.get_data(as_text=True))
    assert draft
    return client.post(f"{UI}/tenants/{tenant}/connections/new/save",
                       data={"csrf": csrf, "draft": draft.group(1), "slug": slug, "domains": domains,
                             "preset": preset})


@pytest.fixture
def ui(client: FlaskClient, admin: AdminClient) -> str:
    admin.tenant("acme", "Acme Corp")
    return sign_in(client)


# -- sign-in and the session ----------------------------------------------------------------------------------


def test_pages_need_sign_in(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme")
    r = client.get(f"{UI}/tenants/acme/connections")
    assert r.status_code == 303 and urlsplit(r.headers["Location"]).path == f"{UI}/sign-in"
    r = client.post(f"{UI}/tenants/acme/connections/new", data={"metadata_url": "https://x.test/md"})
    assert r.status_code == 303 and connection_count(admin) == 0


def test_wrong_key_is_a_clear_message(client: FlaskClient) -> None:
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": "not-a-key"})
    assert r.status_code == 401 and "That admin key is not valid." in text(r)
    r = client.post(f"{UI}/sign-in", data={"csrf": csrf_of(client), "admin_key": ""})
    assert r.status_code == 400 and "Enter an admin key." in text(r)


def test_session_cookie_is_strict_httponly_and_never_the_key(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme")
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": BOOTSTRAP_KEY})
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin/ui" in cookie
    assert BOOTSTRAP_KEY not in cookie
    # the session id changes at sign-in (no fixation) and the pre-sign-in token no longer works
    r = client.post(f"{UI}/sign-out", data={"csrf": token})
    assert r.status_code == 403
    page = client.get(f"{UI}/tenants/acme/connections")
    assert page.status_code == 200 and "Connections" in text(page)
    assert "no-store" in page.headers["Cache-Control"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    # an injected form could not post anywhere else (defence in depth: nothing is known to inject one)
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]


def test_sign_out_ends_the_session(client: FlaskClient, ui: str) -> None:
    r = client.post(f"{UI}/sign-out", data={"csrf": ui})
    assert r.status_code == 303
    assert client.get(f"{UI}/tenants").status_code == 303


def test_sign_in_redirects_back_only_inside_admin_ui(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme")
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": BOOTSTRAP_KEY, "next": "//evil.test/x"})
    assert r.headers["Location"].endswith("/admin/ui/")


@pytest.mark.parametrize("next_url", [
    "/admin/ui/../../t/evil/authorize?client_id=x", "/admin/ui/%2e%2e/%2e%2e/demo", "/admin/ui/./../../demo",
    "/admin/ui/%2E%2E/x", "/admin/ui/..%2f..%2fdemo", "/admin/ui/..", "/admin/ui/%5c..%5cx",
])
def test_sign_in_never_redirects_out_through_dot_segments(client: FlaskClient, admin: AdminClient,
                                                          next_url: str) -> None:
    """The browser resolves `/admin/ui/../../x` to `/x` after any prefix check: such a `next` is refused."""
    admin.tenant("acme")
    page = client.get(f"{UI}/sign-in", query_string={"next": next_url}).get_data(as_text=True)
    assert 'value="/admin/ui/"' in page
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": BOOTSTRAP_KEY, "next": next_url})
    assert r.status_code == 303 and r.headers["Location"] == "/admin/ui/"


def test_sign_in_keeps_a_next_inside_admin_ui(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme")
    token = csrf_of(client)
    r = client.post(f"{UI}/sign-in", data={"csrf": token, "admin_key": BOOTSTRAP_KEY,
                                            "next": "/admin/ui/tenants/acme/audit?type=login"})
    assert r.headers["Location"] == "/admin/ui/tenants/acme/audit?type=login"


# -- CSRF ------------------------------------------------------------------------------------------------------


def test_sign_in_without_csrf_is_refused(client: FlaskClient) -> None:
    client.get(f"{UI}/sign-in")
    r = client.post(f"{UI}/sign-in", data={"admin_key": BOOTSTRAP_KEY})
    assert r.status_code == 403 and "expired" in text(r)
    assert client.get(f"{UI}/tenants").status_code == 303  # not signed in


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_every_form_refuses_a_missing_or_wrong_csrf_token(client: FlaskClient, admin: AdminClient, ui: str,
                                                        token: str | None) -> None:
    assert create_saml(client, ui).status_code == 303
    acme_key_id = admin.call("POST", "/tenants/acme/admin-keys", {"label": "kept"}).get_json()["id"]
    signing = admin.call("POST", "/tenants/acme/keys/rotate").get_json()["keys"][1]["kid"]  # a retired one
    keys_before = admin.call("GET", "/tenants/acme/keys").get_json()
    before = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    extra = {} if token is None else {"csrf": token}
    posts: list[tuple[str, dict[str, Any]]] = [
        ("/tenants/acme/connections/new", {"metadata_xml": metadata_xml()}),
        ("/tenants/acme/connections/new/save", {"draft": "x", "slug": "other"}),
        ("/tenants/acme/connections/okta/mapping", {"action": "save", "preset": "google", "rules": "[]"}),
        ("/tenants/acme/connections/okta/metadata", {}),
        ("/tenants/acme/connections/okta/delete", {"confirm": "okta"}),
        ("/tenants/acme/connections/okta/test", {}),
        ("/tenants/acme/admin-keys", {"label": "x"}),
        (f"/tenants/acme/admin-keys/{acme_key_id}/revoke", {}),
        ("/tenants/acme/signing-keys/rotate", {"alg": "RS256", "activate_after": "0"}),
        (f"/tenants/acme/signing-keys/{signing}/revoke", {"confirm": signing[:8]}),
        ("/sign-out", {}),
    ]
    for path, data in posts:
        r = client.post(UI + path, data={**data, **extra})
        assert r.status_code == 403, path
        assert "Nothing was changed" in text(r)
    after = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    assert after["version"] == before["version"] and after["mapping"] == before["mapping"]
    assert connection_count(admin) == 1
    assert [k["id"] for k in admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]] == [acme_key_id]
    assert admin.call("GET", "/tenants/acme/keys").get_json() == keys_before
    assert client.get(f"{UI}/tenants").status_code == 200  # still signed in


# -- tenant-scoped keys ----------------------------------------------------------------------------------------


def test_tenant_key_sees_only_its_tenant(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme", "Acme Corp")
    admin.tenant("globex", "Globex")
    r = admin.call("POST", "/tenants/globex/connections",
                   {"slug": "secret-idp", "protocol": "saml", "saml": {"metadata_xml": metadata_xml()}})
    assert r.status_code == 201
    admin.call("POST", "/tenants/globex/apps", {"name": "Globex app", "redirect_uris": ["https://g.test/cb"]})
    key = admin.call("POST", "/tenants/acme/admin-keys", {}).get_json()["key"]
    csrf = sign_in(client, key)
    listing = text(client.get(f"{UI}/tenants"))
    assert "Acme Corp" in listing and "Globex" not in listing
    assert client.get(f"{UI}/").headers["Location"].endswith("/tenants/acme/connections")
    globex_key_id = admin.call("POST", "/tenants/globex/admin-keys", {}).get_json()["id"]
    globex_kid = admin.call("POST", "/tenants/globex/keys/rotate").get_json()["keys"][1]["kid"]  # a retired one
    globex_keys = admin.call("GET", "/tenants/globex/keys").get_json()
    for path in ("/tenants/globex", "/tenants/globex/connections", "/tenants/globex/connections/secret-idp",
                 "/tenants/globex/apps", "/tenants/globex/audit", "/tenants/globex/connections/new",
                 "/tenants/globex/admin-keys", "/tenants/globex/signing-keys",
                 "/tenants/globex/connections/secret-idp/test/abc", "/tenants/nope/connections"):
        r = client.get(UI + path)
        assert r.status_code == 404, path
        assert "secret-idp" not in text(r) and "Globex app" not in text(r)
    for path, data in (("/tenants/globex/connections/new", {"metadata_xml": metadata_xml()}),
                       ("/tenants/globex/connections/secret-idp/mapping", {"action": "save", "rules": "[]"}),
                       ("/tenants/globex/connections/secret-idp/delete", {"confirm": "secret-idp"}),
                       ("/tenants/globex/connections/secret-idp/test", {}),
                       ("/tenants/globex/admin-keys", {"label": "mine now"}),
                       (f"/tenants/globex/admin-keys/{globex_key_id}/revoke", {}),
                       (f"/tenants/acme/admin-keys/{globex_key_id}/revoke", {}),
                       ("/tenants/globex/signing-keys/rotate", {"alg": "RS256", "activate_after": "0"}),
                       (f"/tenants/globex/signing-keys/{globex_kid}/revoke", {"confirm": globex_kid[:8]}),
                       (f"/tenants/acme/signing-keys/{globex_kid}/revoke", {"confirm": globex_kid[:8]})):
        r = client.post(UI + path, data={"csrf": csrf, **data})
        assert r.status_code == 404, path
    assert connection_count(admin, "globex") == 1
    assert [k["id"] for k in admin.call("GET", "/tenants/globex/admin-keys").get_json()["admin_keys"]] == [
        globex_key_id]
    assert admin.call("GET", "/tenants/globex/keys").get_json() == globex_keys


# -- create a SAML connection ----------------------------------------------------------------------------------


def test_upload_shows_what_was_understood_before_saving(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    r = upload(client, ui, xml=metadata_xml())
    body = text(r)
    assert r.status_code == 200
    assert ENTITY_ID in body and "http://idp.ui.test/sso" in body
    assert "days left" in body and "signing" in body and "SHA-256" in body
    assert connection_count(admin) == 0  # nothing saved yet
    draft = DRAFT_RE.search(r.get_data(as_text=True))
    assert draft
    r = client.post(f"{UI}/tenants/acme/connections/new/save",
                    data={"csrf": ui, "draft": draft.group(1), "slug": "okta", "domains": "acme.test, acme.org",
                          "preset": "okta"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/tenants/acme/connections/okta?notice=created")
    conn = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    assert conn["domains"] == ["acme.test", "acme.org"] and conn["mapping"]["preset"] == "okta"
    page = text(client.get(f"{UI}/tenants/acme/connections/okta?notice=created"))
    assert "http://broker.test/t/acme/connections/okta/saml/acs" in page
    assert "http://broker.test/t/acme/connections/okta/saml/metadata" in page
    assert 'data-copy="sp-acs"' in page and ENTITY_ID in page and "The connection was saved" in page
    listing = text(client.get(f"{UI}/tenants/acme/connections"))
    assert "okta" in listing and "days left" in listing and "never" in listing
    # the draft is used up
    r = client.post(f"{UI}/tenants/acme/connections/new/save",
                    data={"csrf": ui, "draft": draft.group(1), "slug": "okta2"})
    assert r.status_code == 400 and "preview expired" in text(r) and connection_count(admin) == 1


def test_pasted_xml_and_url_previews(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    r = upload(client, ui, metadata_xml="  \n" + metadata_xml())
    assert r.status_code == 200 and ENTITY_ID in text(r)
    fetcher = client.application.extensions["broker"].admin

    def fetch(url: str) -> bytes:
        assert url == "https://idp.ui.test/metadata"
        return metadata_xml().encode()

    fetcher.fetch_metadata = fetch
    r = upload(client, ui, metadata_url="https://idp.ui.test/metadata")
    assert r.status_code == 200 and ENTITY_ID in text(r) and "https://idp.ui.test/metadata" in text(r)
    draft = DRAFT_RE.search(r.get_data(as_text=True))
    assert draft
    r = client.post(f"{UI}/tenants/acme/connections/new/save",
                    data={"csrf": ui, "draft": draft.group(1), "slug": "by-url"})
    assert r.status_code == 303
    assert admin.call("GET", "/tenants/acme/connections/by-url").get_json()["saml"]["metadata_url"] == \
        "https://idp.ui.test/metadata"


@pytest.mark.parametrize(("data", "message"), [
    ({}, "Give the IdP metadata one way"),
    ({"metadata_url": "https://a.test/md", "metadata_xml": "<x/>"}, "only one way"),
    ({"metadata_xml": "not xml at all"}, "The IdP metadata was not accepted"),
    ({"metadata_xml": "<html><body>login</body></html>"}, "not SAML 2.0 metadata"),
    ({"metadata_xml": '<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>'}, "The IdP metadata was not accepted"),
    ({"metadata_url": "ftp://idp.test/md"}, "metadata_url"),
])
def test_bad_metadata_is_a_clear_message_and_saves_nothing(client: FlaskClient, admin: AdminClient, ui: str,
                                                           data: dict[str, str], message: str) -> None:
    r = upload(client, ui, **data)
    assert r.status_code == 400
    body = text(r)
    assert message in body and 'class="msg error"' in r.get_data(as_text=True)
    assert "Traceback" not in body
    assert connection_count(admin) == 0


def test_binary_upload_is_refused(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    r = client.post(f"{UI}/tenants/acme/connections/new", content_type="multipart/form-data",
                    data={"csrf": ui, "metadata_file": (__import__("io").BytesIO(b"\xff\xfe\x00bin"), "x.xml")})
    assert r.status_code == 400 and "not UTF-8" in text(r) and connection_count(admin) == 0


def test_unreachable_metadata_url_is_a_clear_message(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    from broker.errors import ValidationFailed

    def fetch(url: str) -> bytes:
        raise ValidationFailed(f"The IdP metadata URL {url} cannot be used: it answered HTTP 404.",
                               code="metadata_unavailable")

    client.application.extensions["broker"].admin.fetch_metadata = fetch
    r = upload(client, ui, metadata_url="https://idp.ui.test/missing")
    assert r.status_code == 400 and "it answered HTTP 404" in text(r) and connection_count(admin) == 0


@pytest.mark.parametrize(("form", "message"), [
    ({"slug": "Not A Slug"}, "Invalid field slug"),
    ({"slug": "ok", "domains": "not-a-domain"}, "is not a domain name"),
    ({"slug": "ok", "preset": "no-such-preset"}, "preset"),
])
def test_bad_save_form_is_a_clear_message_and_saves_nothing(client: FlaskClient, admin: AdminClient, ui: str,
                                                            form: dict[str, str], message: str) -> None:
    r = upload(client, ui, xml=metadata_xml())
    draft = DRAFT_RE.search(r.get_data(as_text=True))
    assert draft
    r = client.post(f"{UI}/tenants/acme/connections/new/save", data={"csrf": ui, "draft": draft.group(1), **form})
    assert r.status_code == 400
    assert message in text(r) and ENTITY_ID in text(r)  # the preview is shown again
    assert connection_count(admin) == 0


def test_duplicate_slug_and_domain_clash_are_messages(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    assert create_saml(client, ui, slug="okta", domains="acme.test").status_code == 303
    r = create_saml(client, ui, slug="okta", domains="other.test")
    assert r.status_code == 400 and "already exists" in text(r)
    r = create_saml(client, ui, slug="second", domains="acme.test")
    assert r.status_code == 400 and "already used by connection" in text(r)
    assert connection_count(admin) == 1


def test_escapes_what_the_metadata_says(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    evil = metadata_xml().replace(f'entityID="{ENTITY_ID}"', 'entityID="https://x.test/&lt;script&gt;alert(1)"')
    r = upload(client, ui, xml=evil)
    assert r.status_code == 200
    raw = r.get_data(as_text=True)
    assert "<script>alert" not in raw and "&lt;script&gt;alert(1)" in raw


def test_a_draft_belongs_to_its_session(client: FlaskClient, admin: AdminClient, ui: str, app: Any) -> None:
    r = upload(client, ui, xml=metadata_xml())
    draft = DRAFT_RE.search(r.get_data(as_text=True))
    assert draft
    other = app.test_client()
    csrf = sign_in(other)
    r = other.post(f"{UI}/tenants/acme/connections/new/save", data={"csrf": csrf, "draft": draft.group(1),
                                                                   "slug": "stolen"})
    assert r.status_code == 400 and connection_count(admin) == 0


# -- mapping editor ----------------------------------------------------------------------------------------------


def test_mapping_dry_run_shows_profile_and_steps_and_saves_nothing(client: FlaskClient, admin: AdminClient,
                                                                  ui: str) -> None:
    create_saml(client, ui)
    version = admin.call("GET", "/tenants/acme/connections/okta").get_json()["version"]
    rules = '[{"op": "map_values", "from": "groups", "to": "roles", "table": {"Admins": "admin"}, "default": "member"}]'
    r = client.post(f"{UI}/tenants/acme/connections/okta/mapping", data={
        "csrf": ui, "action": "dry_run", "preset": "okta", "rules": rules,
        "sample": '{"email": ["bob@acme.test"], "firstName": "Bob", "groups": ["Admins"]}', "subject": "bob"})
    body = text(r)
    assert r.status_code == 200 and 'id="dry-run-result"' in body
    assert "bob@acme.test" in body and "admin" in body and "map_values" in body
    assert admin.call("GET", "/tenants/acme/connections/okta").get_json()["version"] == version
    # a refusing mapping is shown as such
    r = client.post(f"{UI}/tenants/acme/connections/okta/mapping", data={
        "csrf": ui, "action": "dry_run", "preset": "okta", "rules": '[{"op": "require", "claim": "department"}]',
        "sample": '{"email": "bob@acme.test"}'})
    assert r.status_code == 200 and "The login would be refused" in text(r)


def test_mapping_save(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    create_saml(client, ui)
    rules = '[{"op": "copy", "from": "department", "to": "department"}]'
    r = client.post(f"{UI}/tenants/acme/connections/okta/mapping",
                    data={"csrf": ui, "action": "save", "preset": "google", "rules": rules})
    assert r.status_code == 303 and "notice=mapping_saved" in r.headers["Location"]
    mapping = admin.call("GET", "/tenants/acme/connections/okta").get_json()["mapping"]
    assert mapping == {"preset": "google", "rules": [{"op": "copy", "from": "department", "to": "department"}]}


@pytest.mark.parametrize(("form", "message"), [
    ({"action": "save", "rules": "[{oops"}, "The rules is not valid JSON"),
    ({"action": "save", "rules": '{"op": "copy"}'}, "must be a JSON list"),
    ({"action": "save", "rules": '[{"op": "eval", "code": "1"}]'}, "eval"),
    ({"action": "save", "rules": "[]", "preset": "nope"}, "nope"),
    ({"action": "dry_run", "rules": "[]", "sample": "[1]"}, "must be a JSON object"),
    ({"action": "dry_run", "rules": "[]", "sample": '{"email": 5}'}, "Invalid field attributes"),
    ({"action": "delete-everything", "rules": "[]"}, "Unknown action"),
    ({"action": "save", "rules": '[{"op": "copy", "from": "a", "to": "email", "to": "roles"}]'}, "more than once"),
    ({"action": "save", "rules": "[" * 5000 + "]" * 5000}, "nested too deeply"),
    ({"action": "dry_run", "rules": "[]", "sample": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"}, "nested too deeply"),
])
def test_bad_mapping_input_is_a_message_and_writes_nothing(client: FlaskClient, admin: AdminClient, ui: str,
                                                          form: dict[str, str], message: str) -> None:
    create_saml(client, ui)
    before = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    r = client.post(f"{UI}/tenants/acme/connections/okta/mapping", data={"csrf": ui, "preset": "okta", **form})
    assert r.status_code == 400, text(r)
    assert message in text(r) and "Traceback" not in text(r)
    assert form["rules"] in text(r)  # the input is kept for correction
    after = admin.call("GET", "/tenants/acme/connections/okta").get_json()
    assert after["version"] == before["version"] and after["mapping"] == before["mapping"]


def test_replace_metadata_and_delete(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    create_saml(client, ui)
    r = client.post(f"{UI}/tenants/acme/connections/okta/metadata", content_type="multipart/form-data",
                    data={"csrf": ui, "metadata_file": (__import__("io").BytesIO(b"<nope/>"), "x.xml")})
    assert r.status_code == 400 and "not SAML 2.0 metadata" in text(r)
    r = client.post(f"{UI}/tenants/acme/connections/okta/delete", data={"csrf": ui, "confirm": "wrong"})
    assert r.status_code == 400 and "Type the connection" in text(r) and connection_count(admin) == 1
    r = client.post(f"{UI}/tenants/acme/connections/okta/delete", data={"csrf": ui, "confirm": "okta"})
    assert r.status_code == 303 and connection_count(admin) == 0


# -- test this connection ----------------------------------------------------------------------------------------


def test_connection_test_runs_a_real_login_and_shows_raw_and_mapped_claims(client: FlaskClient, admin: AdminClient,
                                                                           ui: str) -> None:
    create_saml(client, ui)
    r = client.post(f"{UI}/tenants/acme/connections/okta/test", data={"csrf": ui})
    # not a 302: the page's CSP (form-action 'self') would stop a browser from following it to the IdP's origin;
    # a page of ours hands over with a new navigation
    assert r.status_code == 200, text(r)
    assert "form-action 'self'" in r.headers["Content-Security-Policy"]
    m = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]+)">', text(r))
    assert m is not None
    location = html.unescape(m.group(1))
    assert f'<a href="{m.group(1)}">' in text(r)
    assert location.startswith("http://idp.ui.test/sso?") and "SAMLRequest=" in location
    fake = idp()
    fake.user = User(name_id="carol@acme.test", attributes={
        "email": ["carol@acme.test"], "firstName": ["Carol"], "lastName": ["Jones"], "groups": ["Admins"]})
    split = urlsplit(location)
    answer = fake.handle(Request(EnvironBuilder(path=split.path, query_string=split.query).get_environ()))
    action, fields = parse_autopost(answer.get_data(as_text=True))
    assert action == "http://broker.test/t/acme/connections/okta/saml/acs"
    r = client.post(urlsplit(action).path, data=fields)
    assert r.status_code == 302, text(r)
    result_url = r.headers["Location"]
    assert "/admin/ui/tenants/acme/connections/okta/test/" in result_url
    page = client.get(urlsplit(result_url).path)
    body = text(page)
    assert page.status_code == 200, body
    assert 'id="raw-claims"' in body and 'id="mapped-claims"' in body
    assert "firstName" in body and "Carol" in body and "carol@acme.test" in body and ENTITY_ID in body
    assert "given_name" in body and "Jones" in body
    # last login is only for real logins: a test does not count
    # the result is visible to this session only
    other = client.application.test_client()
    sign_in(other)
    assert other.get(urlsplit(result_url).path).status_code == 404
    # the raw attributes can seed the mapping dry run
    txn = result_url.rsplit("/", 1)[1]
    seeded = text(client.get(f"{UI}/tenants/acme/connections/okta?sample={txn}"))
    assert "Carol" in seeded


def test_result_without_cookie_reloads_once_then_signs_in(client: FlaskClient, ui: str, app: Any) -> None:
    anon = app.test_client()
    r = anon.get(f"{UI}/tenants/acme/connections/okta/test/abc")
    assert r.status_code == 200 and 'http-equiv="refresh"' in r.get_data(as_text=True)
    r = anon.get(f"{UI}/tenants/acme/connections/okta/test/abc?r=1")
    assert r.status_code == 303


def test_connection_test_without_metadata_is_a_message(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    assert admin.call("POST", "/tenants/acme/connections", {"slug": "empty", "protocol": "saml"}).status_code == 201
    r = client.post(f"{UI}/tenants/acme/connections/empty/test", data={"csrf": ui})
    assert r.status_code in (400, 503) and 'class="msg error"' in r.get_data(as_text=True)
    assert "Traceback" not in text(r)


def test_unknown_test_result_is_404(client: FlaskClient, ui: str) -> None:
    create_saml(client, ui)
    assert client.get(f"{UI}/tenants/acme/connections/okta/test/nope").status_code == 404


# -- apps and audit ------------------------------------------------------------------------------------------------


def test_apps_list_shows_no_secrets(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    r = admin.call("POST", "/tenants/acme/apps", {"name": "Portal <b>", "redirect_uris": ["https://p.test/cb"]})
    created = r.get_json()
    page = client.get(f"{UI}/tenants/acme/apps")
    body = page.get_data(as_text=True)
    assert created["client_id"] in body and "https://p.test/cb" in body and "Portal &lt;b&gt;" in body
    assert created["client_secret"] not in body


def test_audit_log_filters_and_pages(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    for i in range(55):
        admin.call("PATCH", "/tenants/acme", {"name": f"Acme {i}"})
    page = client.get(f"{UI}/tenants/acme/audit?type=admin&outcome=success")
    body = text(page)
    assert page.status_code == 200 and body.count("tenant.update") == 50
    m = re.search(r'href="([^"]+)" id="older"', page.get_data(as_text=True))
    assert m
    older = text(client.get(html.unescape(m.group(1))))
    assert "tenant.update" in older and "Newest" in older
    assert "tenant.update" not in text(client.get(f"{UI}/tenants/acme/audit?type=login"))
    r = client.get(f"{UI}/tenants/acme/audit?type=bogus")
    assert r.status_code == 400 and "type must be login, admin or token" in text(r)
    r = client.get(f"{UI}/tenants/acme/audit?cursor=x")
    assert r.status_code == 400 and "cursor is not valid" in text(r)


# -- admin keys -------------------------------------------------------------------------------------------------


def test_admin_keys_page_creates_a_key_shown_once_and_revokes_keys(client: FlaskClient, admin: AdminClient,
                                                                   ui: str) -> None:
    page = text(client.get(f"{UI}/tenants/acme/admin-keys"))
    assert "no admin keys of its own" in page
    r = client.post(f"{UI}/tenants/acme/admin-keys", data={"csrf": ui, "label": "CI pipeline"})
    assert r.status_code == 200, text(r)
    shown = re.search(r'id="new-key-value">([^<]+)<', r.get_data(as_text=True))
    assert shown and shown.group(1).startswith("bk_")
    new_key = shown.group(1)
    assert AdminClient(client, new_key).call("GET", "/tenants/acme").status_code == 200
    listing = text(client.get(f"{UI}/tenants/acme/admin-keys"))
    assert "CI pipeline" in listing and new_key not in listing, "the key is shown only once"
    key_id = admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"][0]["id"]
    r = client.post(f"{UI}/tenants/acme/admin-keys/{key_id}/revoke", data={"csrf": ui})
    assert r.status_code == 303 and r.headers["Location"].endswith("/tenants/acme/admin-keys?notice=key_revoked")
    assert "was revoked" in text(client.get(r.headers["Location"]))
    assert AdminClient(client, new_key).call("GET", "/tenants/acme").status_code == 401
    events = admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"]
    assert events[0]["details"]["action"] == "admin_key.revoke"


def test_the_new_key_form_sent_twice_makes_one_key(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    """Reloading the page that shows the new key sends its form again: no second key (whose value nobody
    would see), a notice instead. A form refused for its label can be corrected and sent again."""
    page = client.get(f"{UI}/tenants/acme/admin-keys").get_data(as_text=True)
    once = re.search(r'name="once" value="([^"]+)"', page)
    assert once
    form = {"csrf": ui, "label": "x" * 201, "once": once.group(1)}
    assert client.post(f"{UI}/tenants/acme/admin-keys", data=form).status_code == 400
    form["label"] = "deploys"
    first = client.post(f"{UI}/tenants/acme/admin-keys", data=form)
    assert first.status_code == 200 and 'id="new-key-value"' in first.get_data(as_text=True)
    again = client.post(f"{UI}/tenants/acme/admin-keys", data=form)
    assert again.status_code == 303 and again.headers["Location"].endswith("notice=key_already_created")
    assert "no second key was made" in text(client.get(again.headers["Location"]))
    assert [k["label"] for k in admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]] == ["deploys"]
    other = re.search(r'name="once" value="([^"]+)"', first.get_data(as_text=True))
    assert other and other.group(1) != once.group(1)  # the page it answered with makes the next key
    form["once"] = other.group(1)
    assert client.post(f"{UI}/tenants/acme/admin-keys", data=form).status_code == 200
    assert len(admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]) == 2


def test_a_too_long_label_is_a_clear_message_and_creates_nothing(client: FlaskClient, admin: AdminClient,
                                                                 ui: str) -> None:
    r = client.post(f"{UI}/tenants/acme/admin-keys", data={"csrf": ui, "label": "x" * 201})
    assert r.status_code == 400 and 'role="alert"' in r.get_data(as_text=True)
    assert admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"] == []


def test_a_key_made_with_an_expiry_shows_it_and_an_unknown_choice_makes_nothing(client: FlaskClient,
                                                                                 admin: AdminClient, ui: str) -> None:
    r = client.post(f"{UI}/tenants/acme/admin-keys", data={"csrf": ui, "label": "ci", "expires_in": "2592000"})
    assert r.status_code == 200 and "It expires" in text(r)
    (made,) = admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]
    assert made["expires_at"] is not None
    assert "never" not in text(client.get(f"{UI}/tenants/acme/admin-keys")).split("New key")[0]
    for bad in ("30 days", "-5", "60"):  # not a number of seconds; under the 300 s minimum
        r = client.post(f"{UI}/tenants/acme/admin-keys", data={"csrf": ui, "label": "x", "expires_in": bad})
        assert r.status_code == 400 and 'role="alert"' in r.get_data(as_text=True)
    assert len(admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]) == 1


def test_an_expired_key_cannot_sign_in_and_its_session_ends(database_url: str) -> None:
    from broker.app import create_app
    from broker.ports import FrozenClock
    from broker.settings import load_settings
    from broker.store.state import MemoryStateStore
    from tests.conftest import close_app, make_env

    clock = FrozenClock(1_900_000_000.0)
    app = create_app(load_settings(make_env(database_url)), clock=clock, state=MemoryStateStore(clock=clock.now))
    try:
        client = app.test_client()
        admin = AdminClient(client, BOOTSTRAP_KEY)
        admin.tenant("acme", "Acme Corp")
        created = admin.call("POST", "/tenants/acme/admin-keys", {"label": "short", "expires_in": 600}).get_json()
        sign_in(client, created["key"])
        assert client.get(f"{UI}/tenants/acme/admin-keys").status_code == 200
        clock.advance(600)
        r = client.get(f"{UI}/tenants/acme/admin-keys")
        assert r.status_code == 303 and "/admin/ui/sign-in" in r.headers["Location"]
        csrf = csrf_of(client)
        r = client.post(f"{UI}/sign-in", data={"csrf": csrf, "admin_key": created["key"], "next": f"{UI}/"})
        assert r.status_code == 401 and "has expired" in text(r)
    finally:
        close_app(app)


def test_revoking_the_key_of_this_session_signs_it_out(client: FlaskClient, admin: AdminClient) -> None:
    admin.tenant("acme", "Acme Corp")
    created = admin.call("POST", "/tenants/acme/admin-keys", {"label": "mine"}).get_json()
    csrf = sign_in(client, created["key"])
    assert "this session" in text(client.get(f"{UI}/tenants/acme/admin-keys"))
    r = client.post(f"{UI}/tenants/acme/admin-keys/{created['id']}/revoke", data={"csrf": csrf})
    assert r.status_code == 303
    r = client.get(f"{UI}/tenants/acme/admin-keys")
    assert r.status_code == 303 and "/admin/ui/sign-in" in r.headers["Location"]


# -- signing keys ----------------------------------------------------------------------------------------------


def _kids(admin: AdminClient) -> dict[str, str]:
    return {k["kid"]: k["status"] for k in admin.call("GET", "/tenants/acme/keys").get_json()["keys"]}


def test_signing_keys_page_rotates_stages_and_revokes(client: FlaskClient, admin: AdminClient, ui: str) -> None:
    first = next(iter(_kids(admin)))
    page = text(client.get(f"{UI}/tenants/acme/signing-keys"))
    assert first in page and "active" in page and "BEGIN" not in page and '"d"' not in page
    r = client.post(f"{UI}/tenants/acme/signing-keys/rotate", data={"csrf": ui, "alg": "RS256",
                                                                     "activate_after": "86400"})
    assert r.status_code == 303 and r.headers["Location"].endswith("notice=signing_key_staged")
    pending = next(k for k, s in _kids(admin).items() if s == "pending")
    assert "published" in text(client.get(r.headers["Location"]))
    # the key that signs: refused with the API's sentence, nothing changed
    r = client.post(f"{UI}/tenants/acme/signing-keys/{first}/revoke", data={"csrf": ui, "confirm": first[:8]})
    assert r.status_code == 409 and "rotate first" in text(r) and _kids(admin)[first] == "active"
    # a pending key, without and with the confirmation
    r = client.post(f"{UI}/tenants/acme/signing-keys/{pending}/revoke", data={"csrf": ui, "confirm": "x"})
    assert r.status_code == 400 and _kids(admin)[pending] == "pending"
    r = client.post(f"{UI}/tenants/acme/signing-keys/{pending}/revoke", data={"csrf": ui, "confirm": pending[:8]})
    assert r.status_code == 303 and r.headers["Location"].endswith("notice=signing_key_revoked")
    assert _kids(admin) == {pending: "revoked", first: "active"}
    r = client.post(f"{UI}/tenants/acme/signing-keys/rotate", data={"csrf": ui, "alg": "ES256", "activate_after": "0"})
    assert r.status_code == 303 and r.headers["Location"].endswith("notice=signing_key_rotated")
    assert sorted(_kids(admin).values()) == ["active", "active", "revoked"]


@pytest.mark.parametrize("form", [{"alg": "HS256", "activate_after": "0"}, {"alg": "RS256", "activate_after": "5"},
                                  {"alg": "RS256", "activate_after": "-1"}])
def test_a_bad_rotate_form_is_a_message_and_writes_nothing(client: FlaskClient, admin: AdminClient, ui: str,
                                                           form: dict[str, str]) -> None:
    before = _kids(admin)
    r = client.post(f"{UI}/tenants/acme/signing-keys/rotate", data={"csrf": ui, **form})
    assert r.status_code == 400 and 'role="alert"' in r.get_data(as_text=True)
    assert _kids(admin) == before

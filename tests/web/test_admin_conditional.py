"""Conditional reads of the admin API (If-None-Match → 304), the ETag of a metadata upload, and the
Retry-After of the admin pages' sign-in limit.

A client polling a tenant, connection or app sends back the ETag it has: while the configuration is the same
it gets 304 with that ETag and no body (RFC 9110 §13.1.2, weak comparison), and a tenant-scoped key still
gets 404 for anything outside its tenant, whatever the header. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.wrappers import Response as WsgiResponse

from broker.ports import FrozenClock
from broker.store.state import MemoryStateStore
from tests.conftest import BOOTSTRAP_KEY, AdminClient, close_app, make_env
from tests.samlxml.idp_fixtures import make_idp
from tests.support.broker_server import free_port
from tests.support.saml_idp import SamlIdp
from tests.web.test_admin_concurrency import _setup

READS = [
    ("/tenants/acme", {"name": "Acme Inc"}),
    ("/tenants/acme/connections/okta", {"domains": ["acme.org"]}),
    ("/tenants/acme/apps/portal", {"name": "Portal 2"}),
]
XML_HEADERS = {"Content-Type": "application/samlmetadata+xml"}


def _call(client: FlaskClient, method: str, path: str, body: Any = None, key: str = BOOTSTRAP_KEY,
          **headers: str) -> Any:
    return client.open(f"/admin/v1{path}", method=method, json=body,
                       headers={"Authorization": f"Bearer {key}", **headers})


def _metadata(entity_id: str = "https://idp.acme.test") -> str:
    return SamlIdp(idp=make_idp(entity_id), url=entity_id).metadata_xml()


def _not_modified(r: Any, tag: str) -> None:
    assert r.status_code == 304, (r.status_code, r.get_data(as_text=True))
    assert r.headers["ETag"] == tag
    assert r.get_data() == b""
    assert "Content-Type" not in r.headers


# -- If-None-Match ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, patch", READS)
def test_a_get_naming_the_current_etag_is_304(admin: AdminClient, client: FlaskClient, path: str,
                                              patch: dict[str, Any]) -> None:
    _setup(admin)
    first = _call(client, "GET", path)
    tag = first.headers["ETag"]
    _not_modified(_call(client, "GET", path, **{"If-None-Match": tag}), tag)
    _not_modified(_call(client, "GET", path, **{"If-None-Match": "W/" + tag}), tag)  # weak comparison
    _not_modified(_call(client, "GET", path, **{"If-None-Match": f'"elsewhere.1", {tag}'}), tag)
    _not_modified(_call(client, "GET", path, **{"If-None-Match": "*"}), tag)  # the resource exists

    other = _call(client, "GET", path, **{"If-None-Match": '"elsewhere.1"'})
    assert other.status_code == 200 and other.headers["ETag"] == tag
    assert other.get_json()["version"] == first.get_json()["version"]


@pytest.mark.parametrize("path, patch", READS)
def test_a_get_naming_a_stale_etag_gets_the_new_version(admin: AdminClient, client: FlaskClient, path: str,
                                                        patch: dict[str, Any]) -> None:
    _setup(admin)
    tag = _call(client, "GET", path).headers["ETag"]
    changed = _call(client, "PATCH", path, patch)
    assert changed.status_code == 200, changed.get_json()
    r = _call(client, "GET", path, **{"If-None-Match": tag})
    assert r.status_code == 200
    assert r.headers["ETag"] == changed.headers["ETag"] != tag
    assert r.get_json()["version"] == changed.get_json()["version"]
    _not_modified(_call(client, "GET", path, **{"If-None-Match": r.headers["ETag"]}), r.headers["ETag"])


@pytest.mark.parametrize("value", ['"zz", *', "*, *", "garbage", '"ok", garbage', "W/x", '"unterminated', " , "])
def test_an_if_none_match_that_is_not_star_or_entity_tags_is_400(admin: AdminClient, client: FlaskClient,
                                                                 value: str) -> None:
    """As for If-Match: a client that meant to revalidate hears that its header named nothing."""
    _setup(admin)
    tag = _call(client, "GET", "/tenants/acme").headers["ETag"]
    r = _call(client, "GET", "/tenants/acme", **{"If-None-Match": value.replace("ok", tag.strip('"'))})
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["error"] == "invalid_request" and "If-None-Match" in body["message"] and "details" in body


@pytest.mark.parametrize("path", [path for path, _ in READS])
def test_a_scoped_key_gets_404_for_another_tenant_whatever_if_none_match(admin: AdminClient, client: FlaskClient,
                                                                         path: str) -> None:
    _setup(admin)
    admin.tenant("other", "Other Corp")
    scoped = admin.call("POST", "/tenants/other/admin-keys", {"label": "other"}).get_json()["key"]
    tag = _call(client, "GET", path).headers["ETag"]
    for value in (tag, "W/" + tag, "*", "garbage"):
        r = _call(client, "GET", path, key=scoped, **{"If-None-Match": value})
        assert r.status_code == 404, (value, r.status_code)
        assert "ETag" not in r.headers and r.get_json()["error"]


def test_the_etag_follows_the_configuration_so_a_login_stamp_stays_304(admin: AdminClient,
                                                                       client: FlaskClient) -> None:
    """README: the ETag covers the configuration only; state the API reports (last_login_at) is not part."""
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    first = _call(client, "GET", path)
    tag = first.headers["ETag"]
    assert first.get_json()["last_login_at"] is None
    writer = client.application.extensions["broker"].extras["last_logins"]
    writer.touch(first.get_json()["id"], 1_800_000_000.0)
    assert writer.flush()
    assert _call(client, "GET", path).get_json()["last_login_at"] is not None
    _not_modified(_call(client, "GET", path, **{"If-None-Match": tag}), tag)


# -- the metadata upload's ETag ---------------------------------------------------------------------------------


def test_a_metadata_upload_answers_with_the_connections_new_etag(admin: AdminClient, client: FlaskClient) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    before = _call(client, "GET", path).headers["ETag"]
    put = client.put(f"/admin/v1{path}/metadata", data=_metadata(),
                     headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS, "If-Match": before})
    assert put.status_code == 200, put.get_json()
    assert put.get_json()["entity_id"] == "https://idp.acme.test"
    tag = put.headers["ETag"]
    assert tag != before and tag == _call(client, "GET", path).headers["ETag"]
    _not_modified(_call(client, "GET", path, **{"If-None-Match": tag}), tag)
    # the tag names the version the upload made: good for If-Match on the next write, the old one is not
    assert _call(client, "PATCH", path, {"domains": ["x.test"]}, **{"If-Match": before}).status_code == 412
    assert _call(client, "PATCH", path, {"domains": ["acme.org"]}, **{"If-Match": tag}).status_code == 200


def test_a_refused_metadata_upload_carries_no_etag(admin: AdminClient, client: FlaskClient) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    r = client.put(f"/admin/v1{path}/metadata", data="<not-metadata/>",
                   headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS})
    assert r.status_code == 400 and "ETag" not in r.headers


@pytest.mark.parametrize("encode", [
    lambda xml: xml.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),  # with a BOM
    lambda xml: xml.replace('encoding="UTF-8"', 'encoding="UTF-16LE"').encode("utf-16-le"),  # none: NULs
    lambda xml: xml.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').replace(
        "</md:EntityDescriptor>", "<!-- Café --></md:EntityDescriptor>").encode("latin-1"),
], ids=["utf-16", "utf-16le-no-bom", "latin-1"])
def test_metadata_that_is_not_utf8_is_refused_clearly_and_writes_nothing(
        admin: AdminClient, client: FlaskClient, encode: Any) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    before = _call(client, "GET", path).headers["ETag"]
    xml = _metadata()
    if not xml.startswith("<?xml"):
        xml = '<?xml version="1.0" encoding="UTF-8"?>' + xml
    r = client.put(f"/admin/v1{path}/metadata", data=encode(xml),
                   headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"] == "metadata_invalid" and "UTF-8" in r.get_json()["message"]
    assert _call(client, "GET", path).headers["ETag"] == before
    # the same document as UTF-8 (with or without a BOM) is taken
    r = client.put(f"/admin/v1{path}/metadata", data=b"\xef\xbb\xbf" + xml.encode(),
                   headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS})
    assert r.status_code == 200, r.get_json()


def test_uploading_the_same_metadata_again_writes_nothing(admin: AdminClient, client: FlaskClient) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS}
    first = client.put(f"/admin/v1{path}/metadata", data=_metadata(), headers=headers)
    assert first.status_code == 200
    events = len(_call(client, "GET", "/tenants/acme/audit?type=admin").get_json()["events"])
    again = client.put(f"/admin/v1{path}/metadata", data=_metadata(), headers=headers)
    assert again.status_code == 200 and again.get_json()["entity_id"] == "https://idp.acme.test"
    assert again.headers["ETag"] == first.headers["ETag"] == _call(client, "GET", path).headers["ETag"]
    assert len(_call(client, "GET", "/tenants/acme/audit?type=admin").get_json()["events"]) == events
    # another document is a change
    other = client.put(f"/admin/v1{path}/metadata", data=_metadata("https://idp2.acme.test"), headers=headers)
    assert other.status_code == 200 and other.headers["ETag"] != first.headers["ETag"]


def test_if_none_match_star_uploads_metadata_only_once(admin: AdminClient, client: FlaskClient) -> None:
    """Two admins doing a first upload with If-None-Match: * cannot overwrite each other (RFC 9110 §13.1.2)."""
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS, "If-None-Match": "*"}
    first = client.put(f"/admin/v1{path}/metadata", data=_metadata(), headers=headers)
    assert first.status_code == 200, first.get_json()
    events = len(_call(client, "GET", "/tenants/acme/audit?type=admin").get_json()["events"])
    second = client.put(f"/admin/v1{path}/metadata", data=_metadata("https://idp2.acme.test"), headers=headers)
    assert second.status_code == 412 and second.get_json()["error"] == "precondition_failed"
    assert second.get_json()["details"] == {"etag": first.headers["ETag"]}
    conn = _call(client, "GET", path)
    assert conn.headers["ETag"] == first.headers["ETag"]
    assert len(_call(client, "GET", "/tenants/acme/audit?type=admin").get_json()["events"]) == events
    # an entity tag: write unless the connection is at that version
    named = {**headers, "If-None-Match": first.headers["ETag"]}
    assert client.put(f"/admin/v1{path}/metadata", data=_metadata("https://idp2.acme.test"),
                      headers=named).status_code == 412
    other = client.put(f"/admin/v1{path}/metadata", data=_metadata("https://idp2.acme.test"),
                       headers={**named, "If-None-Match": '"someone-else.1"'})
    assert other.status_code == 200 and other.get_json()["entity_id"] == "https://idp2.acme.test"


def test_if_none_match_star_refuses_a_connection_fed_by_a_metadata_url(admin: AdminClient,
                                                                      client: FlaskClient) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metadata"
    document = _metadata()
    server = make_server("127.0.0.1", port, lambda env, start: WsgiResponse(
        document, mimetype="application/samlmetadata+xml")(env, start), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = _call(client, "PATCH", path, {"saml": {"metadata_url": url}})
        assert r.status_code == 200, r.get_json()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    r = client.put(f"/admin/v1{path}/metadata", data=_metadata(),
                   headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **XML_HEADERS, "If-None-Match": "*"})
    assert r.status_code == 412
    assert _call(client, "GET", path).get_json()["saml"]["metadata_url"] == url


@pytest.mark.parametrize("path", [p for p, _ in READS])
def test_a_get_with_a_stale_if_match_is_412_before_if_none_match(
        admin: AdminClient, client: FlaskClient, path: str) -> None:
    _setup(admin)
    tag = _call(client, "GET", path).headers["ETag"]
    r = _call(client, "GET", path, **{"If-Match": '"nope.0"', "If-None-Match": tag})
    assert r.status_code == 412 and r.get_json()["error"] == "precondition_failed"
    assert _call(client, "GET", path, **{"If-Match": tag}).status_code == 200


# -- OpenAPI ---------------------------------------------------------------------------------------------------


def test_openapi_documents_if_none_match_304_and_the_metadata_etag(client: FlaskClient) -> None:
    doc = client.get("/admin/v1/openapi.json").get_json()
    for path in ("/tenants/{t}", "/tenants/{t}/connections/{c}", "/tenants/{t}/apps/{client_id}"):
        op = doc["paths"][path]["get"]
        assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in op["parameters"]), path
        assert "ETag" in op["responses"]["304"]["headers"] and "content" not in op["responses"]["304"], path
        assert "400" in op["responses"] and "ETag" in op["responses"]["200"]["headers"], path
        assert any(p["name"] == "If-Match" for p in op["parameters"]) and "412" in op["responses"], path
        assert "ETag" in doc["paths"][path]["patch"]["responses"]["200"]["headers"], path  # PATCH answers one
    put = doc["paths"]["/tenants/{t}/connections/{c}/metadata"]["put"]
    assert "ETag" in put["responses"]["200"]["headers"]
    assert {p["name"] for p in put["parameters"]} >= {"If-Match", "If-None-Match"} and "412" in put["responses"]
    for path in ("/tenants", "/tenants/{t}/connections", "/tenants/{t}/apps"):  # lists carry no ETag
        assert "parameters" not in doc["paths"][path]["get"], path


# -- the admin pages' sign-in limit: Retry-After ---------------------------------------------------------------


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def test_the_sign_in_limit_says_when_to_retry(sqlite_url: str) -> None:
    """429 carries Retry-After: the seconds left of the address's fixed window (which began with its first
    attempt), at least 1; once the window is over, sign-in works again."""
    from broker.app import create_app
    from broker.settings import load_settings
    from broker.web.admin_ui import SIGNIN_LIMIT, SIGNIN_WINDOW

    clock = FrozenClock(1_800_000_000.0)
    app = create_app(load_settings(make_env(sqlite_url)), clock=clock, state=MemoryStateStore(clock=clock.now))
    try:
        client = app.test_client()
        page = client.get("/admin/ui/sign-in")
        match = CSRF_RE.search(page.get_data(as_text=True))
        assert match
        form = {"csrf": match.group(1), "admin_key": "not-a-key", "next": "/admin/ui/"}

        assert client.post("/admin/ui/sign-in", data=form).status_code == 401  # the window starts here
        clock.advance(100)
        for _ in range(SIGNIN_LIMIT - 1):
            r = client.post("/admin/ui/sign-in", data=form)
            assert r.status_code == 401 and "Retry-After" not in r.headers
        limited = client.post("/admin/ui/sign-in", data=form)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == str(SIGNIN_WINDOW - 100)
        clock.advance(SIGNIN_WINDOW - 100 - 0.5)
        assert client.post("/admin/ui/sign-in", data=form).headers["Retry-After"] == "1"  # never 0
        clock.advance(0.5)
        ok = client.post("/admin/ui/sign-in", data={**form, "admin_key": BOOTSTRAP_KEY})
        assert ok.status_code == 303, ok.status_code
    finally:
        close_app(app)


def test_wrong_keys_from_one_address_never_lock_out_a_valid_key(sqlite_url: str) -> None:
    """Behind one address (a NAT, a proxy the broker is not told of) anyone's wrong guesses must not keep the
    admins out: only refused keys count, and a valid key signs in past the limit."""
    from broker.app import create_app
    from broker.settings import load_settings
    from broker.web.admin_ui import SIGNIN_LIMIT

    app = create_app(load_settings(make_env(sqlite_url)))
    try:
        client = app.test_client()
        match = CSRF_RE.search(client.get("/admin/ui/sign-in").get_data(as_text=True))
        assert match
        form = {"csrf": match.group(1), "admin_key": "not-a-key", "next": "/admin/ui/"}
        for _ in range(SIGNIN_LIMIT):
            assert client.post("/admin/ui/sign-in", data=form).status_code == 401
        assert client.post("/admin/ui/sign-in", data=form).status_code == 429
        ok = client.post("/admin/ui/sign-in", data={**form, "admin_key": BOOTSTRAP_KEY})
        assert ok.status_code == 303, ok.status_code
    finally:
        close_app(app)


def test_a_link_from_another_site_does_not_sign_the_admin_out(sqlite_url: str) -> None:
    """Browsers withhold the SameSite=Strict session cookie on a navigation from another site: the broker
    cannot tell a signed-in browser from a new one, so it reloads the page from its own origin (which brings
    the cookie) instead of answering with the sign-in page and a new cookie that would replace the session."""
    from broker.app import create_app
    from broker.settings import load_settings

    app = create_app(load_settings(make_env(sqlite_url)))
    try:
        client = app.test_client()
        cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        for path in ("/admin/ui/tenants", "/admin/ui/sign-in?next=/admin/ui/tenants"):
            r = client.get(path, headers=cross)
            assert r.status_code == 200 and "Set-Cookie" not in r.headers, path
            assert f'url={path}"'.replace("&", "&amp;") in r.get_data(as_text=True)
        # the reload itself is same-origin: the usual sign-in redirect, for a browser that is not signed in
        again = client.get("/admin/ui/tenants", headers={"Sec-Fetch-Site": "same-origin"})
        assert again.status_code == 303 and "/admin/ui/sign-in" in again.headers["Location"]
    finally:
        close_app(app)

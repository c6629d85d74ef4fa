"""The admin pages in real headless Chromium against a real broker process (gunicorn) and the development
IdP it serves at /dev/idp: upload the dev IdP's metadata, see the parsed certificate, save, run "test this
connection" through the dev IdP's login page, see raw and mapped claims. Screenshots go to docs/screenshots/
for the README."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from tests.support.broker_server import BOOTSTRAP_KEY, BrokerServer, running_broker

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    tmp = tmp_path_factory.mktemp("admin-ui-browser")
    with running_broker(tmp) as server:
        assert server.api("POST", "/tenants", {"slug": "acme", "name": "Acme Corp"}).status_code == 201
        r = server.api("POST", "/tenants/acme/apps", {"name": "Acme Portal",
                                                      "redirect_uris": ["https://portal.acme.test/callback"]})
        assert r.status_code == 201
        yield server


@pytest.fixture(scope="module")
def dev_idp_metadata(broker: BrokerServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = requests.get(f"{broker.url}/dev/idp/saml/metadata", timeout=10)
    if r.status_code != 200:
        pytest.skip("the development IdP is not served by this broker (/dev/idp/saml/metadata)")
    path = tmp_path_factory.mktemp("md") / "dev-idp-metadata.xml"
    path.write_bytes(r.content)
    return path


def sign_in(page: Any, broker: BrokerServer, key: str = BOOTSTRAP_KEY) -> None:
    page.goto(f"{broker.url}/admin/ui/tenants/acme/connections")
    page.wait_for_url(re.compile(r".*/admin/ui/sign-in.*"))
    page.fill("#admin_key", key)
    page.click("#sign-in button[type=submit]")


def test_upload_metadata_save_and_test_login_through_the_dev_idp(
    page: Any, broker: BrokerServer, dev_idp_metadata: Path, screenshot: Any
) -> None:
    from playwright.sync_api import expect

    problems: list[str] = []
    # CSP violations and script errors; not "Failed to load resource" (the favicon, the refused key's 401)
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    entity_id = f"{broker.url}/dev/idp/saml/metadata"

    page.goto(f"{broker.url}/admin/ui/")
    page.wait_for_url(re.compile(r".*/admin/ui/sign-in.*"))
    screenshot(page, "admin-sign-in")
    page.fill("#admin_key", "not-a-real-key")
    page.click("#sign-in button[type=submit]")
    expect(page.locator(".msg.error")).to_contain_text("That admin key is not valid.")
    page.fill("#admin_key", BOOTSTRAP_KEY)
    page.click("#sign-in button[type=submit]")
    page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections$"))

    # step 1: upload the metadata file; see what was understood, nothing saved yet
    page.click("text=New SAML connection")
    page.set_input_files("#metadata_file", str(dev_idp_metadata))
    page.click("text=Read metadata")
    understood = page.locator("#understood")
    expect(understood).to_contain_text(entity_id)
    expect(understood).to_contain_text("days left")
    expect(understood).to_contain_text(f"{broker.url}/dev/idp/saml/sso")
    expect(understood.locator(".cert")).to_have_count(1)
    assert broker.api("GET", "/tenants/acme/connections").json()["connections"] == []
    screenshot(page, "admin-metadata-preview")

    # step 2: slug, domains, preset -> saved
    page.fill("#slug", "dev-idp")
    page.fill("#domains", "example.com")
    page.select_option("#preset", "okta")
    page.click("text=Save connection")
    page.wait_for_url(re.compile(r".*/connections/dev-idp\?notice=created$"))
    acs = f"{broker.url}/t/acme/connections/dev-idp/saml/acs"
    expect(page.locator("#sp-acs")).to_have_text(acs)
    expect(page.locator("#sp-entity")).to_have_text(f"{broker.url}/t/acme/connections/dev-idp/saml/metadata")
    expect(page.locator("#idp-metadata")).to_contain_text("days left")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=broker.url)
    page.click("button[data-copy=sp-acs]")
    expect(page.locator("button[data-copy=sp-acs]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == acs
    screenshot(page, "admin-connection")

    # test this connection: a real login at the development IdP
    page.click("#test-connection")
    page.wait_for_url(re.compile(r".*/dev/idp/login.*"))
    page.fill("#email", "grace@example.com")
    page.fill("#name", "Grace Hopper")
    page.check("#group-admins")
    page.click("#sign-in")
    page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections/dev-idp/test/[^/?]+$"))
    raw = page.locator("#raw-claims")
    expect(raw).to_contain_text("firstName")
    expect(raw).to_contain_text("Grace")
    expect(raw).to_contain_text(entity_id)
    mapped = page.locator("#mapped-claims")
    expect(mapped).to_contain_text("grace@example.com")
    expect(mapped).to_contain_text("Hopper")
    expect(mapped).to_contain_text("Admins")
    screenshot(page, "admin-test-result")

    # mapping editor: dry run with the attributes that just came back, then save
    page.click("text=Use these attributes in the mapping dry run")
    expect(page.locator("#sample")).to_contain_text("grace@example.com")
    page.fill("#rules", '[{"op": "map_values", "from": "groups", "to": "roles", '
                        '"table": {"Admins": "admin"}, "default": "member"}]')
    page.click("#dry-run")
    result = page.locator("#dry-run-result")
    expect(result).to_contain_text("roles")
    expect(result).to_contain_text("map_values")
    expect(result).to_contain_text('["admin"]')
    screenshot(page, "admin-mapping-dry-run")
    page.click("#save-mapping")
    expect(page.locator(".msg.notice")).to_contain_text("The mapping was saved.")
    rules = broker.api("GET", "/tenants/acme/connections/dev-idp").json()["mapping"]["rules"]
    assert rules[0]["op"] == "map_values"

    page.click("header >> text=Connections")
    expect(page.locator("#connections")).to_contain_text("dev-idp")
    expect(page.locator("#connections")).to_contain_text("days left")
    screenshot(page, "admin-connections")
    page.click("header >> text=Apps")
    expect(page.locator("#apps")).to_contain_text("Acme Portal")
    screenshot(page, "admin-apps")
    page.click("header >> text=Audit log")
    page.select_option("#type", "login")
    page.click("text=Filter")
    expect(page.locator("#audit")).to_contain_text("dev-idp")
    page.select_option("#type", "")
    page.click("text=Filter")
    expect(page.locator("#audit")).to_contain_text("connection.create")
    screenshot(page, "admin-audit")

    page.click("header >> text=Sign out")
    page.wait_for_url(re.compile(r".*/admin/ui/sign-in$"))
    page.goto(f"{broker.url}/admin/ui/tenants/acme/connections")
    page.wait_for_url(re.compile(r".*/admin/ui/sign-in.*"))
    assert problems == [], problems


def test_signing_keys_page_stages_a_rotation(page: Any, broker: BrokerServer, screenshot: Any) -> None:
    from playwright.sync_api import expect

    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    sign_in(page, broker)
    page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections$"))
    page.click("header >> text=Signing keys")
    expect(page.locator("#signing-keys")).to_contain_text("active")
    page.select_option("#activate_after", "86400")
    page.click("#rotate button[type=submit]")
    expect(page.locator("[role=status]")).to_contain_text("signs until the time shown")
    expect(page.locator("#signing-keys")).to_contain_text("pending")
    screenshot(page, "admin-signing-keys")
    assert problems == [], problems


def test_tenant_key_sees_only_its_tenant(page: Any, broker: BrokerServer) -> None:
    from playwright.sync_api import expect

    assert broker.api("POST", "/tenants", {"slug": "globex", "name": "Globex"}).status_code == 201
    key = broker.api("POST", "/tenants/acme/admin-keys", {}).json()["key"]
    sign_in(page, broker, key)
    page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections$"))
    page.goto(f"{broker.url}/admin/ui/tenants")
    expect(page.locator("main")).to_contain_text("Acme Corp")
    expect(page.locator("main")).not_to_contain_text("Globex")
    response = page.goto(f"{broker.url}/admin/ui/tenants/globex/connections")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")


def test_connection_test_reaches_an_idp_on_another_origin(page: Any, broker: BrokerServer) -> None:
    """The admin pages' CSP has form-action 'self', which Chromium also applies to the redirects after a form's
    submission: "Test this connection" must still take the browser to an IdP on another origin (here an
    independent pysaml2-based IdP on its own port) and back to the result."""
    from playwright.sync_api import expect

    from tests.support.saml_idp import running_saml_idp

    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "form-action" in m.text else None)
    with running_saml_idp() as idp:
        assert urlsplit(idp.sso_url).netloc != urlsplit(broker.url).netloc
        r = broker.api("POST", "/tenants/acme/connections", {
            "slug": "far-idp", "protocol": "saml", "domains": ["far.test"], "mapping": {"preset": "okta"},
            "saml": {"metadata_xml": idp.metadata_xml()}})
        assert r.status_code == 201, r.text
        sign_in(page, broker)
        page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections$"))
        page.goto(f"{broker.url}/admin/ui/tenants/acme/connections/far-idp")
        page.click("#test-connection")
        page.wait_for_url(re.compile(r".*/admin/ui/tenants/acme/connections/far-idp/test/[^/?]+$"))
        expect(page.locator("#raw-claims")).to_contain_text(idp.entity_id)
        assert len(idp.requests_seen) == 1
    assert blocked == [], blocked


@contextmanager
def _app_site(pages: Callable[[str], str]) -> Iterator[str]:
    """A downstream app on another origin (http://localhost:PORT, another site than 127.0.0.1): each path
    answers the HTML `pages` gives for it."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    from tests.support.broker_server import free_port

    port = free_port()

    def wsgi(environ: Any, start_response: Any) -> Any:
        return Response(pages(Request(environ).path), mimetype="text/html")(environ, start_response)

    server = make_server("127.0.0.1", port, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_confirmed_logout_reaches_the_apps_post_logout_uri_on_another_origin(page: Any, broker: BrokerServer) -> None:
    """RP-initiated logout from another site without an id_token_hint asks the user first; the confirmation
    form posts to the broker, which redirects to the app's registered post_logout_redirect_uri. Chromium
    applies the page's CSP form-action to that redirect: the app's origin must be allowed, or the browser
    stays on "Sign out?" and the app never gets its `state` back."""
    from tests.support.saml_idp import running_saml_idp

    logout: list[str] = []
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "form-action" in m.text else None)
    with _app_site(lambda path: f"<script>location.href = {json.dumps(logout[0])}</script>"
                   if path == "/start" else "<p>app</p>") as rp, running_saml_idp() as idp:
        r = broker.api("POST", "/tenants/acme/apps", {"name": "Logout RP", "redirect_uris": [f"{rp}/cb"],
                                                      "post_logout_redirect_uris": [f"{rp}/bye"]})
        assert r.status_code == 201, r.text
        client_id = r.json()["client_id"]
        logout.append(f"{broker.url}/t/acme/logout?" + urlencode(
            {"client_id": client_id, "post_logout_redirect_uri": f"{rp}/bye", "state": "xyz"}))
        r = broker.api("POST", "/tenants/acme/connections", {
            "slug": "logout-idp", "protocol": "saml", "domains": ["logout.test"], "mapping": {"preset": "okta"},
            "saml": {"metadata_xml": idp.metadata_xml()}})
        assert r.status_code == 201, r.text
        page.goto(f"{broker.url}/t/acme/authorize?" + urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": f"{rp}/cb", "scope": "openid",
            "state": "in", "connection": "logout-idp",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}))
        page.wait_for_url(re.compile(re.escape(rp) + r"/cb\?.*code=.*"))
        page.goto(f"{rp}/start")  # the app's page sends the browser to the broker's logout: a cross-site request
        page.wait_for_url(re.compile(r".*/t/acme/logout\?.*"))
        page.click("button[type=submit]")
        page.wait_for_url(f"{rp}/bye?state=xyz")
    assert blocked == [], blocked

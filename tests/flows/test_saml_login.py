"""End to end over real HTTP: an independent RP (openid-client, node) signs in through the broker, which
sends the browser to an independent SAML IdP on 127.0.0.1 (pysaml2 parses the AuthnRequest, signxml signs
the Response). Everything runs as real processes/servers on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.support.broker_server import BrokerServer, running_broker
from tests.support.saml_idp import SamlIdp, browser_login, parse_autopost, query_of, running_saml_idp

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).resolve().parents[1] / "support" / "oidc_op"
REDIRECT_URI = "https://app.acme.test/callback"


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed: the independent RP (openid-client) needs node >= 18"
    if not (NODE_DIR / "node_modules" / "openid-client").is_dir():
        if shutil.which("npm") is None:
            return "npm is not installed and tests/support/oidc_op/node_modules is missing"
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,  # noqa: S607
                       capture_output=True, timeout=300)
    return None


def rp(*args: str) -> dict[str, Any]:
    proc = subprocess.run(["node", str(NODE_DIR / "rp.cjs"), *args], capture_output=True, text=True,  # noqa: S607
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    with running_broker(tmp_path_factory.mktemp("broker")) as server:
        yield server


@pytest.fixture(scope="module")
def setup(broker: BrokerServer, idp: SamlIdp) -> dict[str, Any]:
    assert broker.api("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
    r = broker.api("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "domains": ["acme.test"],
        "mapping": {"preset": "okta", "rules": [
            {"op": "map_values", "from": "groups", "to": "roles", "table": {"Admins": "admin"}, "default": "member"}]},
    })
    assert r.status_code == 201, r.text
    r = broker.api("PUT", "/tenants/acme/connections/okta/metadata", data=idp.metadata_xml().encode(),
                   headers={"Content-Type": "application/samlmetadata+xml"})
    assert r.status_code == 200, r.text
    assert r.json()["entity_id"] == idp.entity_id
    app = broker.api("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
    assert app.status_code == 201, app.text
    return {"app": app.json(), "issuer": f"{broker.url}/t/acme"}


def test_sp_metadata_is_served(broker: BrokerServer, setup: dict[str, Any]) -> None:
    r = requests.get(f"{broker.url}/t/acme/connections/okta/saml/metadata", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/samlmetadata+xml")
    assert b'AuthnRequestsSigned="' in r.content and b'WantAssertionsSigned="true"' in r.content
    assert f"{broker.url}/t/acme/connections/okta/saml/acs".encode() in r.content


def test_full_login_with_independent_rp_and_idp(broker: BrokerServer, idp: SamlIdp,
                                                setup: dict[str, Any]) -> None:
    reason = _node_ready()
    if reason:
        pytest.skip(reason)
    app = setup["app"]
    start = rp("start", setup["issuer"], app["client_id"], app["client_secret"], REDIRECT_URI,
               json.dumps({"login_hint": "alice@acme.test"}))
    session = requests.Session()
    acs_answer = browser_login(session, start["url"])
    assert acs_answer.status_code == 302, acs_answer.text[:500]
    callback = acs_answer.headers["Location"]
    assert callback.startswith(REDIRECT_URI + "?")
    q = query_of(callback)
    assert q["state"] == start["state"] and q["iss"] == setup["issuer"] and "code" in q
    # the AuthnRequest the IdP received came from the broker's SP, for this connection's ACS
    authn = idp.requests_seen[-1]
    assert authn.assertion_consumer_service_url == f"{broker.url}/t/acme/connections/okta/saml/acs"
    assert authn.issuer.text == f"{broker.url}/t/acme/connections/okta/saml/metadata"
    out = rp("finish", setup["issuer"], app["client_id"], app["client_secret"], REDIRECT_URI, callback,
             start["code_verifier"], start["nonce"], start["state"])
    claims = out["claims"]
    assert claims["iss"] == setup["issuer"] and claims["aud"] == app["client_id"]
    assert claims["email"] == "alice@acme.test"
    assert claims["tenant"] == "acme" and claims["connection"] == "okta" and claims["idp"] == idp.entity_id
    assert claims["sub"] != "alice@acme.test" and "alice" not in claims["sub"]
    assert set(claims["groups"]) == {"Everyone", "Admins"}
    assert "admin" in claims["roles"]
    assert out["userinfo"]["sub"] == claims["sub"]
    # the connection's last login is stamped behind the login, within the writer's interval (5 s)
    deadline = time.monotonic() + 15
    while (last := broker.api("GET", "/tenants/acme/connections/okta").json()["last_login_at"]) is None:
        assert time.monotonic() < deadline, "last_login_at was never written"
        time.sleep(0.2)
    assert last.endswith("Z")


def test_form_post_login_with_independent_rp_and_idp(broker: BrokerServer, idp: SamlIdp,
                                                     setup: dict[str, Any]) -> None:
    """response_mode=form_post: the ACS answers with a page that POSTs code, state and iss to the redirect_uri;
    openid-client redeems what was posted and validates the ID token."""
    reason = _node_ready()
    if reason:
        pytest.skip(reason)
    app = setup["app"]
    start = rp("start", setup["issuer"], app["client_id"], app["client_secret"], REDIRECT_URI,
               json.dumps({"login_hint": "alice@acme.test", "response_mode": "form_post"}))
    acs_answer = browser_login(requests.Session(), start["url"])
    assert acs_answer.status_code == 200 and "Location" not in acs_answer.headers, acs_answer.text[:300]
    action, posted = parse_autopost(acs_answer.text)
    assert action == REDIRECT_URI and set(posted) == {"code", "state", "iss"}
    assert posted["state"] == start["state"] and posted["iss"] == setup["issuer"]
    # what the app received in the POST body, handed to openid-client as its callback parameters
    out = rp("finish", setup["issuer"], app["client_id"], app["client_secret"], REDIRECT_URI,
             f"{REDIRECT_URI}?{urlencode(posted)}", start["code_verifier"], start["nonce"], start["state"])
    assert out["claims"]["email"] == "alice@acme.test" and out["claims"]["aud"] == app["client_id"]


def test_replayed_response_is_refused(broker: BrokerServer, idp: SamlIdp, setup: dict[str, Any]) -> None:
    app = setup["app"]
    session = requests.Session()
    url = (f"{setup['issuer']}/authorize?response_type=code&client_id={app['client_id']}"
           f"&redirect_uri={REDIRECT_URI}&scope=openid&state=s1&connection=okta")
    first = browser_login(session, url)
    assert first.status_code == 302 and "code=" in first.headers["Location"]
    # post the very same response again, as an attacker who captured it would
    from tests.samlxml.idp_fixtures import to_post_binding

    assert idp.last_response is not None
    again = session.post(f"{broker.url}/t/acme/connections/okta/saml/acs",
                         data={"SAMLResponse": to_post_binding(idp.last_response)}, allow_redirects=False,
                         timeout=10)
    assert again.status_code in (400, 403), again.status_code
    assert "code=" not in again.headers.get("Location", "")
    events = broker.api("GET", "/tenants/acme/audit?type=login&outcome=failure").json()["events"]
    assert events and events[0]["reason"] in ("saml_replay", "saml_in_response_to_mismatch")


def test_response_from_another_browser_is_refused(broker: BrokerServer, idp: SamlIdp,
                                                  setup: dict[str, Any]) -> None:
    app = setup["app"]
    victim = requests.Session()
    url = (f"{setup['issuer']}/authorize?response_type=code&client_id={app['client_id']}"
           f"&redirect_uri={REDIRECT_URI}&scope=openid&state=s2&connection=okta")
    r = victim.get(url, allow_redirects=False, timeout=10)
    idp_page = victim.get(r.headers["Location"], allow_redirects=False, timeout=10)
    from tests.support.saml_idp import parse_autopost

    action, fields = parse_autopost(idp_page.text)
    attacker = requests.Session()  # no binding cookie
    answer = attacker.post(action, data=fields, allow_redirects=False, timeout=10)
    # the transaction is not valid for this browser: an error page, no code, and an audit event
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert "login_browser_mismatch" in answer.text
    events = broker.api("GET", "/tenants/acme/audit?type=login&outcome=failure").json()["events"]
    assert events[0]["reason"] == "login_browser_mismatch"


def test_login_hint_reaches_the_idp_as_subject_when_the_connection_asks(
        broker: BrokerServer, idp: SamlIdp, setup: dict[str, Any]) -> None:
    app = setup["app"]
    url = (f"{setup['issuer']}/authorize?response_type=code&client_id={app['client_id']}"
           f"&redirect_uri={REDIRECT_URI}&scope=openid&state=s3&login_hint=alice%40acme.test")
    first = browser_login(requests.Session(), url)
    assert first.status_code == 302 and "code=" in first.headers["Location"]
    assert idp.requests_seen[-1].subject is None  # off by default
    r = broker.api("PATCH", "/tenants/acme/connections/okta", {"saml": {"send_login_hint": True}})
    assert r.status_code == 200, r.text
    try:
        second = browser_login(requests.Session(), url)
        assert second.status_code == 302 and "code=" in second.headers["Location"]
        subject = idp.requests_seen[-1].subject  # as pysaml2 parsed it on the IdP's side
        assert subject is not None and subject.name_id.text == "alice@acme.test"
        assert subject.name_id.format == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    finally:
        r = broker.api("PATCH", "/tenants/acme/connections/okta", {"saml": {"send_login_hint": None}})
        assert r.status_code == 200, r.text

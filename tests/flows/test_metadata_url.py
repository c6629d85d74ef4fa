"""A SAML connection configured with `saml.metadata_url`, served by a real loopback HTTP server.

The broker runs in-process (Flask test client) with an injected FrozenClock; its production fetcher
(RequestsFetcher) fetches the IdP metadata over real HTTP from 127.0.0.1. SPEC: the metadata is fetched,
refreshed on a schedule, and the last good copy is kept on failure; a connection without any good copy
cannot log anyone in (a clear refusal, never a 500); an unusable URL is refused at save time.
"""

from __future__ import annotations

import base64
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from broker.ports import FrozenClock
from tests.conftest import BOOTSTRAP_KEY, close_app, make_env
from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding
from tests.support.broker_server import free_port
from tests.support.saml_idp import SamlIdp, query_of

PUBLIC = "http://broker.test"
REDIRECT_URI = "https://app.acme.test/cb"
ENTITY_ID = "https://idp.metadata-url.test/metadata"
SAML_NS = "{urn:oasis:names:tc:SAML:2.0:assertion}"
ATTRS = {"email": ["alice@acme.test"], "firstName": ["Alice"], "lastName": ["L"], "groups": ["Admins"]}
SIX_HOURS = 6 * 3600


@dataclass
class MetadataServer:
    """Serves the IdP metadata at /metadata; `mode` switches it to failing answers."""

    url: str
    document: str
    mode: str = "ok"  # ok | 500 | garbage | slow (answers once `release` is set)
    hits: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata"

    def handle(self, request: Request) -> Response:
        self.hits.append(self.mode)
        if request.path != "/metadata":
            return Response("not found", status=404)
        if self.mode == "500":
            return Response("internal error", status=500)
        if self.mode == "garbage":
            return Response("<html><body>maintenance</body></html>", mimetype="text/html")
        if self.mode == "slow":
            self.release.wait(timeout=8)
        if self.mode == "utf16":
            return Response(self.document.encode("utf-16"), mimetype="application/samlmetadata+xml")
        return Response(self.document, mimetype="application/samlmetadata+xml")


@dataclass
class Env:
    client: FlaskClient
    app: Flask
    clock: FrozenClock
    server: MetadataServer
    app_client: dict[str, Any]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.open(f"/admin/v1{path}", method=method, json=body,
                                headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})

    def create_connection(self, slug: str, metadata_url: str) -> Any:
        return self.admin("POST", "/tenants/acme/connections", {
            "slug": slug, "protocol": "saml", "domains": [f"{slug}.acme.test"],
            "mapping": {"preset": "okta", "rules": []}, "saml": {"metadata_url": metadata_url}})

    def authorize_path(self, conn: str, state: str = "st") -> str:
        q = urlencode({"response_type": "code", "client_id": self.app_client["client_id"],
                       "redirect_uri": REDIRECT_URI, "scope": "openid email profile", "state": state,
                       "connection": conn, "prompt": "login"})  # prompt=login: always go upstream
        return f"/t/acme/authorize?{q}"

    def authorize(self, conn: str, state: str = "st") -> Any:
        return self.client.get(self.authorize_path(conn, state))

    def login(self, conn: str) -> Any:
        """Browser: /authorize -> (IdP) -> ACS. Returns the ACS answer."""
        r = self.authorize(conn)
        assert r.status_code == 302, r.data[:300]
        params = query_of(r.headers["Location"])
        assert r.headers["Location"].startswith(f"{self.server.url}/sso?"), r.headers["Location"]
        xml = zlib.decompress(base64.b64decode(params["SAMLRequest"]), -15)
        root = etree.fromstring(xml)  # noqa: S320 - the broker's own AuthnRequest in a test
        response = build_response(
            make_idp(ENTITY_ID), acs_url=root.get("AssertionConsumerServiceURL"),
            audience=root.find(f"{SAML_NS}Issuer").text, in_response_to=root.get("ID"),
            name_id="alice@acme.test", attributes=ATTRS, issue_instant=self.clock.now())
        return self.client.post(f"/t/acme/connections/{conn}/saml/acs",
                                data={"SAMLResponse": to_post_binding(response),
                                      "RelayState": params["RelayState"]})

    def failures(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.admin(
            "GET", "/tenants/acme/audit?type=login&outcome=failure").get_json()["events"]
        return events


def _logged_in(r: Any) -> None:
    assert r.status_code == 302, (r.status_code, r.data[:400])
    q = query_of(r.headers["Location"])
    assert r.headers["Location"].startswith(REDIRECT_URI) and q.get("code"), r.headers["Location"]


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    from broker.app import create_app
    from broker.settings import load_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = MetadataServer(url=url, document=SamlIdp(idp=make_idp(ENTITY_ID), url=url).metadata_xml())

    def wsgi(environ: Any, start_response: Any) -> Any:
        return server.handle(Request(environ))(environ, start_response)

    http = make_server("127.0.0.1", port, wsgi, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    clock = FrozenClock(time.time())
    app = create_app(load_settings(make_env(sqlite_url)), clock=clock)
    client = app.test_client()
    e = Env(client=client, app=app, clock=clock, server=server, app_client={})
    try:
        assert e.admin("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
        a = e.admin("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT_URI]})
        assert a.status_code == 201
        e.app_client = a.get_json()
        yield e
    finally:
        http.shutdown()
        thread.join(timeout=5)
        close_app(app)


def test_login_with_metadata_from_a_url(env: Env) -> None:
    r = env.create_connection("idp", env.server.metadata_url)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["metadata"]["entity_id"] == ENTITY_ID
    _logged_in(env.login("idp"))
    refresh = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]["refresh"]
    assert refresh["fetched_at"] is not None and refresh["last_error"] is None


@pytest.mark.parametrize("failure", ["500", "garbage"])
def test_failed_refresh_keeps_the_last_good_copy_and_shows_the_error(env: Env, failure: str) -> None:
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    _logged_in(env.login("idp"))
    good = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert good["entity_id"] == ENTITY_ID

    env.server.mode = failure
    env.clock.advance(SIX_HOURS + 1)  # the refresh is due (no cacheDuration: the default schedule)
    hits = len(env.server.hits)
    _logged_in(env.login("idp"))
    assert len(env.server.hits) > hits, "the due refresh was not attempted"

    meta = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert meta["entity_id"] == ENTITY_ID  # still the last good copy
    assert meta["refresh"]["last_error"], meta
    assert meta["refresh"]["fetched_at"] == good["refresh"]["fetched_at"]
    assert meta["refresh"]["next_refresh_at"] <= env.clock.now() + 300 + 1  # retried soon, not in 6 h

    # the metadata server recovers: the next due refresh clears the error
    env.server.mode = "ok"
    env.clock.advance(301)
    _logged_in(env.login("idp"))
    meta = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert meta["refresh"]["last_error"] is None and meta["refresh"]["fetched_at"] > good["refresh"]["fetched_at"]


def test_while_a_slow_refresh_runs_other_logins_use_the_last_good_copy(env: Env) -> None:
    """One refresh per connection at a time: the others do not each wait on the same slow metadata host
    (which held every worker thread for up to the timeout, every time a refresh fell due)."""
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    env.server.mode = "slow"
    env.clock.advance(SIX_HOURS + 1)  # due
    hits = len(env.server.hits)
    first: list[Any] = []
    refresher = threading.Thread(target=lambda: first.append(env.app.test_client().get(
        env.authorize_path("idp"))))
    refresher.start()
    for _ in range(100):  # until the refresh has reached the metadata host
        if len(env.server.hits) > hits:
            break
        time.sleep(0.05)
    assert len(env.server.hits) == hits + 1
    try:
        for state in ("a", "b", "c"):  # answered from the last good copy while the refresh waits
            r = env.authorize("idp", state=state)
            assert r.status_code == 302 and r.headers["Location"].startswith(f"{env.server.url}/sso?")
        assert len(env.server.hits) == hits + 1 and refresher.is_alive()
    finally:
        env.server.release.set()
        refresher.join(timeout=15)
    assert first and first[0].status_code == 302


def test_metadata_served_as_utf16_is_refused_at_save_and_never_replaces_a_good_copy(env: Env) -> None:
    """As for an upload: only UTF-8 is kept (UTF-16 was saved, mangled, and then no one could sign in)."""
    env.server.mode = "utf16"
    r = env.create_connection("idp", env.server.metadata_url)
    assert r.status_code == 400 and "UTF-8" in r.get_json()["message"], r.get_json()
    assert r.get_json()["details"]["field"] == "saml.metadata_url"  # what the admin sent, not metadata_xml
    env.server.mode = "ok"
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    env.server.mode = "utf16"
    env.clock.advance(SIX_HOURS + 1)
    _logged_in(env.login("idp"))  # the last good copy
    meta = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert meta["entity_id"] == ENTITY_ID and "UTF-8" in meta["refresh"]["last_error"]


def test_connection_whose_metadata_url_never_answered_cannot_log_anyone_in(env: Env) -> None:
    # the URL answers once, for the admin's save, then never again, and the stored copy is lost
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    env.server.mode = "500"
    svc = env.app.extensions["broker"]
    from broker.ports import MetadataState

    conn = svc.config.connection(svc.config.tenant_by_slug("acme").id, "idp")
    svc.config.save_metadata_state(conn.id, MetadataState(None, None, None, None))

    r = env.authorize("idp")
    assert r.status_code != 500
    if r.status_code == 302:  # refused with an OAuth error to the app (its request is known and valid)
        q = query_of(r.headers["Location"])
        assert r.headers["Location"].startswith(REDIRECT_URI)
        assert q["error"] in ("access_denied", "temporarily_unavailable") and "code" not in q
        assert q["state"] == "st" and q["error_description"]
    else:
        assert 400 <= r.status_code < 500 and b"Traceback" not in r.data
    assert env.failures()[0]["reason"] in ("saml_connection_not_ready", "metadata_unavailable")

    # and a response posted straight to its ACS is refused with a clear page too
    idp = make_idp(ENTITY_ID)
    acs = f"{PUBLIC}/t/acme/connections/idp/saml/acs"
    response = build_response(idp, acs_url=acs, audience=f"{PUBLIC}/t/acme/connections/idp/saml/metadata",
                              in_response_to=None, subject_in_response_to=None, issue_instant=env.clock.now())
    r = env.client.post("/t/acme/connections/idp/saml/acs", data={"SAMLResponse": to_post_binding(response)})
    assert 400 <= r.status_code < 500 and "code=" not in r.headers.get("Location", "")
    assert env.failures()[0]["reason"] in ("saml_connection_not_ready", "metadata_unavailable")

    meta = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert meta["refresh"]["last_error"]


def test_a_metadata_url_without_any_good_copy_is_retried_after_a_pause_not_on_every_login(env: Env) -> None:
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    env.server.mode = "500"
    svc = env.app.extensions["broker"]
    from broker.ports import MetadataState

    conn = svc.config.connection(svc.config.tenant_by_slug("acme").id, "idp")
    svc.config.save_metadata_state(conn.id, MetadataState(None, None, None, None))
    env.authorize("idp")
    hits = len(env.server.hits)
    for _ in range(3):
        env.authorize("idp")
    assert len(env.server.hits) == hits


def test_the_metadata_fetched_at_save_time_is_the_first_good_copy(env: Env) -> None:
    assert env.create_connection("idp", env.server.metadata_url).status_code == 201
    meta = env.admin("GET", "/tenants/acme/connections/idp").get_json()["metadata"]
    assert meta.get("entity_id") == ENTITY_ID, meta
    env.server.mode = "500"
    _logged_in(env.login("idp"))


def test_admin_create_with_an_unreachable_metadata_url_is_400_metadata_unavailable(env: Env) -> None:
    dead = f"http://127.0.0.1:{free_port()}/metadata"  # nothing listens there
    r = env.create_connection("dead", dead)
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["error"] == "metadata_unavailable" and body["message"]
    assert body["details"]["field"] == "saml.metadata_url"
    assert env.admin("GET", "/tenants/acme/connections/dead").status_code == 404


def test_admin_create_with_a_plain_http_metadata_url_to_a_public_host_is_400(env: Env) -> None:
    r = env.create_connection("plain", "http://idp.example.test/metadata")
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["error"] == "metadata_unavailable" and "Plain http is refused" in body["message"]
    assert body["details"]["field"] == "saml.metadata_url"
    assert env.admin("GET", "/tenants/acme/connections/plain").status_code == 404


def test_admin_create_with_a_failing_metadata_url_is_400(env: Env) -> None:
    env.server.mode = "500"
    r = env.create_connection("idp", env.server.metadata_url)
    assert r.status_code == 400 and r.get_json()["error"] == "metadata_unavailable"
    env.server.mode = "garbage"
    r = env.create_connection("idp", env.server.metadata_url)
    assert r.status_code == 400 and r.get_json()["error"].startswith("metadata_"), r.get_json()
    assert env.admin("GET", "/tenants/acme/connections/idp").status_code == 404


def test_a_federation_aggregate_by_url_uses_the_named_idp_through_refreshes(env: Env) -> None:
    """An EntitiesDescriptor with several IdPs: `saml.idp_entity_id` picks ours, at save time, at login and
    at every refresh of the document."""
    other = SamlIdp(idp=make_idp("https://other.federation.test/idp"), url="https://other.federation.test")
    ours = env.server.document.split("?>", 1)[1]
    env.server.document = (
        '<?xml version="1.0"?><md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata">'
        + other.metadata_xml().split("?>", 1)[1] + ours + "</md:EntitiesDescriptor>")
    refused = env.create_connection("fed", env.server.metadata_url)
    assert refused.status_code == 400 and "several identity providers" in refused.get_json()["message"]
    r = env.admin("POST", "/tenants/acme/connections", {
        "slug": "fed", "protocol": "saml", "mapping": {"preset": "okta", "rules": []},
        "saml": {"metadata_url": env.server.metadata_url, "idp_entity_id": ENTITY_ID}})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["metadata"]["entity_id"] == ENTITY_ID
    _logged_in(env.login("fed"))
    hits = len(env.server.hits)
    env.clock.advance(SIX_HOURS + 60)  # the document is due: the next login refreshes it first
    _logged_in(env.login("fed"))
    assert len(env.server.hits) > hits, "refreshed"
    refresh = env.admin("GET", "/tenants/acme/connections/fed").get_json()["metadata"]
    assert refresh["entity_id"] == ENTITY_ID and refresh["refresh"]["last_error"] is None

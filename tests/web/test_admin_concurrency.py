"""Concurrent admin writes never lose a change, and clients can make a write conditional (ETag / If-Match).

A PATCH is a merge onto what was read. Two admins (or an admin and `config apply`, or two replicas) patching
different fields of the same connection at the same moment must both land: the second write, made on a
version that is no longer current, is redone on a fresh read instead of overwriting the first. A client that
names the version it read (If-Match) gets 412 instead, and nothing changes. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BOOTSTRAP_KEY, AdminClient
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp

CONN = {"slug": "okta", "protocol": "saml", "domains": ["acme.com"], "mapping": {"preset": "okta"}}
APP = {"name": "Portal", "client_id": "portal", "redirect_uris": ["https://portal.example/cb"]}


def _call(client: FlaskClient, method: str, path: str, body: Any = None, **headers: str) -> Any:
    return client.open(f"/admin/v1{path}", method=method, json=body,
                       headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}", **headers})


def _setup(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", CONN).status_code == 201
    assert admin.call("POST", "/tenants/acme/apps", APP).status_code == 201


# -- ETag and If-Match ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path, patch", [
    ("/tenants/acme", {"name": "Acme Inc"}),
    ("/tenants/acme/connections/okta", {"domains": ["acme.org"]}),
    ("/tenants/acme/apps/portal", {"name": "Portal 2"}),
])
def test_writes_carry_an_etag_and_if_match_guards_them(admin: AdminClient, client: FlaskClient, path: str,
                                                       patch: dict[str, Any]) -> None:
    _setup(admin)
    first = _call(client, "GET", path)
    tag = first.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"')
    assert _call(client, "GET", path).headers["ETag"] == tag  # stable while nothing changes

    ok = _call(client, "PATCH", path, patch, **{"If-Match": tag})
    assert ok.status_code == 200, ok.get_json()
    new_tag = ok.headers["ETag"]
    assert new_tag != tag and _call(client, "GET", path).headers["ETag"] == new_tag
    after = _call(client, "GET", path).get_json()

    # the version read first is stale now: refused, and nothing changes
    stale = _call(client, "PATCH", path, {"name": "Stale"} if "name" in patch else {"domains": ["stale.com"]},
                  **{"If-Match": tag})
    assert stale.status_code == 412, stale.get_json()
    assert stale.get_json()["error"] == "precondition_failed" and stale.get_json()["message"]
    assert _call(client, "GET", path).get_json() == after
    # a weak tag never matches (If-Match compares strongly); "*" and a list that names the current tag do
    assert _call(client, "PATCH", path, patch, **{"If-Match": "W/" + new_tag}).status_code == 412
    assert _call(client, "PATCH", path, patch, **{"If-Match": f'{tag}, {new_tag}'}).status_code == 200
    assert _call(client, "PATCH", path, patch, **{"If-Match": "*"}).status_code == 200


def test_delete_with_a_stale_if_match_deletes_nothing(admin: AdminClient, client: FlaskClient) -> None:
    _setup(admin)
    for path, patch in (("/tenants/acme/apps/portal", {"name": "Portal 2"}),
                        ("/tenants/acme/connections/okta", {"domains": ["acme.org"]}),
                        ("/tenants/acme", {"name": "Acme Inc"})):
        tag = _call(client, "GET", path).headers["ETag"]
        current = _call(client, "PATCH", path, patch).headers["ETag"]
        refused = _call(client, "DELETE", path, **{"If-Match": tag})
        assert refused.status_code == 412, refused.get_json()
        assert _call(client, "GET", path).status_code == 200
        assert _call(client, "DELETE", path, **{"If-Match": current}).status_code == 204
        assert _call(client, "GET", path).status_code == 404


DELETABLE = [("/tenants/acme/apps/portal", "app_for", {"name": "Portal 2"}),
             ("/tenants/acme/connections/okta", "connection_for", {"domains": ["acme.org"]}),
             ("/tenants/acme", "tenant_for", {"name": "Acme Inc"})]


def _raced(app: Flask, lookup: str, other: Callable[[], Any], request: Callable[[], Any]) -> tuple[int, Any]:
    """Send `request`; between its lookup of the resource (AdminService.<lookup>) and its write, `other` runs
    to completion. The status of `other`, and the answer to `request`."""
    service = app.extensions["broker"].admin
    original = getattr(service, lookup)
    raced: list[int] = []

    def racing_lookup(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        if not raced:
            raced.append(0)  # the other request looks the resource up too: it must not race again
            raced[0] = other().status_code
        return found

    setattr(service, lookup, racing_lookup)
    try:
        answer = request()
    finally:
        delattr(service, lookup)
    assert raced, "the race did not happen"
    return raced[0], answer


@pytest.mark.parametrize("path, lookup, patch", DELETABLE)
def test_a_delete_that_lost_a_race_with_another_delete_is_404_and_audits_nothing(
        app: Flask, admin: AdminClient, client: FlaskClient, path: str, lookup: str, patch: dict[str, Any]) -> None:
    """Deterministic interleaving: between this DELETE's read and its write, another DELETE of the same resource
    completes. Only the one that deleted answers 204 and writes an audit event."""
    _setup(admin)
    raced, late = _raced(app, lookup, lambda: _call(app.test_client(), "DELETE", path),
                         lambda: _call(client, "DELETE", path))
    assert raced == 204
    assert late.status_code == 404, late.get_json()
    events = app.extensions["broker"].config.audit_page(None, type="admin", outcome=None, limit=50, cursor=None)
    deletes = [e for e in events.events if str(e.details.get("action", "")).endswith(".delete")]
    assert len(deletes) == 1, deletes


@pytest.mark.parametrize("path, lookup, patch", DELETABLE)
def test_a_delete_naming_a_version_never_removes_a_newer_one(
        app: Flask, admin: AdminClient, client: FlaskClient, path: str, lookup: str, patch: dict[str, Any]) -> None:
    """If-Match is checked where the delete is made (under the row lock), not only on the read before it: a
    PATCH that lands in between makes the DELETE a 412, and the patched resource stays."""
    _setup(admin)
    tag = _call(client, "GET", path).headers["ETag"]
    raced, refused = _raced(app, lookup, lambda: _call(app.test_client(), "PATCH", path, patch),
                            lambda: _call(client, "DELETE", path, **{"If-Match": tag}))
    assert raced == 200
    assert refused.status_code == 412, refused.get_json()
    after = _call(client, "GET", path)
    assert after.status_code == 200 and after.get_json()[next(iter(patch))] == next(iter(patch.values()))


def test_metadata_upload_honours_if_match(admin: AdminClient, client: FlaskClient) -> None:
    _setup(admin)
    path = "/tenants/acme/connections/okta"
    tag = _call(client, "GET", path).headers["ETag"]
    assert _call(client, "PATCH", path, {"domains": ["acme.org"]}).status_code == 200
    xml = SamlIdp(idp=make_idp("https://idp.acme.test"), url="https://idp.acme.test").metadata_xml()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", "Content-Type": "application/samlmetadata+xml"}
    stale = client.put(f"/admin/v1{path}/metadata", data=xml, headers={**headers, "If-Match": tag})
    assert stale.status_code == 412
    assert _call(client, "GET", path).get_json()["metadata"] is None
    current = _call(client, "GET", path).headers["ETag"]
    ok = client.put(f"/admin/v1{path}/metadata", data=xml, headers={**headers, "If-Match": current})
    assert ok.status_code == 200, ok.get_json()
    assert _call(client, "GET", path).get_json()["metadata"]["entity_id"]


def test_openapi_documents_if_match_and_412(client: FlaskClient) -> None:
    doc = client.get("/admin/v1/openapi.json").get_json()
    for path, method in (("/tenants/{t}", "patch"), ("/tenants/{t}/connections/{c}", "patch"),
                         ("/tenants/{t}/connections/{c}", "delete"), ("/tenants/{t}/apps/{client_id}", "patch"),
                         ("/tenants/{t}/connections/{c}/metadata", "put")):
        op = doc["paths"][path][method]
        assert any(p["name"] == "If-Match" and p["in"] == "header" for p in op["parameters"]), (path, method)
        assert "412" in op["responses"], (path, method)
    assert "ETag" in doc["paths"]["/tenants/{t}/connections/{c}"]["get"]["responses"]["200"]["headers"]


# -- no lost update ------------------------------------------------------------------------------------


def test_a_patch_that_raced_another_write_is_merged_again(app: Flask, admin: AdminClient,
                                                        client: FlaskClient) -> None:
    """Deterministic interleaving: between this PATCH's read and its write, another writer changes a
    different field. Both changes must be there afterwards (before, the PATCH wrote back the old copy)."""
    _setup(admin)
    service = app.extensions["broker"].admin
    original = service._draft
    raced: list[int] = []

    def racing_draft(body: Any, existing: Any) -> Any:
        # after this PATCH read the connection, before it writes (the write itself runs alone in the tenant)
        if not raced and existing is not None:  # another admin's PATCH of another field gets in, and completes
            raced.append(0)
            other = _call(app.test_client(), "PATCH", "/tenants/acme/connections/okta",
                          {"restrict_to_domains": True})
            assert other.status_code == 200, other.get_json()
            raced[0] = other.get_json()["version"]
        return original(body, existing)

    service._draft = racing_draft
    try:
        r = _call(client, "PATCH", "/tenants/acme/connections/okta", {"domains": ["acme.org"]})
    finally:
        del service._draft
    assert r.status_code == 200, r.get_json()
    assert raced
    got = _call(client, "GET", "/tenants/acme/connections/okta").get_json()
    assert got["domains"] == ["acme.org"]  # this PATCH's change
    assert got["restrict_to_domains"] is True  # the other writer's change, not undone
    assert got["version"] == raced[0] + 1


def test_concurrent_patches_of_different_fields_all_land_or_say_so(app: Flask, admin: AdminClient) -> None:
    """Real threads, each patching its own field of one connection at the same moment. Every PATCH that
    answers 200 is in the final state; one that could not get its turn answers 409 and is not."""
    _setup(admin)
    patches: dict[str, dict[str, Any]] = {
        "domains": {"domains": ["acme.org"]},
        "restrict_to_domains": {"restrict_to_domains": True},
        "enabled": {"enabled": False},
        "mapping": {"mapping": {"rules": [{"op": "copy", "from": "department", "to": "department"}]}},
        "saml": {"saml": {"clock_skew_seconds": 30}},
        "sign": {"saml": {"want_assertions_signed": False}},
    }
    barrier = threading.Barrier(len(patches))
    results: dict[str, tuple[int, Any]] = {}

    def run(name: str, body: dict[str, Any]) -> None:
        own = app.test_client()
        barrier.wait()
        r = _call(own, "PATCH", "/tenants/acme/connections/okta", body)
        results[name] = (r.status_code, r.get_json())

    threads = [threading.Thread(target=run, args=item) for item in patches.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = _call(app.test_client(), "GET", "/tenants/acme/connections/okta").get_json()
    landed = {name for name, (status, _) in results.items() if status == 200}
    for name, (status, body) in results.items():
        assert status in (200, 409), (name, status, body)
        if status == 409:
            assert body["error"] == "concurrent_update"
    assert landed, results
    checks = {
        "domains": final["domains"] == ["acme.org"],
        "restrict_to_domains": final["restrict_to_domains"] is True,
        "enabled": final["enabled"] is False,
        "mapping": final["mapping"]["rules"] == patches["mapping"]["mapping"]["rules"],
        "saml": final["saml"]["clock_skew_seconds"] == 30,
        "sign": final["saml"]["want_assertions_signed"] is False,
    }
    assert {name for name, ok in checks.items() if ok} == landed, (results, final)
    assert final["version"] == 1 + len(landed)


def test_connections_created_at_once_never_share_a_domain(app: Flask, admin: AdminClient) -> None:
    """The domain check and the insert run alone in the tenant: of several connections created at the same
    moment with one domain, one gets it and the others 400 domain_conflict (two could both land before)."""
    admin.tenant("acme")
    n = 6
    barrier = threading.Barrier(n)
    results: dict[int, int] = {}

    def run(i: int) -> None:
        own = app.test_client()
        barrier.wait()
        r = _call(own, "POST", "/tenants/acme/connections",
                  {"slug": f"idp{i}", "protocol": "saml", "domains": ["shared.test"]})
        results[i] = r.status_code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [201] + [400] * (n - 1), results
    conns = _call(app.test_client(), "GET", "/tenants/acme/connections").get_json()["connections"]
    assert [c["domains"] for c in conns] == [["shared.test"]]


@pytest.mark.parametrize("path, body, code", [
    ("/tenants", {"slug": "globex", "name": "Globex"}, "tenant_exists"),
    ("/tenants/acme/apps", {**APP, "client_id": "same"}, "app_exists"),
    ("/tenants/acme/connections", {"slug": "same", "protocol": "saml"}, "connection_exists"),
])
def test_the_same_create_at_once_says_what_exists(app: Flask, admin: AdminClient, path: str, body: dict[str, Any],
                                                  code: str) -> None:
    """The losers of a race past the existence check meet the unique index: the same 409 as a late create."""
    admin.tenant("acme")
    n = 6
    barrier = threading.Barrier(n)
    results: list[tuple[int, Any]] = []

    def run() -> None:
        own = app.test_client()
        barrier.wait()
        r = _call(own, "POST", path, body)
        results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status for status, _ in results) == [201] + [409] * (n - 1), results
    assert {b["error"] for status, b in results if status == 409} == {code}


def test_key_rotations_at_once_leave_one_active_key_and_count_every_one(app: Flask, admin: AdminClient) -> None:
    tenant = admin.tenant("acme")
    n = 5
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def run() -> None:
        own = app.test_client()
        barrier.wait()
        statuses.append(_call(own, "POST", "/tenants/acme/keys/rotate").status_code)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * n
    store = app.extensions["broker"].admin.store
    with store.atomic():  # past the configuration cache
        keys = store.signing_keys(tenant["id"])
    assert len(keys) == 1 + n and [k.alg for k in keys if k.active] == ["RS256"]
    assert _call(app.test_client(), "GET", "/tenants/acme").get_json()["version"] == tenant["version"] + n


@pytest.mark.parametrize("path, same", [
    ("/tenants/acme/connections/okta", {"domains": ["acme.com"]}),
    ("/tenants/acme/apps/portal", {"name": "Portal"}),
    ("/tenants/acme", {"name": "Acme Corp"}),
])
def test_a_patch_that_changes_nothing_writes_nothing(admin: AdminClient, client: FlaskClient, path: str,
                                                    same: dict[str, Any]) -> None:
    """No new version (every other admin's ETag stays good), no audit event for a change that did not happen."""
    _setup(admin)
    before = _call(client, "GET", path)
    events = len(admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"])
    for body in ({}, same):
        r = _call(client, "PATCH", path, body, **{"If-Match": before.headers["ETag"]})
        assert r.status_code == 200, r.get_json()
        assert r.headers["ETag"] == before.headers["ETag"]
        assert {k: v for k, v in r.get_json().items() if k not in ("warnings", "metadata")} == \
            {k: v for k, v in before.get_json().items() if k not in ("warnings", "metadata", "last_login_at")}
    assert len(admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"]) == events
    assert _call(client, "PATCH", path, {"name": "Changed"} if "name" in same else {"domains": ["acme.org"]},
                 **{"If-Match": before.headers["ETag"]}).status_code == 200  # the tag was still good


@pytest.mark.parametrize("value", ['"zz", *', "*, *", "garbage", '"ok", garbage', "W/x", '"unterminated'])
def test_an_if_match_that_is_not_star_or_entity_tags_is_400(admin: AdminClient, client: FlaskClient,
                                                            value: str) -> None:
    """RFC 9110 §13.1.1: `*` alone, or a list of entity-tags. `"stale", *` must not quietly mean "any"."""
    _setup(admin)
    tag = _call(client, "GET", "/tenants/acme").headers["ETag"]
    r = _call(client, "PATCH", "/tenants/acme", {"name": "X"}, **{"If-Match": value.replace("ok", tag.strip('"'))})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request", r.get_json()
    assert _call(client, "GET", "/tenants/acme").get_json()["name"] == "Acme Corp"

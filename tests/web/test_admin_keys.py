"""Admin keys over the admin API: create, list (never the key itself), revoke (effective on the next request),
tenant scoping (other tenants' keys are 404), and the last global key kept (on SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from broker.app import build_services
from broker.errors import Conflict, NotFound
from broker.settings import load_settings
from tests.conftest import AdminClient, make_env


def _key(admin: AdminClient, path: str, label: str = "") -> dict[str, Any]:
    r = admin.call("POST", path, {"label": label})
    assert r.status_code == 201, r.get_json()
    out: dict[str, Any] = r.get_json()
    return out


@pytest.fixture
def tenants(admin: AdminClient, client: FlaskClient) -> dict[str, Any]:
    admin.tenant("acme")
    admin.tenant("globex", "Globex")
    acme = _key(admin, "/tenants/acme/admin-keys", "acme ops")
    globex = _key(admin, "/tenants/globex/admin-keys", "globex ops")
    return {"acme": acme, "globex": globex,
            "acme_client": AdminClient(client, acme["key"]), "globex_client": AdminClient(client, globex["key"])}


def test_a_tenants_keys_are_listed_without_their_values(admin: AdminClient, tenants: dict[str, Any]) -> None:
    second = _key(tenants["acme_client"], "/tenants/acme/admin-keys", "ci")
    r = tenants["acme_client"].call("GET", "/tenants/acme/admin-keys")
    assert r.status_code == 200
    keys = r.get_json()["admin_keys"]
    assert [(k["id"], k["label"], k["tenant"]) for k in keys] == [
        (tenants["acme"]["id"], "acme ops", "acme"), (second["id"], "ci", "acme")]
    assert all(set(k) == {"id", "label", "tenant", "created_at", "expires_at"} for k in keys)
    assert all(k["expires_at"] is None for k in keys)
    assert tenants["acme"]["key"] not in r.get_data(as_text=True)


def test_a_revoked_key_stops_working_on_the_next_request(admin: AdminClient, tenants: dict[str, Any]) -> None:
    acme = tenants["acme_client"]
    spare = _key(admin, "/tenants/acme/admin-keys", "spare")
    assert acme.call("GET", "/tenants/acme").status_code == 200
    r = admin.call("DELETE", f"/tenants/acme/admin-keys/{tenants['acme']['id']}")
    assert r.status_code == 204
    r = acme.call("GET", "/tenants/acme")
    assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    ids = [k["id"] for k in admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]]
    assert ids == [spare["id"]]
    events = admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"]
    assert events[0]["details"]["action"] == "admin_key.revoke"
    assert events[0]["details"]["key_id"] == tenants["acme"]["id"]


def test_a_tenant_key_may_revoke_its_own_tenants_keys(tenants: dict[str, Any]) -> None:
    acme = tenants["acme_client"]
    other = _key(acme, "/tenants/acme/admin-keys", "to revoke")
    assert acme.call("DELETE", f"/tenants/acme/admin-keys/{other['id']}").status_code == 204
    assert AdminClient(acme.client, other["key"]).call("GET", "/tenants/acme").status_code == 401


@pytest.mark.parametrize("method, path", [
    ("GET", "/tenants/globex/admin-keys"),
    ("DELETE", "/tenants/globex/admin-keys/{globex}"),
    ("DELETE", "/tenants/acme/admin-keys/{globex}"),  # another tenant's key named under one's own tenant
])
def test_other_tenants_keys_are_404_and_untouched(admin: AdminClient, tenants: dict[str, Any],
                                                  method: str, path: str) -> None:
    r = tenants["acme_client"].call(method, path.format(globex=tenants["globex"]["id"]))
    assert r.status_code == 404, r.get_json()
    assert r.get_json()["error"] in ("tenant_not_found", "admin_key_not_found")
    assert tenants["globex_client"].call("GET", "/tenants/globex").status_code == 200


@pytest.mark.parametrize("method, path", [
    ("GET", "/admin-keys"),
    ("POST", "/admin-keys"),
    ("DELETE", "/admin-keys/{acme}"),
])
def test_the_top_level_key_endpoints_are_for_global_keys_only(tenants: dict[str, Any], method: str,
                                                              path: str) -> None:
    r = tenants["acme_client"].call(method, path.format(acme=tenants["acme"]["id"]),
                                    {} if method == "POST" else None)
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
    assert tenants["acme_client"].call("GET", "/tenants/acme").status_code == 200


def test_global_keys_are_created_listed_and_revoked(admin: AdminClient, client: FlaskClient,
                                                    tenants: dict[str, Any]) -> None:
    created = _key(admin, "/admin-keys", "automation")
    assert created["tenant"] is None
    automation = AdminClient(client, created["key"])
    assert automation.call("POST", "/tenants", {"slug": "initech", "name": "Initech"}).status_code == 201
    listed = automation.call("GET", "/admin-keys").get_json()["admin_keys"]
    by_id = {k["id"]: k for k in listed}
    assert by_id[created["id"]]["tenant"] is None and by_id[created["id"]]["label"] == "automation"
    assert by_id[tenants["acme"]["id"]]["tenant"] == "acme"
    assert by_id[tenants["globex"]["id"]]["tenant"] == "globex"
    bootstrap = [k for k in listed if k["tenant"] is None and k["id"] != created["id"]]
    assert len(bootstrap) == 1
    # a global key revokes any key, a tenant's included
    assert automation.call("DELETE", f"/admin-keys/{tenants['globex']['id']}").status_code == 204
    assert tenants["globex_client"].call("GET", "/tenants/globex").status_code == 401
    assert automation.call("DELETE", f"/admin-keys/{bootstrap[0]['id']}").status_code == 204
    assert admin.call("GET", "/tenants").status_code == 401


def test_the_last_global_key_cannot_be_revoked(admin: AdminClient) -> None:
    keys = admin.call("GET", "/admin-keys").get_json()["admin_keys"]
    assert len(keys) == 1
    r = admin.call("DELETE", f"/admin-keys/{keys[0]['id']}")
    assert r.status_code == 409 and r.get_json()["error"] == "last_global_admin_key", r.get_json()
    assert r.get_json()["message"]
    assert admin.call("GET", "/tenants").status_code == 200


def test_an_unknown_key_id_is_404(admin: AdminClient, tenants: dict[str, Any]) -> None:
    for path in ("/admin-keys/no-such-key", "/tenants/acme/admin-keys/no-such-key"):
        r = admin.call("DELETE", path)
        assert r.status_code == 404 and r.get_json()["error"] == "admin_key_not_found"


def test_openapi_documents_the_admin_key_endpoints(client: FlaskClient) -> None:
    paths = client.get("/admin/v1/openapi.json").get_json()["paths"]
    assert set(paths["/tenants/{t}/admin-keys"]) >= {"post", "get"}
    assert "delete" in paths["/tenants/{t}/admin-keys/{key_id}"]
    assert set(paths["/admin-keys"]) >= {"post", "get"}
    assert "delete" in paths["/admin-keys/{key_id}"]


def test_two_concurrent_revocations_leave_one_global_key(database_url: str) -> None:
    """Two global keys, both revoked at the same moment: the revocations run one after the other (PostgreSQL:
    the global key rows are locked before counting; SQLite: the write lock is taken first), so exactly one
    wins and one global key remains. Raced 20 times to make a lost race likely if it can happen."""
    svc = build_services(load_settings(make_env(database_url)))
    try:
        store = svc.config
        for round_ in range(20):
            svc.admin.create_admin_key(None, None, {"label": f"second {round_}"})
            ids = [k.id for k in store.admin_keys(None)]
            assert len(ids) == 2
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def revoke(key_id: str) -> None:
                barrier.wait()
                try:
                    store.delete_admin_key(key_id, tenant_id=None)
                    outcomes.append("revoked")
                except Conflict:
                    outcomes.append("conflict")
                except NotFound:
                    outcomes.append("not_found")

            threads = [threading.Thread(target=revoke, args=(i,)) for i in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["conflict", "revoked"], (round_, outcomes)
            assert len(store.admin_keys(None)) == 1
    finally:
        svc.extras["engine"].dispose()


def test_the_same_key_revoked_twice_at_once_is_revoked_once(database_url: str) -> None:
    """Two revocations of one tenant key at the same moment: one deletes it, the other finds nothing (404),
    so a retrying script cannot produce two audit events for one revocation."""
    svc = build_services(load_settings(make_env(database_url)))
    try:
        svc.admin.create_tenant(None, {"slug": "acme", "name": "Acme"})
        for round_ in range(10):
            key_id = svc.admin.create_admin_key(None, "acme", {"label": f"k{round_}"})["id"]
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def revoke(key_id: str = key_id) -> None:
                barrier.wait()
                try:
                    svc.admin.revoke_admin_key(None, "acme", key_id)
                    outcomes.append("revoked")
                except NotFound:
                    outcomes.append("not_found")

            threads = [threading.Thread(target=revoke) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["not_found", "revoked"], (round_, outcomes)
    finally:
        svc.extras["engine"].dispose()


def test_admin_events_name_the_key_that_acted(admin: AdminClient) -> None:
    """The key's id (never its value) is in every admin event, so `who did what` can be answered."""
    created = admin.call("POST", "/admin-keys", {"label": "ops"}).get_json()
    ops = AdminClient(admin.client, created["key"])
    assert ops.call("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
    events = admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"]
    assert events[0]["details"]["action"] == "tenant.create"
    assert events[0]["details"]["admin_key_id"] == created["id"]
    assert created["key"] not in str(events)


def test_a_tenants_key_revoked_by_the_operator_shows_in_the_tenants_audit(admin: AdminClient,
                                                                           tenants: dict[str, Any]) -> None:
    assert admin.call("DELETE", f"/admin-keys/{tenants['acme']['id']}").status_code == 204
    events = admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"]
    revoked = [e for e in events if e["details"]["action"] == "admin_key.revoke"]
    assert [e["details"]["key_id"] for e in revoked] == [tenants["acme"]["id"]]
    assert revoked[0]["tenant"] == "acme"


def test_every_event_is_readable_by_a_global_key_and_only_by_one(admin: AdminClient,
                                                                   tenants: dict[str, Any]) -> None:
    """Events of no tenant (a global key's creation, a deleted tenant) have no /tenants/{t}/audit to be read at."""
    created = _key(admin, "/admin-keys", "automation")
    assert admin.call("DELETE", "/tenants/globex").status_code == 204
    page = admin.call("GET", "/audit?type=admin&limit=100")
    assert page.status_code == 200, page.get_json()
    actions = [(e["tenant"], e["details"]["action"]) for e in page.get_json()["events"]]
    assert ("globex", "tenant.delete") in actions and (None, "admin_key.create") in actions
    assert ("acme", "tenant.create") in actions  # and every tenant's own
    assert any(e["details"].get("key_id") == created["id"] or e["details"].get("admin_key_id")
               for e in page.get_json()["events"])
    refused = tenants["acme_client"].call("GET", "/audit")
    assert refused.status_code == 403 and refused.get_json()["error"] == "forbidden"
    assert admin.call("GET", "/audit?type=bogus").status_code == 400


def test_every_refused_admin_request_is_a_log_line_without_the_key(admin: AdminClient, client: FlaskClient,
                                                                    tenants: dict[str, Any],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import logging

    wrong = "wrong-key-0123456789-abcdefghijklmnopqrstuv"
    with caplog.at_level(logging.WARNING, logger="broker.web"):
        assert AdminClient(client, wrong).call("GET", "/tenants").status_code == 401
        assert tenants["acme_client"].call("GET", "/tenants/globex").status_code == 404
        assert tenants["acme_client"].call("POST", "/tenants", {"slug": "x", "name": "X"}).status_code == 403
        assert admin.call("GET", "/no-such-route").status_code == 404
        assert admin.call("GET", "/tenants/acme").status_code == 200
    refused = [r for r in caplog.records if r.getMessage() == "admin_request_refused"]
    assert [(r.status, r.method, r.path) for r in refused] == [  # type: ignore[attr-defined]
        (401, "GET", "/admin/v1/tenants"), (404, "GET", "/admin/v1/tenants/globex"),
        (403, "POST", "/admin/v1/tenants"), (404, "GET", "/admin/v1/no-such-route")]
    assert all(wrong not in str(r.__dict__) for r in caplog.records)


def test_a_key_with_an_expiry_stops_working_when_it_expires(database_url: str) -> None:
    """expires_in (seconds) sets expires_at; the key works up to that instant and then gets 401 invalid_token
    saying it expired; the list shows the time; a key without it never expires."""
    from broker.app import create_app
    from broker.ports import FrozenClock
    from broker.store.state import MemoryStateStore
    from tests.conftest import BOOTSTRAP_KEY, close_app

    clock = FrozenClock(float(int(time.time())))
    app = create_app(load_settings(make_env(database_url)), clock=clock, state=MemoryStateStore(clock=clock.now))
    try:
        admin = AdminClient(app.test_client(), BOOTSTRAP_KEY)
        admin.tenant("acme")
        r = admin.call("POST", "/tenants/acme/admin-keys", {"label": "ci", "expires_in": 3600})
        assert r.status_code == 201
        made = r.get_json()
        expected = datetime.fromtimestamp(clock.now() + 3600, UTC)
        assert datetime.fromisoformat(made["expires_at"]) == expected
        listed = admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"]
        assert [k["expires_at"] for k in listed] == [made["expires_at"]]
        event = admin.call("GET", "/tenants/acme/audit?type=admin").get_json()["events"][0]
        assert event["details"]["action"] == "admin_key.create" and event["details"]["expires_at"] == made["expires_at"]

        ci = AdminClient(admin.client, made["key"])
        clock.advance(3599)
        assert ci.call("GET", "/tenants/acme").status_code == 200
        clock.advance(1)
        r = ci.call("GET", "/tenants/acme")
        assert r.status_code == 401
        assert r.get_json()["error"] == "unauthorized" and "expired" in r.get_json()["message"]
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert admin.call("GET", "/tenants/acme").status_code == 200  # the bootstrap key has no expiry
    finally:
        close_app(app)


@pytest.mark.parametrize("body", [{"expires_in": 299}, {"expires_in": 5 * 365 * 86400 + 1}, {"expires_in": "3600"},
                                  {"expires_in": 3600.5}, {"expires_in": True}])
def test_an_expiry_out_of_bounds_is_refused_and_makes_no_key(admin: AdminClient, body: dict[str, Any]) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/admin-keys", body)
    assert r.status_code == 400 and r.get_json()["details"]["errors"][0]["field"] == "expires_in"
    assert admin.call("GET", "/tenants/acme/admin-keys").get_json()["admin_keys"] == []

"""A client_id is unique within its tenant only: two tenants may both have a `portal` app, each tenant's
endpoints find only their own, and a tenant admin learns nothing of other tenants' client_ids from a
conflict (SPEC: do not reveal other tenants). On SQLite and PostgreSQL."""

from __future__ import annotations

import base64

from flask.testing import FlaskClient

from tests.conftest import AdminClient

APP = {"name": "Portal", "client_id": "portal", "redirect_uris": ["https://portal.example/cb"]}


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_two_tenants_may_use_the_same_client_id(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    admin.tenant("globex")
    key = admin.call("POST", "/tenants/acme/admin-keys").get_json()["key"]
    acme_admin = AdminClient(client, key)
    globex = admin.call("POST", "/tenants/globex/apps", APP)
    assert globex.status_code == 201, globex.get_json()
    acme = acme_admin.call("POST", "/tenants/acme/apps", APP)
    assert acme.status_code == 201, acme.get_json()
    again = acme_admin.call("POST", "/tenants/acme/apps", APP)
    assert again.status_code == 409 and again.get_json()["error"] == "app_exists"
    assert acme_admin.call("GET", "/tenants/acme/apps/portal").get_json()["name"] == "Portal"
    # each tenant's token endpoint knows only its own `portal`
    for tenant, other in (("acme", globex), ("globex", acme)):
        r = client.post(f"/t/{tenant}/token", data={"grant_type": "authorization_code", "code": "x",
                                                     "redirect_uri": "https://portal.example/cb"},
                        headers=_basic("portal", other.get_json()["client_secret"]))
        assert r.status_code == 401 and r.get_json()["error"] == "invalid_client", (tenant, r.get_json())
    assert admin.call("DELETE", "/tenants/globex/apps/portal").status_code == 204
    assert acme_admin.call("GET", "/tenants/acme/apps/portal").status_code == 200

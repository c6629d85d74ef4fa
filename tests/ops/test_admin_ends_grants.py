"""Over real HTTP: what an admin removes stops working. Deleting an app and creating it again under the same
client_id (with a new secret), or disabling a connection, ends the tokens issued before: the refresh token is
refused, the access token is refused by userinfo and introspected as inactive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.ops.conftest import (
    REDIRECT_URI,
    Tenant,
    authorize_url,
    begin_login,
    code_of,
    post_acs,
    redeem,
    setup_saml_tenant,
)
from tests.support.broker_server import BrokerServer, running_broker
from tests.support.saml_idp import SamlIdp, running_saml_idp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    with running_broker(tmp_path_factory.mktemp("grants")) as server:
        yield server


def _tokens(broker: BrokerServer, tenant: Tenant) -> dict[str, str]:
    url = authorize_url(broker.url, tenant, "s1", scope="openid email offline_access")
    browser = requests.Session()
    action, fields = begin_login(browser, url)
    r = redeem(broker.url, tenant, code_of(post_acs(browser, broker.url, action, fields)))
    assert r.status_code == 200, r.text
    tokens: dict[str, str] = r.json()
    assert "refresh_token" in tokens
    return tokens


def _refresh(broker: BrokerServer, tenant: Tenant, refresh_token: str) -> requests.Response:
    return requests.post(f"{broker.url}/t/{tenant.slug}/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
    }, auth=(tenant.client_id, tenant.client_secret), timeout=30)


def _ended(broker: BrokerServer, tenant: Tenant, tokens: dict[str, str]) -> None:
    r = _refresh(broker, tenant, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    r = requests.get(f"{broker.url}/t/{tenant.slug}/userinfo",
                     headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=30)
    assert r.status_code == 401, r.text
    r = requests.post(f"{broker.url}/t/{tenant.slug}/introspect", data={"token": tokens["access_token"]},
                      auth=(tenant.client_id, tenant.client_secret), timeout=30)
    assert r.status_code == 200 and r.json() == {"active": False}, r.text


def test_an_app_recreated_under_its_client_id_does_not_inherit_its_tokens(broker: BrokerServer,
                                                                         idp: SamlIdp) -> None:
    tenant = setup_saml_tenant(broker, idp)
    tokens = _tokens(broker, tenant)
    assert broker.api("DELETE", f"/tenants/{tenant.slug}/apps/{tenant.client_id}").status_code == 204
    again = broker.api("POST", f"/tenants/{tenant.slug}/apps", {
        "name": "Portal", "client_id": tenant.client_id, "redirect_uris": [REDIRECT_URI]})
    assert again.status_code == 201, again.text
    recreated = Tenant(slug=tenant.slug, client_id=tenant.client_id, client_secret=again.json()["client_secret"])
    _ended(broker, recreated, tokens)
    fresh = _tokens(broker, recreated)
    assert _refresh(broker, recreated, fresh["refresh_token"]).status_code == 200


def test_a_disabled_connection_ends_its_tokens(broker: BrokerServer, idp: SamlIdp) -> None:
    tenant = setup_saml_tenant(broker, idp)
    tokens = _tokens(broker, tenant)
    r = broker.api("PATCH", f"/tenants/{tenant.slug}/connections/okta", {"enabled": False})
    assert r.status_code == 200, r.text
    _ended(broker, tenant, tokens)
    audit = broker.api("GET", f"/tenants/{tenant.slug}/audit?type=token&outcome=failure").json()["events"]
    assert audit and audit[0]["details"].get("grant_ended") == "connection_removed_or_disabled", audit[:1]

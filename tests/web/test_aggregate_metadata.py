"""Metadata that describes several IdPs (a federation aggregate, an EntitiesDescriptor): the connection names
the one it trusts in `saml.idp_entity_id` (or `?entity_id=` on the metadata upload), and every reader of the
metadata (the save, the login, the metadata refresh, the certificate gauge) takes that IdP and no other."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask.testing import FlaskClient

from tests.conftest import AdminClient
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
ONE = SamlIdp(idp=make_idp("https://one.federation.test/idp"), url="https://one.federation.test")
TWO = SamlIdp(idp=make_idp("https://two.federation.test/idp", key_type="ec"), url="https://two.federation.test")


def _aggregate() -> str:
    body = "".join(idp.metadata_xml().split("?>", 1)[1] for idp in (ONE, TWO))
    return f'<?xml version="1.0"?><md:EntitiesDescriptor xmlns:md="{MD}">{body}</md:EntitiesDescriptor>'


def _put(admin: AdminClient, query: str = "") -> object:
    return admin.client.put(f"/admin/v1/tenants/acme/connections/fed/metadata{query}", data=_aggregate(),
                            headers={**admin.headers, "Content-Type": "application/samlmetadata+xml"})


def test_the_connection_names_the_idp_of_an_aggregate(admin: AdminClient, client: FlaskClient) -> None:
    admin.tenant("acme")
    refused = admin.call("POST", "/tenants/acme/connections",
                         {"slug": "fed", "protocol": "saml", "saml": {"metadata_xml": _aggregate()}})
    assert refused.status_code == 400 and "several identity providers" in refused.get_json()["message"]
    created = admin.call("POST", "/tenants/acme/connections", {
        "slug": "fed", "protocol": "saml",
        "saml": {"metadata_xml": _aggregate(), "idp_entity_id": TWO.entity_id}})
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["metadata"]["entity_id"] == TWO.entity_id

    app = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://p.example/cb"]})
    r = client.get("/t/acme/authorize", query_string={
        "response_type": "code", "client_id": app.get_json()["client_id"], "redirect_uri": "https://p.example/cb",
        "scope": "openid", "state": "s", "connection": "fed"})
    assert r.status_code == 302 and urlsplit(r.headers["Location"]).netloc == "two.federation.test"

    gauge = client.get("/metrics").get_data(as_text=True)
    ours = [line for line in gauge.splitlines()
            if line.startswith("broker_idp_certificate_days_left{") and 'connection="fed"' in line]
    assert len(ours) == 1, ours  # TWO's certificate only


def test_the_metadata_upload_takes_the_idp_from_the_query_and_keeps_it(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections", {"slug": "fed", "protocol": "saml"}).status_code == 201
    assert _put(admin).status_code == 400  # which one?
    r = _put(admin, f"?entity_id={ONE.entity_id}")
    assert r.status_code == 200 and r.get_json()["entity_id"] == ONE.entity_id  # type: ignore[attr-defined]
    conn = admin.call("GET", "/tenants/acme/connections/fed").get_json()
    assert conn["saml"]["idp_entity_id"] == ONE.entity_id
    again = _put(admin)  # the next upload of the aggregate keeps to the same IdP
    assert again.status_code == 200 and again.get_json()["entity_id"] == ONE.entity_id  # type: ignore[attr-defined]
    missing = _put(admin, "?entity_id=https://nobody.test/idp")
    assert missing.status_code == 400  # type: ignore[attr-defined]

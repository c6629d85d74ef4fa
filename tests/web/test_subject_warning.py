"""SPEC: "A transient NameID is never a stable subject: the preset's subject source (an attribute) is used,
and a connection with neither gets a warning." The warning comes when the connection is saved (or its
metadata uploaded), not only as refused logins later."""

from __future__ import annotations

from typing import Any

from tests.conftest import AdminClient
from tests.samlxml.idp_fixtures import make_idp
from tests.support.saml_idp import SamlIdp

TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"


def _metadata(name_id_format: str) -> str:
    xml = SamlIdp(idp=make_idp("https://transient.idp.test"), url="https://transient.idp.test").metadata_xml()
    return xml.replace(EMAIL, name_id_format)


def _warned(body: dict[str, Any]) -> bool:
    return any(w.startswith("transient_subject:") for w in body["warnings"])


def test_a_connection_whose_only_subject_is_a_transient_nameid_is_warned_about(admin: AdminClient) -> None:
    admin.tenant("acme")
    r = admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta", "protocol": "saml", "mapping": {"preset": "okta"},
        "saml": {"metadata_xml": _metadata(TRANSIENT)}})
    assert r.status_code == 201, r.get_json()
    assert _warned(r.get_json()) and _warned(r.get_json()["metadata"])

    # asking for a persistent NameID, or naming an attribute as the subject, settles it
    r = admin.call("PATCH", "/tenants/acme/connections/okta",
                   {"saml": {"name_id_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"}})
    assert r.status_code == 200 and r.get_json()["warnings"] == []
    r = admin.call("PATCH", "/tenants/acme/connections/okta",
                   {"saml": {"name_id_format": TRANSIENT}, "mapping": {"subject_source": "email"}})
    assert r.status_code == 200 and r.get_json()["warnings"] == []
    r = admin.call("PATCH", "/tenants/acme/connections/okta", {"mapping": {"subject_source": None}})
    assert r.status_code == 200 and _warned(r.get_json())

    # Entra's preset takes the objectidentifier attribute: a transient NameID is fine there
    r = admin.call("POST", "/tenants/acme/connections", {
        "slug": "entra", "protocol": "saml", "mapping": {"preset": "azure-ad"},
        "saml": {"metadata_xml": _metadata(TRANSIENT)}})
    assert r.status_code == 201 and r.get_json()["warnings"] == []


def test_uploading_transient_only_metadata_is_warned_about(admin: AdminClient) -> None:
    admin.tenant("acme")
    assert admin.call("POST", "/tenants/acme/connections",
                      {"slug": "okta", "protocol": "saml", "mapping": {"preset": "okta"}}).status_code == 201
    for fmt, warned in ((TRANSIENT, True), (EMAIL, False)):
        r = admin.client.put("/admin/v1/tenants/acme/connections/okta/metadata", data=_metadata(fmt),
                             headers={**admin.headers, "Content-Type": "application/samlmetadata+xml"})
        assert r.status_code == 200, r.get_json()
        assert _warned(r.get_json()) is warned, fmt

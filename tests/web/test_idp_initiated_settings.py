"""An IdP-initiated SAML connection is checked when it is saved: its app must be an app of the same tenant,
and its redirect URI one of that app's (else every IdP-initiated login would fail at the first click)."""

from __future__ import annotations

from tests.conftest import AdminClient

REDIRECT = "https://portal.acme.example/cb"


def _saml(**settings: object) -> dict[str, object]:
    return {"saml": {"allow_idp_initiated": True, **settings}}


def test_idp_initiated_settings_are_checked_when_saved(admin: AdminClient) -> None:
    admin.tenant("acme")
    admin.tenant("globex")
    ours = admin.call("POST", "/tenants/acme/apps", {"name": "Portal", "redirect_uris": [REDIRECT]}).get_json()
    theirs = admin.call("POST", "/tenants/globex/apps", {"name": "X", "redirect_uris": [REDIRECT]}).get_json()
    r = admin.call("POST", "/tenants/acme/connections", {"slug": "okta", "protocol": "saml"})
    assert r.status_code == 201, r.get_json()
    refused = {
        "saml.idp_initiated_app": _saml(idp_initiated_app=theirs["client_id"], idp_initiated_redirect_uri=REDIRECT),
        "saml.idp_initiated_redirect_uri": _saml(idp_initiated_app=ours["client_id"],
                                                 idp_initiated_redirect_uri="https://evil.example/cb"),
    }
    for field, body in refused.items():
        r = admin.call("PATCH", "/tenants/acme/connections/okta", body)
        assert r.status_code == 400, (field, r.get_json())
        assert r.get_json()["details"]["field"] == field
    missing = admin.call("PATCH", "/tenants/acme/connections/okta", _saml(idp_initiated_app=ours["client_id"]))
    assert missing.status_code == 400
    assert missing.get_json()["details"]["field"] == "saml.idp_initiated_redirect_uri"
    assert admin.call("GET", "/tenants/acme/connections/okta").get_json()["saml"].get("allow_idp_initiated") \
        in (None, False), "nothing was saved"
    ok = admin.call("PATCH", "/tenants/acme/connections/okta",
                    _saml(idp_initiated_app=ours["client_id"], idp_initiated_redirect_uri=REDIRECT))
    assert ok.status_code == 200, ok.get_json()
    created = admin.call("POST", "/tenants/acme/connections", {
        "slug": "okta-2", "protocol": "saml", **_saml(idp_initiated_app="nope", idp_initiated_redirect_uri=REDIRECT)})
    assert created.status_code == 400 and created.get_json()["details"]["field"] == "saml.idp_initiated_app"

"""private_key_jwt connections: the key is checked when the connection is saved (a missing or unusable key is a
400 naming the field, not a lockout found at the first login), and the admin API shows the public JWK to
register at the OP, with the `kid` the client assertions carry. A stored connection whose settings no longer
validate refuses logins with a reason (redirect to the app, audit), not a bare error page."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from joserfc.jwk import ECKey

from broker.model import MappingConfig
from broker.ports import ConnectionDraft
from tests.conftest import AdminClient

OP = "https://op.example"


def _pem(private: bool = True) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _conn(slug: str, **oidc: Any) -> dict[str, Any]:
    return {"slug": slug, "protocol": "oidc", "oidc": {"issuer": OP, "client_id": "c1",
                                                       "token_endpoint_auth_method": "private_key_jwt", **oidc}}


def test_the_key_is_checked_when_saved_and_its_public_jwk_shown(admin: AdminClient) -> None:
    admin.tenant("acme")
    for slug, settings in (("none", {}), ("junk", {"private_key_jwt": "junk"}),
                           ("public", {"private_key_jwt": _pem(private=False)})):
        r = admin.call("POST", "/tenants/acme/connections", _conn(slug, **settings))
        assert r.status_code == 400, (slug, r.get_json())
        assert r.get_json()["details"]["field"] == "oidc.private_key_jwt", slug
    pem = _pem()
    r = admin.call("POST", "/tenants/acme/connections", _conn("pkj", private_key_jwt=pem))
    assert r.status_code == 201, r.get_json()
    jwk = admin.call("GET", "/tenants/acme/connections/pkj").get_json()["oidc"]["private_key_jwt_public_jwk"]
    key = ECKey.import_key(pem)
    assert jwk["kid"] == key.thumbprint() and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk and jwk["x"] == key.as_dict(private=False)["x"]
    # a GET-then-PATCH round trip of what the API showed is accepted (the public JWK is read-only)
    shown = admin.call("GET", "/tenants/acme/connections/pkj").get_json()["oidc"]
    again = admin.call("PATCH", "/tenants/acme/connections/pkj", {"oidc": shown})
    assert again.status_code == 200, again.get_json()


def test_stored_settings_that_no_longer_validate_refuse_logins_with_a_reason(admin: AdminClient,
                                                                             client: FlaskClient) -> None:
    admin.tenant("acme")
    app = admin.call("POST", "/tenants/acme/apps", {"name": "P", "redirect_uris": ["https://p.example/cb"]})
    assert admin.call("POST", "/tenants/acme/connections",
                      _conn("pkj", private_key_jwt=_pem())).status_code == 201
    svc = client.application.extensions["broker"]
    tenant = svc.config.tenant_by_slug("acme")
    conn = svc.config.connection(tenant.id, "pkj")
    broken = ConnectionDraft(slug="pkj", protocol="oidc", domains=(), restrict_to_domains=False,
                             mapping=MappingConfig(preset="generic-oidc"),
                             settings={"issuer": OP, "client_id": "c1",
                                       "token_endpoint_auth_method": "private_key_jwt"},
                             secrets={}, enabled=True, sp=None)  # written around the admin API's checks
    svc.config.replace_connection(conn.id, broken)
    r = client.get("/t/acme/authorize", query_string={
        "response_type": "code", "client_id": app.get_json()["client_id"], "redirect_uri": "https://p.example/cb",
        "scope": "openid", "state": "s1", "connection": "pkj"})
    assert r.status_code == 302 and "error=" in r.headers["Location"] and "state=s1" in r.headers["Location"]
    events = admin.call("GET", "/tenants/acme/audit?type=login&outcome=failure").get_json()["events"]
    assert events[0]["reason"] == "connection_not_ready" and events[0]["connection"] == "pkj"

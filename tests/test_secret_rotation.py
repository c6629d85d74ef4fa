"""Rotating BROKER_SECRET_KEY: old key in BROKER_SECRET_KEY_PREVIOUS keeps everything readable, `broker secrets
reseal` moves sealed values to the new key, and digests keep verifying while the old key is listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.app import create_app
from broker.cli import main
from broker.settings import load_settings

OLD = "old-secret-key-0123456789-abcdefghijklmnopqrst"
NEW = "new-secret-key-0123456789-abcdefghijklmnopqrst"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'rot.db'}"
    for k in ("REDIS_URL", "BROKER_BOOTSTRAP_ADMIN_KEY", "BROKER_ENV", "BROKER_SECRET_KEY_PREVIOUS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _app(monkeypatch: pytest.MonkeyPatch, key: str, previous: str = "") -> object:
    monkeypatch.setenv("BROKER_SECRET_KEY", key)
    if previous:
        monkeypatch.setenv("BROKER_SECRET_KEY_PREVIOUS", previous)
    else:
        monkeypatch.delenv("BROKER_SECRET_KEY_PREVIOUS", raising=False)
    return create_app(load_settings())


def test_rotation_with_previous_key_then_reseal(db: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BROKER_SECRET_KEY", OLD)
    assert main(["admin", "create-key"]) == 0
    admin_key = capsys.readouterr().out.strip()
    app = _app(monkeypatch, OLD)
    c = app.test_client()  # type: ignore[attr-defined]
    h = {"Authorization": f"Bearer {admin_key}"}
    assert c.post("/admin/v1/tenants", json={"slug": "acme", "name": "Acme"}, headers=h).status_code == 201
    assert c.post("/admin/v1/tenants/acme/connections", headers=h, json={
        "slug": "corp", "protocol": "oidc", "oidc": {"issuer": "https://op.example", "client_id": "c",
                                                     "client_secret": "upstream-secret"}}).status_code == 201
    assert c.post("/admin/v1/tenants/acme/connections", headers=h,
                  json={"slug": "okta", "protocol": "saml"}).status_code == 201
    app_secret = c.post("/admin/v1/tenants/acme/apps", headers=h, json={
        "name": "P", "redirect_uris": ["https://p.example/cb"]}).get_json()["client_secret"]
    jwks_before = c.get("/t/acme/jwks").get_json()

    # new key, old one listed as previous: everything still works
    app = _app(monkeypatch, NEW, OLD)
    svc = app.extensions["broker"]  # type: ignore[attr-defined]
    c = app.test_client()  # type: ignore[attr-defined]
    assert c.get("/admin/v1/tenants/acme/connections/corp", headers=h).status_code == 200
    tenant = svc.config.tenant_by_slug("acme")
    assert svc.config.connection(tenant.id, "corp").settings["client_secret"] == "upstream-secret"
    assert svc.config.signing_keys(tenant.id)[0].private_pem.startswith(b"-----BEGIN")
    stored = svc.config.apps(tenant.id)[0].client_secret_hash
    assert svc.admin.hasher.verify(app_secret, stored)
    assert c.get("/t/acme/jwks").get_json() == jwks_before

    # reseal: sealed values move to the new key
    monkeypatch.setenv("BROKER_SECRET_KEY", NEW)
    monkeypatch.setenv("BROKER_SECRET_KEY_PREVIOUS", OLD)
    assert main(["secrets", "reseal"]) == 0
    assert "resealed 3 value(s)" in capsys.readouterr().out  # upstream secret, SP key pairs, signing key
    assert main(["secrets", "reseal"]) == 0
    assert "resealed 0 value(s)" in capsys.readouterr().out

    # the old key gone: sealed values still open; digests made under it no longer verify
    app = _app(monkeypatch, NEW)
    svc = app.extensions["broker"]  # type: ignore[attr-defined]
    tenant = svc.config.tenant_by_slug("acme")
    assert svc.config.connection(tenant.id, "corp").settings["client_secret"] == "upstream-secret"
    assert not svc.admin.hasher.verify(app_secret, svc.config.apps(tenant.id)[0].client_secret_hash)
    r = app.test_client().get("/admin/v1/tenants", headers=h)  # type: ignore[attr-defined]
    assert r.status_code == 401


def test_without_the_previous_key_sealed_values_do_not_open(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(monkeypatch, OLD)
    svc = app.extensions["broker"]  # type: ignore[attr-defined]
    svc.admin.create_tenant(None, {"slug": "acme", "name": "Acme"})
    app = _app(monkeypatch, NEW)
    svc = app.extensions["broker"]  # type: ignore[attr-defined]
    from broker.errors import ConfigError

    with pytest.raises(ConfigError):
        svc.config.signing_keys(svc.config.tenant_by_slug("acme").id)


def test_short_previous_key_is_refused() -> None:
    from broker.errors import ConfigError

    with pytest.raises(ConfigError, match="BROKER_SECRET_KEY_PREVIOUS"):
        load_settings({"BROKER_SECRET_KEY_PREVIOUS": "short"})

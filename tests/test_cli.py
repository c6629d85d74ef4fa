"""The `broker` command line: db upgrade, admin keys, key rotation, and serve's refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.logs import JsonFormatter
from tests.conftest import SECRET_KEY


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for k in ("REDIS_URL", "BROKER_BOOTSTRAP_ADMIN_KEY", "BROKER_ENV"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BROKER_SECRET_KEY", SECRET_KEY)
    return url


def test_db_upgrade_is_idempotent(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_create_key_prints_a_working_global_key(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "create-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("bk_") and len(key) > 40
    from broker.app import create_app
    from broker.settings import load_settings

    client = create_app(load_settings()).test_client()
    r = client.post("/admin/v1/tenants", json={"slug": "acme", "name": "Acme"},
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201
    assert main(["admin", "create-key", "--tenant", "acme"]) == 0
    scoped = capsys.readouterr().out.strip()
    r = client.post("/admin/v1/tenants", json={"slug": "x", "name": "X"}, headers={"Authorization": f"Bearer {scoped}"})
    assert r.status_code == 403


def test_create_key_with_an_expiry(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "create-key", "--label", "ci", "--expires-in-days", "30"]) == 0
    capsys.readouterr()
    assert main(["admin", "list-keys"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    expires = datetime.fromisoformat(line.split("expires ")[1].split()[0])
    assert abs(expires.timestamp() - time.time() - 30 * 86400) < 60 and line.endswith("  ci")
    for bad in ("0", "1826", "3.5", "thirty"):
        with pytest.raises(SystemExit) as exit_:
            main(["admin", "create-key", "--expires-in-days", bad])
        assert exit_.value.code == 2 and "--expires-in-days" in capsys.readouterr().err
    assert main(["admin", "list-keys"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1, "a refused option makes no key"


def test_audit_prune_keeps_the_given_number_of_days(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    import uuid
    from datetime import UTC, timedelta

    from broker.model import AuditEvent
    from broker.store.config_repo import SqlConfigStore
    from broker.store.database import make_engine, upgrade
    from broker.store.sealing import Sealer

    engine = make_engine(env)
    upgrade(engine)
    store = SqlConfigStore(engine, Sealer(SECRET_KEY))
    now = datetime.now(UTC)
    for days in (400, 91, 89, 0):
        store.record(AuditEvent(id=str(uuid.uuid4()), time=now - timedelta(days=days), type="admin", tenant=None,
                                connection=None, app=None, outcome="success", reason=None, details={"age": days}))
    assert main(["audit", "prune", "--older-than", "90"]) == 0
    assert capsys.readouterr().out.startswith("deleted 2 audit events older than ")
    left = store.audit_page(None, type=None, outcome=None, limit=10, cursor=None).events
    assert sorted(e.details["age"] for e in left) == [0, 89]
    for bad in ([], ["--older-than", "0"], ["--older-than", "ninety"]):
        with pytest.raises(SystemExit) as exit_:
            main(["audit", "prune", *bad])
        assert exit_.value.code == 2
    engine.dispose()


def test_create_key_for_unknown_tenant_fails_cleanly(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "create-key", "--tenant", "nope"]) == 2
    assert "No tenant" in capsys.readouterr().err


def test_list_keys_and_revoke_key(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "create-key", "--label", "ops"]) == 0
    ops_key = capsys.readouterr().out.strip()
    assert main(["admin", "create-key", "--label", "ci"]) == 0
    capsys.readouterr()
    assert main(["admin", "list-keys"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("(global)" in ln for ln in lines)
    assert ops_key not in "\n".join(lines), "the key itself is never printed again"
    ops_id = next(ln.split()[0] for ln in lines if ln.endswith("  ops"))
    assert main(["admin", "revoke-key", ops_id]) == 0
    assert f"revoked {ops_id}" in capsys.readouterr().out
    assert main(["admin", "list-keys"]) == 0
    left = capsys.readouterr().out.strip().splitlines()
    assert len(left) == 1 and left[0].endswith("  ci")
    from broker.app import create_app
    from broker.settings import load_settings

    client = create_app(load_settings()).test_client()
    assert client.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {ops_key}"}).status_code == 401
    # the last global key stays; an unknown id is a clean error
    assert main(["admin", "revoke-key", left[0].split()[0]]) == 2
    assert "last global admin key" in capsys.readouterr().err
    assert main(["admin", "revoke-key", "no-such-key"]) == 2


def test_keys_rotate(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.app import create_app
    from broker.settings import load_settings

    main(["admin", "create-key"])
    key = capsys.readouterr().out.strip()
    app = create_app(load_settings())
    app.test_client().post("/admin/v1/tenants", json={"slug": "acme", "name": "Acme"},
                           headers={"Authorization": f"Bearer {key}"})
    assert main(["keys", "rotate", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert '"active_kid"' in out
    svc = app.extensions["broker"]
    keys = svc.config.signing_keys(svc.config.tenant_by_slug("acme").id)
    assert len(keys) == 2 and keys[0].active and not keys[1].active
    assert main(["keys", "rotate", "--tenant", "ghost"]) == 2
    capsys.readouterr()

    assert main(["keys", "rotate", "--tenant", "acme", "--activate-after", "3600"]) == 0
    staged = json.loads(capsys.readouterr().out)
    assert staged["active_kid"] == keys[0].kid and staged["next_kid"] not in {k.kid for k in keys}
    assert staged["activates_at"]
    assert main(["keys", "rotate", "--tenant", "acme", "--activate-after", "-5"]) == 2
    assert "activate_after" in capsys.readouterr().err
    assert len(svc.config.signing_keys(svc.config.tenant_by_slug("acme").id)) == 3, "the refused one wrote nothing"

    assert main(["keys", "revoke", "--tenant", "acme", "--kid", keys[1].kid]) == 0  # the first, retired
    out = json.loads(capsys.readouterr().out)
    assert out["revoked_kid"] == keys[1].kid
    assert {k["kid"]: k["status"] for k in out["keys"]}[keys[1].kid] == "revoked"
    assert main(["keys", "revoke", "--tenant", "acme", "--kid", keys[0].kid]) == 2  # it signs: rotate first
    assert "rotate first" in capsys.readouterr().err


def test_serve_refuses_workers_without_redis(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "2", "--port", "1"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_serve_refuses_bad_settings(env: str, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BROKER_ENV", "production")
    monkeypatch.setenv("BROKER_PUBLIC_URL", "http://sso.example.com")
    assert main(["serve", "--port", "1"]) == 2
    assert "https" in capsys.readouterr().err


def test_python_dash_m_broker_works() -> None:
    out = subprocess.run([sys.executable, "-m", "broker", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "serve" in out.stdout


def test_metadata_refresh_command(env: str, capsys: pytest.CaptureFixture[str],
                                  caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    from broker.app import create_app
    from broker.settings import load_settings
    from tests.samlxml.idp_fixtures import make_idp
    from tests.support.broker_server import free_port
    from tests.support.saml_idp import SamlIdp

    state = {"ok": True, "hits": 0}
    xml = SamlIdp(idp=make_idp("https://idp.refresh.test/md"), url="https://idp.refresh.test").metadata_xml()

    def wsgi(environ: object, start: object) -> object:
        state["hits"] += 1
        resp = Response(xml, mimetype="application/xml") if state["ok"] else Response("down", status=500)
        return resp(environ, start)  # type: ignore[arg-type]

    port = free_port()
    server = make_server("127.0.0.1", port, wsgi, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        main(["admin", "create-key"])
        key = capsys.readouterr().out.strip()
        client = create_app(load_settings()).test_client()
        h = {"Authorization": f"Bearer {key}"}
        client.post("/admin/v1/tenants", json={"slug": "acme", "name": "Acme"}, headers=h)
        r = client.post("/admin/v1/tenants/acme/connections", headers=h, json={
            "slug": "okta", "protocol": "saml", "saml": {"metadata_url": f"http://127.0.0.1:{port}/md"}})
        assert r.status_code == 201, r.get_json()
        hits = state["hits"]
        series = ('{connection="okta",tenant="acme"}', '{tenant="acme",connection="okta"}')

        def scraped(name: str) -> float:
            text = client.get("/metrics").get_data(as_text=True)
            line = next(x for x in text.splitlines() if x.startswith(name) and x.split(" ")[0].endswith(series))
            return float(line.rsplit(" ", 1)[1])

        assert scraped("broker_idp_metadata_refresh_failing") == 0
        assert 0 <= scraped("broker_idp_metadata_age_seconds") < 60
        assert main(["metadata", "refresh"]) == 0  # not due yet: no fetch
        assert state["hits"] == hits and "ok     acme/okta" in capsys.readouterr().out
        state["ok"] = False
        lines: list[str] = []

        class Collect(logging.Handler):  # formatted when emitted: the context (tenant, connection) is then set
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(JsonFormatter().format(record))

        collect = Collect(logging.WARNING)
        logging.getLogger().addHandler(collect)
        try:
            assert main(["metadata", "refresh", "--force"]) == 1  # fails, keeps the last good copy
        finally:
            logging.getLogger().removeHandler(collect)
        out = capsys.readouterr().out
        assert "FAILED acme/okta" in out and state["hits"] == hits + 1
        kept = [json.loads(x) for x in lines if '"metadata_refresh_failed_kept_last_good"' in x]
        assert kept and all((r["tenant"], r["connection"]) == ("acme", "okta") for r in kept), lines
        # what another process (the CronJob) found shows in the server's own scrape
        assert scraped("broker_idp_metadata_refresh_failing") == 1
        assert scraped("broker_idp_metadata_age_seconds") >= 0  # the last good copy is still in use
        got = client.get("/admin/v1/tenants/acme/connections/okta", headers=h).get_json()
        assert got["metadata"]["entity_id"] == "https://idp.refresh.test/md"
        assert got["metadata"]["refresh"]["last_error"]
        # a crash on one connection's refresh (a bug) is reported, and the next connection is still refreshed
        state["ok"] = True
        r = client.post("/admin/v1/tenants/acme/connections", headers=h, json={
            "slug": "zeta", "protocol": "saml", "saml": {"metadata_url": f"http://127.0.0.1:{port}/md"}})
        assert r.status_code == 201, r.get_json()
        from broker.upstream.metadata_refresh import MetadataProvider

        original = MetadataProvider.refresh

        def crash_on_okta(self: MetadataProvider, connection: Any, *args: Any) -> Any:
            if connection.slug == "okta":
                raise OverflowError("a bug")
            return original(self, connection, *args)

        hits = state["hits"]
        with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.ERROR, logger="broker.cli"):
            mp.setattr(MetadataProvider, "refresh", crash_on_okta)
            assert main(["metadata", "refresh", "--force"]) == 1
        out = capsys.readouterr()
        assert "FAILED acme/okta: internal error" in out.out and "ok     acme/zeta" in out.out
        assert state["hits"] == hits + 1
        assert [r.getMessage() for r in caplog.records if r.name == "broker.cli"] == ["metadata_refresh_crashed"]
    finally:
        server.shutdown()


def test_serve_refuses_an_unwritable_metrics_directory(env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(blocker / "metrics"))
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "PROMETHEUS_MULTIPROC_DIR" in err and "not a writable directory" in err and "Traceback" not in err


def _dead_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")


def _applied_acme(tmp_path: Path) -> Path:
    """A config directory naming tenant acme, applied."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "acme.yaml").write_text("tenants:\n  - slug: acme\n    name: Acme Corp\n")
    assert main(["config", "apply", str(config)]) == 0
    return config


def test_config_writers_refuse_when_the_state_store_is_down_and_write_nothing(
        env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Running servers learn of configuration changes through the state store: a command that could not
    announce its change must not make it (README: any error, nothing written, exit 2)."""
    config = _applied_acme(tmp_path)
    (config / "acme.yaml").write_text("tenants:\n  - slug: acme\n    name: Acme Renamed\n")
    capsys.readouterr()
    _dead_redis(monkeypatch)
    assert main(["config", "apply", str(config)]) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert main(["keys", "rotate", "--tenant", "acme"]) == 2
    assert main(["config", "apply", "--dry-run", str(config)]) == 0  # a dry run writes nothing: allowed
    assert "~ tenant acme: name" in capsys.readouterr().out
    monkeypatch.delenv("REDIS_URL")
    from broker.app import build_services
    from broker.settings import load_settings

    svc = build_services(load_settings())
    try:
        tenant = svc.config.tenant_by_slug("acme")
        assert tenant is not None and tenant.name == "Acme Corp"
        assert len(svc.config.signing_keys(tenant.id)) == 1
    finally:
        svc.extras["engine"].dispose()


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/x/broker.db",
                                 "postgresql://postgres@127.0.0.1:1/broker"])
@pytest.mark.parametrize("command", [["db", "upgrade"], ["admin", "create-key"]])
def test_an_unusable_database_is_a_sentence_not_a_traceback(
        env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str,
        command: list[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("broker: The database (DATABASE_URL) cannot be used: ") and "Traceback" not in err


@pytest.mark.parametrize("threads", ["0", "-1", "x", "1000"])
def test_serve_refuses_a_bad_thread_count(env: str, capsys: pytest.CaptureFixture[str], threads: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--threads", threads, "--port", "1"])
    assert exited.value.code == 2
    assert "--threads: must be a whole number from 1 to 256" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-5", "x", "3601", "1.5"])
def test_serve_refuses_a_bad_keepalive(env: str, capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--keepalive", seconds, "--port", "1"])
    assert exited.value.code == 2
    assert "--keepalive: must be a whole number of seconds from 1 to 3600" in capsys.readouterr().err


def test_config_apply_says_so_when_its_change_was_written_but_not_announced(
        env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The state store answered the check, then failed to carry the announcement: the write has committed,
    so the command must not say it failed as if nothing happened."""
    from broker.errors import StateStoreError
    from broker.store.generation import DatabaseGeneration

    config = tmp_path / "config"
    config.mkdir()
    (config / "acme.yaml").write_text("tenants:\n  - slug: acme\n    name: Acme Corp\n")

    def unannounced(self: object, scopes: object = None) -> None:
        raise StateStoreError("The state store is unavailable.")

    announce = DatabaseGeneration.bump
    monkeypatch.setattr(DatabaseGeneration, "bump", unannounced)
    assert main(["config", "apply", str(config)]) == 2
    err = capsys.readouterr().err
    assert "The change was written, but running servers could not be told of it" in err
    monkeypatch.setattr(DatabaseGeneration, "bump", announce)
    assert main(["config", "apply", "--dry-run", str(config)]) == 0
    assert "no changes" in capsys.readouterr().out


def test_a_key_rotation_that_could_not_be_announced_says_so(
        env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The rotation committed (its answer is printed), but no later request of the command's process will
    retry the announcement: the command must fail and say that the servers learn of it by their backstop."""
    from broker.errors import StateStoreError
    from broker.store.generation import DatabaseGeneration

    _applied_acme(tmp_path)
    capsys.readouterr()

    def unannounced(self: object, scopes: object = None) -> None:
        raise StateStoreError("The state store is unavailable.")

    monkeypatch.setattr(DatabaseGeneration, "bump", unannounced)
    assert main(["keys", "rotate", "--tenant", "acme"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["active_kid"]
    assert "The change was written, but running servers could not be told of it" in err


def test_commands_run_with_another_secret_key_write_nothing(
        env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A command run with a BROKER_SECRET_KEY other than the servers' would write values no server can read:
    a signing key that retires the good ones (the tenant's tokens can no longer be signed or checked), an admin
    key whose digest never matches, a tenant whose secrets are sealed under the wrong key. Refused up front."""
    from broker.app import build_services
    from broker.settings import load_settings

    config = _applied_acme(tmp_path)
    (config / "globex.yaml").write_text("tenants:\n  - slug: globex\n    name: Globex\n")
    capsys.readouterr()

    monkeypatch.setenv("BROKER_SECRET_KEY", "another-secret-key-" + "x" * 40)
    for argv in (["keys", "rotate", "--tenant", "acme"], ["admin", "create-key"], ["config", "apply", str(config)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "BROKER_SECRET_KEY" in err and "Nothing was written" in err and "Traceback" not in err

    monkeypatch.setenv("BROKER_SECRET_KEY", SECRET_KEY)
    svc = build_services(load_settings())
    try:
        acme = svc.config.tenant_by_slug("acme")
        assert acme is not None and acme.version == 1
        keys = svc.config.signing_keys(acme.id)  # still readable, and still the one
        assert len(keys) == 1 and keys[0].active
        assert svc.config.tenant_by_slug("globex") is None
        assert svc.admin.list_admin_keys(None, None)["admin_keys"] == []
    finally:
        svc.extras["engine"].dispose()


def test_rotation_reads_the_kept_keys_before_adding_one(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API's rotation (any caller of AdminService.rotate_keys) checks the same way."""
    from broker.app import build_services
    from broker.errors import ConfigError
    from broker.settings import load_settings

    svc = build_services(load_settings())
    try:
        svc.admin.create_tenant(None, {"slug": "acme", "name": "Acme"})
    finally:
        svc.extras["engine"].dispose()
    monkeypatch.setenv("BROKER_SECRET_KEY", "another-secret-key-" + "x" * 40)
    other = build_services(load_settings())
    try:
        tenant = other.config.tenant_by_slug("acme")
        with pytest.raises(ConfigError):
            other.admin.rotate_keys(None, tenant)
    finally:
        other.extras["engine"].dispose()
    monkeypatch.setenv("BROKER_SECRET_KEY", SECRET_KEY)
    svc = build_services(load_settings())
    try:
        keys = svc.config.signing_keys(svc.config.tenant_by_slug("acme").id)
        assert len(keys) == 1 and keys[0].active
    finally:
        svc.extras["engine"].dispose()


@pytest.mark.parametrize("argv", [["serve", "--port", "99999"], ["serve", "--port", "-1"], ["demo", "--port", "70000"],
                                  ["serve", "--workers", "1000"]])
def test_serve_refuses_out_of_range_numbers_with_a_sentence(
        env: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main(argv)
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert ("TCP port" in err or "--workers must be from 1 to 64" in err) and "Traceback" not in err


def test_a_production_write_without_redis_says_servers_learn_of_it_late(
        env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Production servers run with Redis and learn of changes through it at once; a command run without
    REDIS_URL (say, pruning a compromised IdP) reaches them only through their cache backstop."""
    config = _applied_acme(tmp_path)
    monkeypatch.setenv("BROKER_ENV", "production")
    monkeypatch.setenv("BROKER_PUBLIC_URL", "https://sso.example.com")
    (config / "acme.yaml").write_text("tenants:\n  - slug: acme\n    name: Acme Renamed\n")
    with caplog.at_level(logging.WARNING):
        assert main(["config", "apply", str(config)]) == 0
    assert [r for r in caplog.records if r.getMessage() == "change_not_announced"]

"""SPEC "Command line" and "Settings (environment)", through the real `broker` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.broker_server import BOOTSTRAP_KEY, SECRET_KEY, free_port, running_broker

pytestmark = pytest.mark.slow


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "DATABASE_URL", "REDIS_URL"))}
    base.update({"DATABASE_URL": f"sqlite:///{tmp / 'cli.db'}", "BROKER_SECRET_KEY": SECRET_KEY,
                 "BROKER_PUBLIC_URL": "http://127.0.0.1:8000", "BROKER_ENV": "dev"})
    base.update(extra)
    return base


def _broker(tmp: Path, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], env=_env(tmp, **env), capture_output=True,  # noqa: S603
                          text=True, timeout=timeout, check=False)


def test_help_lists_subcommands(tmp_path: Path) -> None:
    out = _broker(tmp_path, "--help")
    assert out.returncode == 0
    for cmd in ("serve", "demo", "db", "config", "admin", "keys"):
        assert cmd in out.stdout, cmd
    assert "--workers" in _broker(tmp_path, "serve", "--help").stdout
    cfg = _broker(tmp_path, "config", "apply", "--help").stdout
    assert "--dry-run" in cfg and "--prune" in cfg
    assert "--tenant" in _broker(tmp_path, "admin", "create-key", "--help").stdout
    assert "--tenant" in _broker(tmp_path, "keys", "rotate", "--help").stdout
    assert _broker(tmp_path, "db", "upgrade", "--help").returncode == 0


def test_db_upgrade_and_create_key(tmp_path: Path) -> None:
    assert _broker(tmp_path, "db", "upgrade").returncode == 0
    out = _broker(tmp_path, "admin", "create-key")
    assert out.returncode == 0 and out.stdout.strip()


def test_production_refuses_http_public_url(tmp_path: Path) -> None:
    out = _broker(tmp_path, "serve", "--port", str(free_port()), BROKER_ENV="production",
                  BROKER_PUBLIC_URL="http://broker.example.test")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


def test_several_workers_without_redis_refused(tmp_path: Path) -> None:
    out = _broker(tmp_path, "serve", "--port", str(free_port()), "--workers", "2")
    assert out.returncode != 0
    assert "redis" in (out.stdout + out.stderr).lower()


def test_short_secret_key_refused_in_production(tmp_path: Path) -> None:
    out = _broker(tmp_path, "serve", "--port", str(free_port()), BROKER_ENV="production",
                  BROKER_PUBLIC_URL="https://broker.example.test", BROKER_SECRET_KEY="too-short")
    assert out.returncode != 0


def test_bootstrap_admin_key_works_and_others_do_not(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        ok = requests.get(f"{broker.url}/admin/v1/tenants", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
                          timeout=10)
        assert ok.status_code == 200
        bad = requests.get(f"{broker.url}/admin/v1/tenants",
                           headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}x"}, timeout=10)
        assert bad.status_code == 401
        # the bootstrap key is global: it may create tenants
        assert broker.api("POST", "/tenants", {"slug": "boot", "name": "Boot"}).status_code == 201


def test_cli_writes_reach_a_running_server_without_redis_at_once(tmp_path: Path) -> None:
    """Without Redis the generation token lives in the database: `config apply` and `keys rotate`, run in
    their own processes beside a running server, are seen by its next request (not after the 10-minute
    cache backstop), and an admin PATCH made afterwards merges onto the applied change, not a stale copy."""
    cfg = tmp_path / "config"
    cfg.mkdir()
    okta = cfg / "okta-acme.xml"  # inside the config directory, where metadata_file may point
    shutil.copy(Path(__file__).parents[2] / "metadata" / "okta-acme.xml", okta)

    def write(name_id_format: str) -> None:
        (cfg / "acme.yaml").write_text(
            "tenants:\n"
            "  - slug: acme\n"
            "    name: Acme\n"
            "    connections:\n"
            "      - slug: okta\n"
            "        protocol: saml\n"
            "        domains: [acme.test]\n"
            "        mapping: {preset: okta}\n"
            "        saml:\n"
            f"          metadata_file: {okta}\n"
            f"          name_id_format: {name_id_format}\n"
        )

    email = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    persistent = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    with running_broker(tmp_path) as server:
        db = {"DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}", "BROKER_PUBLIC_URL": server.url}
        write(email)
        assert _broker(tmp_path, "config", "apply", str(cfg), **db).returncode == 0
        sp_metadata = f"{server.url}/t/acme/connections/okta/saml/metadata"
        assert email in requests.get(sp_metadata, timeout=10).text  # now cached by the server
        jwks = requests.get(f"{server.url}/t/acme/jwks", timeout=10).json()["keys"]

        write(persistent)
        out = _broker(tmp_path, "config", "apply", str(cfg), **db)
        assert out.returncode == 0, out.stdout + out.stderr
        assert persistent in requests.get(sp_metadata, timeout=10).text, "the applied change is served at once"
        r = server.api("PATCH", "/tenants/acme/connections/okta", {"domains": ["acme.test", "acme.example"]})
        assert r.status_code == 200, r.text
        assert r.json()["saml"]["name_id_format"] == persistent, "the PATCH kept the applied change"

        assert _broker(tmp_path, "keys", "rotate", "--tenant", "acme", **db).returncode == 0
        rotated = requests.get(f"{server.url}/t/acme/jwks", timeout=10).json()["keys"]
        assert len(rotated) == len(jwks) + 1, "the rotated key is published at once"


def test_every_stderr_line_of_serve_is_json_even_gunicorns_own(tmp_path: Path) -> None:
    """A port already taken is reported by gunicorn itself: that line is JSON too (one JSON object per line)."""
    import json
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _broker(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(port), timeout=60)
    assert out.returncode != 0
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    gunicorn = [x for x in lines if x["logger"] == "gunicorn.error"]
    assert gunicorn and any("Address already in use" in x["event"] for x in gunicorn), out.stderr[-2000:]

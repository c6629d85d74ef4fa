"""SPEC "Command line" and "Settings (environment)", through the real `broker` CLI."""

from __future__ import annotations

import os
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

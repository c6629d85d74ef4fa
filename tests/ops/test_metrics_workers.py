"""/metrics of a real `broker serve --workers 2`: whichever worker answers a scrape, it reports every worker's
counters (prometheus_client multiprocess mode through a shared directory), a restarted worker's counts are
kept, and the certificate gauge includes every connection, whether a worker has opened it or not."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ops.conftest import full_login, redeem, setup_saml_tenant
from tests.support.broker_server import running_broker
from tests.support.saml_idp import SamlIdp, running_saml_idp

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def _scrape(url: str) -> str:
    with requests.Session() as fresh:  # a new connection each time: any worker may answer
        r = fresh.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def _workers(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False).stdout
    return sorted(int(p) for p in out.split())


def test_every_scrape_counts_every_workers_requests(tmp_path: Path, ops_pg_url: str, redis_url: str,
                                                     idp: SamlIdp) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"left over by an earlier run")
    env = {"REDIS_URL": redis_url, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with running_broker(tmp_path, workers=2, database_url=ops_pg_url, env=env) as server:
        assert not (shared / "counter_999999.db").exists(), "an earlier run's files are cleared at start"
        tenant = setup_saml_tenant(server, idp)
        ours = {"tenant": tenant.slug, "connection": "okta"}
        for _ in range(4):  # before any login: no worker has opened the connection yet
            text = _scrape(server.url)
            for family in ("broker_logins_started", "broker_logins_failed", "broker_tokens_issued",
                           "broker_metadata_refresh"):  # listed before any worker counted one
                assert f"# TYPE {family}_total counter\n" in text, family
            assert "# TYPE broker_step_seconds histogram\n" in text
            days = _value(text, "broker_idp_certificate_days_left", **ours, fingerprint=_fingerprint(text, ours))
            assert days is not None and days > 300, days
        for i in range(4):
            r = redeem(server.url, tenant, full_login(requests.Session(), server.url, tenant, f"m{i}"))
            assert r.status_code == 200, r.text
        for _ in range(20):
            with requests.Session() as fresh:
                assert fresh.get(f"{server.url}/healthz", timeout=10).status_code == 200
        writers = {p.name.split("_")[-1] for p in shared.glob("counter_*.db")}
        assert len(writers) == 2, f"both workers served requests: {sorted(writers)}"

        expected = {
            ("broker_logins_started_total", tuple(ours.items())): 4.0,
            ("broker_logins_succeeded_total", tuple(ours.items())): 4.0,
            ("broker_tokens_issued_total", (("tenant", tenant.slug), ("grant_type", "authorization_code"))): 4.0,
            ("broker_step_seconds_count", (("step", "acs"),)): 4.0,
            ("broker_http_requests_total", (("endpoint", "health.healthz"), ("status", "200"))): 20.0,
        }
        for _ in range(8):
            text = _scrape(server.url)
            for (name, labels), want in expected.items():
                assert _value(text, name, **dict(labels)) == want, (name, labels, want)
            days = _value(text, "broker_idp_certificate_days_left", **ours, fingerprint=_fingerprint(text, ours))
            assert days is not None and days > 300, days

        # a worker that dies is replaced; what it counted stays counted
        victim = _workers(server.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = _workers(server.process.pid)
            if victim not in alive and len(alive) == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not replace the killed worker")
        text = _scrape(server.url)
        for (name, labels), want in expected.items():
            assert _value(text, name, **dict(labels)) == want, ("after a worker restart", name, labels, want)


def _fingerprint(text: str, ours: dict[str, str]) -> str:
    for line in text.splitlines():
        if line.startswith("broker_idp_certificate_days_left{") and all(f'{k}="{v}"' in line for k, v in ours.items()):
            m = re.search(r'fingerprint="([^"]+)"', line)
            assert m
            return m.group(1)
    raise AssertionError("no broker_idp_certificate_days_left sample for the connection")

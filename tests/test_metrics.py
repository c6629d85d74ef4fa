"""broker.metrics: the certificate-expiry gauge shared between worker processes through files, and the
rule that multiprocess mode is used only when prometheus_client really runs in it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from broker.metrics import CertificateExpiry, Metrics, certs_file, multiprocess_dir

DAY = 86400.0


def _days(collector: CertificateExpiry) -> dict[tuple[str, str, str], float]:
    family = next(iter(collector.collect()))
    return {(s.labels["tenant"], s.labels["connection"], s.labels["fingerprint"]): s.value for s in family.samples}


def test_each_connection_shows_its_newest_sighting_from_any_worker(tmp_path: Path) -> None:
    now = time.time()
    other_worker = tmp_path / "broker_certs_4242.jsonl"
    other_worker.write_text("\n".join([
        json.dumps({"at": now - 100, "tenant": "acme", "connection": "okta", "certs": {"old" * 8: now + 10 * DAY}}),
        '{"at": 1, "tenant": "acme", "conn',  # cut short by a crash: skipped
        json.dumps({"at": now - 50, "tenant": "globex", "connection": "entra", "certs": {"g" * 24: now + 90 * DAY}}),
    ]) + "\n")
    mine = CertificateExpiry(str(tmp_path))
    mine.observe("acme", "okta", {"new" * 8: now + 400 * DAY})  # newer: the rotated certificate
    assert Path(certs_file(str(tmp_path), os.getpid())).exists()
    days = _days(mine)
    assert set(days) == {("acme", "okta", ("new" * 8)[:16]), ("globex", "entra", "g" * 16)}
    assert days[("acme", "okta", ("new" * 8)[:16])] == pytest.approx(400, abs=0.02)
    # another worker sees the same, from the files alone
    assert _days(CertificateExpiry(str(tmp_path))) == days


def test_a_sighting_appended_later_is_picked_up(tmp_path: Path) -> None:
    now = time.time()
    reader = CertificateExpiry(str(tmp_path))
    assert _days(reader) == {}
    CertificateExpiry(str(tmp_path)).observe("acme", "okta", {"f" * 64: now + 30 * DAY})
    assert list(_days(reader)) == [("acme", "okta", "f" * 16)]


def test_without_a_shared_directory_the_gauge_is_this_process_only(tmp_path: Path) -> None:
    now = time.time()
    solo = CertificateExpiry()
    solo.observe("acme", "okta", {"a" * 64: now + 5 * DAY})
    assert list(_days(solo)) == [("acme", "okta", "a" * 16)]
    assert list(tmp_path.iterdir()) == []


def test_multiprocess_mode_only_when_prometheus_client_runs_in_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: setting it now must not
    # make /metrics read files that no counter here writes.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert multiprocess_dir() is None
    metrics = Metrics()
    metrics.logins_started.labels(tenant="acme", connection="okta").inc()
    assert b'broker_logins_started_total{connection="okta",tenant="acme"} 1.0' in metrics.render()

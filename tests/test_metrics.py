"""broker.metrics: the certificate-expiry gauge computed at scrape time from the configuration store (and
still answering when the store cannot be read), and the rule that multiprocess mode is used only when
prometheus_client really runs in it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from broker.metrics import CertificateExpiry, Metrics, _WithDeclared, multiprocess_dir

DAY = 86400.0


def _days(collector: CertificateExpiry) -> dict[tuple[str, str, str], float]:
    family = next(iter(collector.collect()))
    return {(s.labels["tenant"], s.labels["connection"], s.labels["fingerprint"]): s.value for s in family.samples}


def test_every_connection_the_store_knows_is_in_the_gauge_counting_down() -> None:
    now = time.time()
    rows: list[tuple[str, str, Mapping[str, float]]] = [
        ("acme", "okta", {"AB:" * 31 + "CD": now + 400 * DAY, "EF:" * 31 + "01": now - 2 * DAY}),
        ("globex", "entra", {"12:" * 31 + "34": now + 30 * DAY}),
    ]
    days = _days(CertificateExpiry(lambda: rows))
    assert days == {
        ("acme", "okta", ("AB:" * 8)[:-1]): pytest.approx(400, abs=0.02),  # first 8 bytes, whole
        ("acme", "okta", ("EF:" * 8)[:-1]): pytest.approx(-2, abs=0.02),  # expired: negative, still shown
        ("globex", "entra", ("12:" * 8)[:-1]): pytest.approx(30, abs=0.02),
    }


def test_a_scrape_answers_with_the_last_dates_read_when_the_store_is_down() -> None:
    now = time.time()
    up = [True]

    def source() -> list[tuple[str, str, Mapping[str, float]]]:
        if not up[0]:
            raise OSError("database unreachable")
        return [("acme", "okta", {"f" * 64: now + 5 * DAY})]

    collector = CertificateExpiry(source)
    assert list(_days(collector)) == [("acme", "okta", "f" * 16)]
    up[0] = False
    assert list(_days(collector)) == [("acme", "okta", "f" * 16)]
    assert _days(CertificateExpiry()) == {}, "without a store: an empty gauge, not an error"


def test_multiprocess_mode_only_when_prometheus_client_runs_in_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: setting it now must not
    # make /metrics read files that no counter here writes.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert multiprocess_dir() is None
    metrics = Metrics()
    metrics.logins_started.labels(tenant="acme", connection="okta").inc()
    assert b'broker_logins_started_total{connection="okta",tenant="acme"} 1.0' in metrics.render()


DECLARED = ("broker_logins_started", "broker_logins_succeeded", "broker_logins_failed", "broker_tokens_issued",
            "broker_http_requests", "broker_metadata_refresh")


def test_multiprocess_scrapes_list_every_family_before_its_first_sample(tmp_path: Path) -> None:
    # no worker has written anything yet: the families are still listed (HELP and TYPE, no samples), as a
    # single process's registry lists them
    metrics = Metrics()
    metrics.multiprocess_dir = str(tmp_path)
    text = metrics.render().decode()
    for name in DECLARED:
        assert text.count(f"# TYPE {name}_total counter\n") == 1, name
    assert "# TYPE broker_step_seconds histogram\n" in text
    assert "# TYPE broker_idp_certificate_days_left gauge\n" in text
    assert "_total{" not in text and "_bucket{" not in text, "no samples invented"


def test_a_family_with_samples_is_listed_once(tmp_path: Path) -> None:
    class Files:
        def collect(self) -> list[Metric]:
            family = CounterMetricFamily("broker_logins_failed", "Upstream logins refused, by reason code",
                                         labels=["tenant", "connection", "reason"])
            family.add_metric(["acme", "okta", "saml_replay"], 2.0)
            return [family]

    registry = CollectorRegistry()
    registry.register(_WithDeclared(Files(), Metrics()._declared()))
    text = generate_latest(registry).decode()
    assert text.count("# TYPE broker_logins_failed_total counter\n") == 1
    assert 'broker_logins_failed_total{connection="okta",reason="saml_replay",tenant="acme"} 2.0' in text
    assert text.count("# TYPE broker_logins_started_total counter\n") == 1


def test_metadata_freshness_names_every_tried_url_and_survives_a_store_outage() -> None:
    from broker.metrics import MetadataFreshness

    now = time.time()
    up = [True]

    def source() -> list[tuple[str, str, float | None, bool]]:
        if not up[0]:
            raise OSError("database unreachable")
        return [("acme", "okta", now - 3600, False), ("globex", "adfs", now - 9 * DAY, True),
                ("initech", "ping", None, True)]  # never fetched: no age, failing

    collector = MetadataFreshness(source)

    def read() -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
        age, failing = list(collector.collect())
        return ({(s.labels["tenant"], s.labels["connection"]): s.value for s in age.samples},
                {(s.labels["tenant"], s.labels["connection"]): s.value for s in failing.samples})

    age, failing = read()
    assert age == {("acme", "okta"): pytest.approx(3600, abs=5), ("globex", "adfs"): pytest.approx(9 * DAY, abs=5)}
    assert failing == {("acme", "okta"): 0, ("globex", "adfs"): 1, ("initech", "ping"): 1}
    up[0] = False
    assert read()[1] == failing, "the last rows read while the store is down"

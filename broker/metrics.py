"""Prometheus metrics, in a registry of our own (one per app), exposed at /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.logins_started = Counter(
            "broker_logins_started", "Upstream logins started", ["tenant", "connection"], registry=self.registry
        )
        self.logins_succeeded = Counter(
            "broker_logins_succeeded", "Upstream logins that succeeded", ["tenant", "connection"],
            registry=self.registry,
        )
        self.logins_failed = Counter(
            "broker_logins_failed", "Upstream logins refused, by reason code", ["tenant", "connection", "reason"],
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "broker_tokens_issued", "Tokens issued at the token endpoint", ["tenant", "grant_type"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "broker_step_seconds", "Latency per login step", ["step"], buckets=STEP_BUCKETS, registry=self.registry
        )
        self.http_requests = Counter(
            "broker_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=self.registry,
        )
        self.metadata_refresh = Counter(
            "broker_metadata_refresh", "IdP metadata refresh outcomes", ["tenant", "connection", "outcome"],
            registry=self.registry,
        )
        self.idp_certificates = CertificateExpiry()
        self.registry.register(self.idp_certificates)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CertificateExpiry(Collector):
    """Days until each IdP signing certificate expires, computed at scrape time from the expiry dates the
    connectors saw when they opened (so the gauge keeps counting down without reopening anything)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_after: dict[tuple[str, str], dict[str, float]] = {}

    def observe(self, tenant: str, connection: str, certificates: dict[str, float]) -> None:
        """Replace the known certificates of one connection: fingerprint -> notAfter (epoch seconds)."""
        with self._lock:
            self._not_after[(tenant, connection)] = dict(certificates)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "broker_idp_certificate_days_left", "Days until each IdP signing certificate expires",
            labels=["tenant", "connection", "fingerprint"],
        )
        now = time.time()
        with self._lock:
            items = [(k, dict(v)) for k, v in self._not_after.items()]
        for (tenant, connection), certs in items:
            for fingerprint, not_after in certs.items():
                family.add_metric([tenant, connection, fingerprint[:16]], round((not_after - now) / 86400, 2))
        yield family

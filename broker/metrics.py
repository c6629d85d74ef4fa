"""Prometheus metrics, in a registry of our own (one per app), exposed at /metrics.

Under `broker serve` every gunicorn worker is its own process, and a scrape reaches only one of them.
`broker serve` therefore runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before
prometheus_client is first imported): each worker writes its counters and histograms to memory-mapped files
in that directory, and /metrics, whichever worker answers it, sums every worker's files, those of exited
workers included, so counters never go backwards when a worker restarts. The certificate-expiry gauge is
computed at scrape time from the configuration store, which keeps every SAML connection's certificate expiry
dates, so it covers every connection in every worker (and replica), used since the start or not.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from broker import logs

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logs.get("broker.metrics")


def multiprocess_dir() -> str | None:
    """The shared metrics directory when prometheus_client really runs in multiprocess mode (the variable
    was set before it was imported), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path or values.ValueClass is values.MutexValue:
        return None
    return path


STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self, certificates: CertificateSource | None = None,
                 metadata: MetadataSource | None = None) -> None:
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
        self.multiprocess_dir = multiprocess_dir()
        self.idp_certificates = CertificateExpiry(certificates)
        self.registry.register(self.idp_certificates)
        self.idp_metadata = MetadataFreshness(metadata)
        self.registry.register(self.idp_metadata)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        files = MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        registry.register(_WithDeclared(files, self._declared()))
        registry.register(self.idp_certificates)
        registry.register(self.idp_metadata)
        return generate_latest(registry)

    def _declared(self) -> list[Counter | Histogram]:
        return [self.logins_started, self.logins_succeeded, self.logins_failed, self.tokens_issued,
                self.step_seconds, self.http_requests, self.metadata_refresh]


class _WithDeclared(Collector):
    """The workers' files, plus every family this app declares that no worker has written yet (its HELP and
    TYPE, no samples), as a single process's registry would list it: a scrape shows the same families from
    the first one on, and `absent()`-style alerts and dashboards do not depend on a first failure."""

    def __init__(self, files: Collector, declared: Iterable[Counter | Histogram]) -> None:
        self._files = files
        self._declared = declared

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for family in self._files.collect():
            seen.add(family.name)
            yield family
        for metric in self._declared:
            for family in metric.describe():
                if family.name not in seen:
                    yield family


CertificateSource = Callable[[], Iterable[tuple[str, str, Mapping[str, float]]]]
# (tenant, connection, when the last good copy was fetched or None, whether the last refresh failed)
MetadataSource = Callable[[], Iterable[tuple[str, str, float | None, bool]]]
T = TypeVar("T")


class _StoreGauges(Collector, Generic[T]):
    """Gauges computed at scrape time from what the configuration store keeps (`source`), so they cover every
    connection in every worker and replica, and what a separate process (the metadata refresh CronJob) did.
    When the store cannot be read, the scrape still answers with the last rows it read."""

    unavailable = "store_gauges_unavailable"

    def __init__(self, source: Callable[[], Iterable[T]] | None = None) -> None:
        self._lock = threading.Lock()
        self._source = source
        self._last: list[T] = []

    def attach(self, source: Callable[[], Iterable[T]]) -> None:
        self._source = source

    def _read(self) -> list[T]:
        with self._lock:
            if self._source is None:
                return self._last
            try:
                self._last = list(self._source())
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
                log.warning(self.unavailable, extra={"error": exc.__class__.__name__})
            return self._last


class CertificateExpiry(_StoreGauges[tuple[str, str, Mapping[str, float]]]):
    """Days until each IdP signing certificate expires, for every enabled SAML connection, whether or not
    anyone has logged in through it since the process started: from the expiry dates the configuration
    store keeps for each connection's metadata."""

    unavailable = "certificate_expiry_unavailable"

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "broker_idp_certificate_days_left", "Days until each IdP signing certificate expires",
            labels=["tenant", "connection", "fingerprint"],
        )
        now = time.time()
        for tenant, connection, certs in self._read():
            for fingerprint, not_after in certs.items():
                # the first 8 bytes of the SHA-256, whole bytes (AB:CD:… or plain hex)
                short = ":".join(fingerprint.split(":")[:8]) if ":" in fingerprint else fingerprint[:16]
                family.add_metric([tenant, connection, short], round((not_after - now) / 86400, 2))
        yield family


class MetadataFreshness(_StoreGauges[tuple[str, str, float | None, bool]]):
    """For every enabled SAML connection fed by a metadata_url: how old the copy in use is, and whether the
    last refresh failed. From the state the store keeps, whoever refreshed (a login, a server, the CronJob):
    an IdP whose metadata URL has been failing for days shows here, not only in the refresher's logs."""

    unavailable = "metadata_freshness_unavailable"

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "broker_idp_metadata_age_seconds", "Seconds since the IdP metadata in use was fetched from its URL",
            labels=["tenant", "connection"],
        )
        failing = GaugeMetricFamily(
            "broker_idp_metadata_refresh_failing",
            "1 when the last refresh of the IdP metadata URL failed (the last good copy, if any, is in use)",
            labels=["tenant", "connection"],
        )
        now = time.time()
        for tenant, connection, fetched_at, failed in self._read():
            if fetched_at is not None:
                age.add_metric([tenant, connection], round(max(0.0, now - fetched_at), 1))
            failing.add_metric([tenant, connection], 1.0 if failed else 0.0)
        yield age
        yield failing

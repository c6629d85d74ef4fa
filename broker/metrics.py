"""Prometheus metrics, in a registry of our own (one per app), exposed at /metrics.

Under `broker serve` every gunicorn worker is its own process, and a scrape reaches only one of them.
`broker serve` therefore runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before
prometheus_client is first imported): each worker writes its counters and histograms to memory-mapped files
in that directory, and /metrics, whichever worker answers it, sums every worker's files, those of exited
workers included, so counters never go backwards when a worker restarts. The certificate-expiry gauge is
computed at scrape time from what each worker saw when it opened a connection; in multiprocess mode each
worker appends what it saw to its own file there, and the scrape takes the newest sighting per connection.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CERTS_GLOB = "broker_certs_*.jsonl"


def multiprocess_dir() -> str | None:
    """The shared metrics directory when prometheus_client really runs in multiprocess mode (the variable
    was set before it was imported), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path or values.ValueClass is values.MutexValue:
        return None
    return path


def certs_file(path: str, pid: int) -> str:
    return os.path.join(path, f"broker_certs_{pid}.jsonl")

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
        self.multiprocess_dir = multiprocess_dir()
        self.idp_certificates = CertificateExpiry(self.multiprocess_dir)
        self.registry.register(self.idp_certificates)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        registry.register(self.idp_certificates)
        return generate_latest(registry)


class CertificateExpiry(Collector):
    """Days until each IdP signing certificate expires, computed at scrape time from the expiry dates the
    connectors saw when they opened (so the gauge keeps counting down without reopening anything)."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self._lock = threading.Lock()
        self._not_after: dict[tuple[str, str], dict[str, float]] = {}
        self._shared_dir = shared_dir
        self._merged_key: tuple[tuple[str, int, int], ...] | None = None
        self._merged: dict[tuple[str, str], dict[str, float]] = {}

    def observe(self, tenant: str, connection: str, certificates: dict[str, float]) -> None:
        """Replace the known certificates of one connection: fingerprint -> notAfter (epoch seconds)."""
        with self._lock:
            self._not_after[(tenant, connection)] = dict(certificates)
            if self._shared_dir is not None:
                line = json.dumps({"at": time.time(), "tenant": tenant, "connection": connection,
                                   "certs": certificates}, separators=(",", ":"))
                try:
                    with open(certs_file(self._shared_dir, os.getpid()), "a", encoding="utf-8") as f:
                        f.write(line + "\n")
                except OSError:
                    pass  # the gauge is best effort; this worker's own scrapes still see its sightings

    def _shared(self) -> dict[tuple[str, str], dict[str, float]]:
        """Every worker's newest sighting per connection, re-read only when a file changed."""
        assert self._shared_dir is not None
        stats = []
        for path in sorted(glob.glob(os.path.join(self._shared_dir, CERTS_GLOB))):
            try:
                st = os.stat(path)
            except OSError:
                continue
            stats.append((path, st.st_size, st.st_mtime_ns))
        key = tuple(stats)
        if key == self._merged_key:
            return self._merged
        newest: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}
        for path, _, _ in stats:
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
            except OSError:
                continue
            for line in lines:
                try:
                    seen = json.loads(line)
                    at, conn = float(seen["at"]), (str(seen["tenant"]), str(seen["connection"]))
                    certs = {str(k): float(v) for k, v in dict(seen["certs"]).items()}
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash, say
                if conn not in newest or at >= newest[conn][0]:
                    newest[conn] = (at, certs)
        self._merged_key, self._merged = key, {k: v for k, (_, v) in newest.items()}
        return self._merged

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "broker_idp_certificate_days_left", "Days until each IdP signing certificate expires",
            labels=["tenant", "connection", "fingerprint"],
        )
        now = time.time()
        with self._lock:
            known = self._shared() if self._shared_dir is not None else self._not_after
            items = [(k, dict(v)) for k, v in known.items()]
        for (tenant, connection), certs in items:
            for fingerprint, not_after in certs.items():
                family.add_metric([tenant, connection, fingerprint[:16]], round((not_after - now) / 86400, 2))
        yield family

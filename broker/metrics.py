"""Prometheus metrics, in a registry of our own (one per app), exposed at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.idp_cert_days_left = Gauge(
            "broker_idp_certificate_days_left", "Days until each IdP signing certificate expires",
            ["tenant", "connection", "fingerprint"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

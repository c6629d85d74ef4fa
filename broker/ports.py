"""typing.Protocols the core depends on: state store, config store, clock, fetcher, audit sink.

Implementations live in store/ (and tests); core modules import only these interfaces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.model import App, AuditEvent, Connection, SigningKey, Tenant


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass
class FrozenClock:
    """A clock tests set by hand; never sleeps."""

    t: float

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class StateStore(Protocol):
    """Short-lived shared state: login transactions, codes, replay cache, rate counters.

    Every method is atomic with respect to other workers and replicas sharing the same backend.
    Keys are plain strings; callers namespace them (e.g. "txn:", "code:", "replay:"). Values are bytes.
    Raises broker.errors.StateStoreError when the backend cannot be reached.
    """

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store value under key for ttl seconds, replacing any previous value."""
        ...

    def get(self, key: str) -> bytes | None:
        """The live value under key, or None."""
        ...

    def take(self, key: str) -> bytes | None:
        """Atomically return and delete the value: exactly one concurrent caller gets it."""
        ...

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if no live value exists; True if this call stored it (exactly one concurrent winner)."""
        ...

    def incr(self, key: str, ttl: float) -> int:
        """Increment a counter and return the new value; the window (ttl) starts with the first increment."""
        ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> bool:
        """True when the backend answers; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]


class Fetcher(Protocol):
    """Outbound HTTP for metadata and discovery/JWKS documents: always with a timeout and a size cap."""

    def get(self, url: str, *, timeout: float, max_bytes: int) -> FetchResult: ...

    def post_form(
        self, url: str, data: dict[str, str], *, timeout: float, max_bytes: int,
        headers: dict[str, str] | None = None,
    ) -> FetchResult: ...


class ConfigReader(Protocol):
    """Read side of tenant configuration, as frozen values. Lookups of missing things return None."""

    def tenant_by_slug(self, slug: str) -> Tenant | None: ...

    def connection(self, tenant_id: str, slug: str) -> Connection | None: ...

    def connections(self, tenant_id: str) -> Sequence[Connection]: ...

    def app(self, tenant_id: str, client_id: str) -> App | None: ...

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        """Published keys, the active one first."""
        ...


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None: ...

"""Keeps each metadata_url connection's IdP metadata fresh, shared across replicas through the ConfigStore.

The last good copy lives in the database; a refresh runs when it is due (cacheDuration or the default
schedule), with the fetch timeout and size cap, and a failed refresh keeps the last good copy (flagged with
its error) so logins go on. With no good copy ever fetched, the connection cannot log anyone in yet.
"""

from __future__ import annotations

import threading
from typing import Protocol

from broker import logs
from broker.metrics import Metrics
from broker.model import Connection
from broker.ports import Clock, Fetcher, MetadataState
from broker.samlxml.errors import SamlError
from broker.upstream.sources import MetadataCacheEntry, refresh_metadata

log = logs.get("broker.metadata")


class MetadataStateStore(Protocol):
    def metadata_state(self, connection_id: str) -> MetadataState: ...
    def save_metadata_state(self, connection_id: str, state: MetadataState) -> None: ...


class MetadataProvider:
    def __init__(self, store: MetadataStateStore, fetcher: Fetcher, clock: Clock, *, timeout: float,
                 max_bytes: int, metrics: Metrics) -> None:
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __call__(self, connection: Connection) -> tuple[bytes | None, str]:
        url = str(connection.settings.get("metadata_url") or "")
        state = self.store.metadata_state(connection.id)
        entry = MetadataCacheEntry.from_state(state)
        now = self.clock.now()
        if entry is None and state.next_refresh_at is not None and now < state.next_refresh_at:
            return None, "none"  # never fetched successfully; the last attempt failed: wait for the retry time
        if entry is None or entry.due(now):
            entry = self._refresh_once(connection, url, entry, now)
        if entry is None:
            return None, "none"
        return entry.xml, f"{entry.fetched_at:.0f}"

    def _refresh_once(self, connection: Connection, url: str, entry: MetadataCacheEntry | None,
                      now: float) -> MetadataCacheEntry | None:
        """One refresh per connection at a time in this process. While it runs, the other logins of that
        connection use the last good copy instead of each waiting on the same (perhaps slow) metadata host,
        which would hold every worker thread for up to the timeout; with no good copy yet they wait for it."""
        with self._locks_guard:
            lock = self._locks.setdefault(connection.id, threading.Lock())
        if entry is not None:
            if not lock.acquire(blocking=False):
                return entry
        elif not lock.acquire(timeout=self.timeout + 5):
            return None
        try:  # read again: the thread this one waited for (or another replica) may have refreshed it
            state = self.store.metadata_state(connection.id)
            fresh = MetadataCacheEntry.from_state(state)
            if fresh is None and state.next_refresh_at is not None and now < state.next_refresh_at:
                return None  # that attempt failed, with no good copy: wait for the retry time
            if fresh is not None and not fresh.due(now):
                return fresh
            return self.refresh(connection, url, fresh, now)
        finally:
            lock.release()

    def refresh(self, connection: Connection, url: str, previous: MetadataCacheEntry | None,
                now: float) -> MetadataCacheEntry | None:
        labels = {"tenant": connection.tenant_slug, "connection": connection.slug}
        try:
            entry = refresh_metadata(self.fetcher, url, previous, now=now, timeout=self.timeout,
                                     max_bytes=self.max_bytes,
                                     entity_id=connection.settings.get("idp_entity_id") or None)
        except SamlError as exc:
            self.metrics.metadata_refresh.labels(outcome="failure", **labels).inc()
            log.warning("metadata_refresh_failed", extra={"reason": exc.message})
            self.store.save_metadata_state(connection.id, MetadataState(None, None, now + 300, exc.message))
            return None
        outcome = "failure" if entry.last_error else "success"
        self.metrics.metadata_refresh.labels(outcome=outcome, **labels).inc()
        if entry.last_error:
            log.warning("metadata_refresh_failed_kept_last_good", extra={"reason": entry.last_error})
        self.store.save_metadata_state(connection.id, entry.to_state())
        return entry

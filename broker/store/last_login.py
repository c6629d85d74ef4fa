"""Connections' last-login stamps (shown by the admin API and UI), written behind the logins in batches.

A successful login notes (connection id, time) in memory. A daemon thread of the process writes every pending
stamp in one transaction, at most once per `interval` seconds and only when there is something to write. With
10,000 tenants each login is usually its connection's first in a while; writing the stamp in the request cost
a transaction of its own (about 3 ms of CPU) on nearly every login.

The stamp is display information: a process that dies without a clean exit loses at most one interval of it,
never a login. A failed write keeps the stamps for the next attempt. Forked workers each start their own
thread on first use.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Protocol

from broker import logs
from broker.model import Connection

log = logs.get("broker.store.last_login")


class _Sink(Protocol):
    def touch_last_logins(self, stamps: Mapping[str, float]) -> None: ...


class LastLoginWriter:
    def __init__(self, sink: _Sink, *, interval: float = 5.0) -> None:
        self._sink = sink
        self._interval = interval
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread_pid: int | None = None
        self._flush_lock = threading.Lock()

    def touch(self, connection_id: str, when: float) -> None:
        with self._lock:
            if when > self._pending.get(connection_id, 0.0):
                self._pending[connection_id] = when
            if self._thread_pid != os.getpid():  # first use in this process (or a fork of it)
                self._thread_pid = os.getpid()
                self._wake = threading.Event()
                threading.Thread(target=self._run, name="last-login-writer", daemon=True).start()
                atexit.register(self.flush)
        self._wake.set()

    def touch_connection(self, connection: Connection, when: float) -> None:
        """LoginService's on_success hook."""
        self.touch(connection.id, when)

    def pending(self) -> dict[str, float]:
        with self._lock:
            return dict(self._pending)

    def flush(self) -> bool:
        """Write every pending stamp now (also at interpreter exit). False if the write failed: the stamps
        stay pending for the next attempt."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                self._sink.touch_last_logins(batch)
                return True
            except Exception as exc:  # noqa: BLE001 - display data: keep it for the next round, never raise
                log.warning("last_login_write_failed", extra={"connections": len(batch),
                                                              "error": exc.__class__.__name__})
                with self._lock:
                    for cid, when in batch.items():
                        if when > self._pending.get(cid, 0.0):
                            self._pending[cid] = when
                return False

    def _run(self) -> None:
        wake = self._wake
        pause = threading.Event()  # never set: waiting on it is the pause between writes
        while True:
            wake.wait()
            pause.wait(self._interval)  # gather the stamps of one interval into one write
            wake.clear()
            if not self.flush():
                wake.set()  # try again after the next interval

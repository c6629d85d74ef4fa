"""The in-process StateStore: short-lived state for a single broker process (dev, tests, one worker).

It is a real implementation of `broker.ports.StateStore` and passes the same conformance suite as the
Redis store, but its state is private to one process: with several workers or replicas use Redis.
Entries expire lazily when touched, and a periodic sweep (at most once per `sweep_interval` seconds of
the injected clock, run inside an ordinary call) drops the rest, so memory stays bounded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from broker.errors import StateStoreError

__all__ = ["MemoryStateStore", "PutBatches", "check_ttl"]

Put = tuple[str, bytes, float]


def check_ttl(ttl: float) -> float:
    """Validate a time-to-live in seconds: finite and > 0 (shared by every StateStore backend)."""
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)


class PutBatches:
    """The per-thread side of StateStore.batch(), shared by every backend: holds this thread's put()s while
    a batch block is open and hands them to `write` (all at once, in order) when the outermost block ends
    without an exception, or earlier through flush() when another operation needs them written first."""

    def __init__(self, write: Callable[[list[Put]], None]) -> None:
        self._write = write
        self._local = threading.local()

    @contextmanager
    def batch(self) -> Iterator[None]:
        local = self._local
        depth: int = getattr(local, "depth", 0)
        if depth == 0:
            local.pending = []
        local.depth = depth + 1
        completed = False
        try:
            yield
            completed = True
        finally:
            local.depth = depth
            if depth == 0:
                pending: list[Put] = local.pending
                local.pending = None
                if completed and pending:
                    self._write(pending)

    def hold(self, key: str, value: bytes, ttl: float) -> bool:
        """Keep a put for the end of the open batch; False (nothing held) when no batch is open."""
        pending: list[Put] | None = getattr(self._local, "pending", None)
        if pending is None:
            return False
        pending.append((key, bytes(value), check_ttl(ttl)))
        return True

    def flush(self) -> None:
        """Write what the open batch holds now (before a read or other write that must see it)."""
        pending: list[Put] | None = getattr(self._local, "pending", None)
        if pending:
            held = list(pending)
            pending.clear()
            self._write(held)


class MemoryStateStore:
    """Thread-safe in-memory StateStore for one process; one lock guards every operation."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float = 30.0,
    ) -> None:
        self._clock = clock
        self._sweep_interval = check_ttl(sweep_interval)
        self._lock = threading.Lock()
        # key -> (value, deadline on self._clock); counters are stored as ASCII decimal, like Redis.
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._next_sweep = clock() + self._sweep_interval
        self._batches = PutBatches(self._put_all)
        self._kept_since: float | None = None

    # --- StateStore ---------------------------------------------------------------------------

    def put(self, key: str, value: bytes, ttl: float) -> None:
        if self._batches.hold(key, value, ttl):
            return
        self._put_all([(key, bytes(value), check_ttl(ttl))])

    def batch(self) -> AbstractContextManager[None]:
        return self._batches.batch()

    def _put_all(self, puts: list[Put]) -> None:
        with self._lock:
            now = self._tick()
            for key, value, ttl in puts:
                self._entries[key] = (value, now + ttl)

    def get(self, key: str) -> bytes | None:
        self._batches.flush()
        with self._lock:
            return self._live(key, self._tick())

    def take(self, key: str) -> bytes | None:
        self._batches.flush()
        with self._lock:
            value = self._live(key, self._tick())
            if value is not None:
                del self._entries[key]
            return value

    def take_if_prefixed(self, key: str, prefix: bytes) -> tuple[bytes | None, bool]:
        self._batches.flush()
        with self._lock:
            value = self._live(key, self._tick())
            if value is None or not value.startswith(prefix):
                return value, False
            del self._entries[key]
            return value, True

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        self._batches.flush()
        with self._lock:
            now = self._tick()
            if self._live(key, now) is not None:
                return False
            self._entries[key] = (bytes(value), now + ttl)
            return True

    def put_all_unless(self, guard: str, puts: Sequence[Put]) -> bool:
        checked = [(key, bytes(value), check_ttl(ttl)) for key, value, ttl in puts]
        self._batches.flush()
        with self._lock:
            now = self._tick()
            if self._live(guard, now) is not None:
                return False
            for key, value, ttl in checked:
                self._entries[key] = (value, now + ttl)
            return True

    def kept_since(self, now: float) -> float:
        with self._lock:
            if self._kept_since is None:
                self._kept_since = now
            return self._kept_since

    def incr(self, key: str, ttl: float) -> int:
        ttl = check_ttl(ttl)
        self._batches.flush()
        with self._lock:
            now = self._tick()
            current = self._live(key, now)
            if current is None:
                self._entries[key] = (b"1", now + ttl)
                return 1
            try:
                count = int(current.decode("ascii")) + 1
            except (UnicodeDecodeError, ValueError) as exc:
                # Same outcome as Redis INCR on a non-integer value (a ResponseError there).
                raise StateStoreError(
                    "The state store is unavailable.",
                    detail="memory incr failed: value is not an integer",
                ) from exc
            # The window started with the first increment: keep its deadline.
            self._entries[key] = (str(count).encode("ascii"), self._entries[key][1])
            return count

    def delete(self, key: str) -> None:
        self._batches.flush()
        with self._lock:
            self._tick()
            self._entries.pop(key, None)

    def ping(self) -> bool:
        return True

    # --- housekeeping -------------------------------------------------------------------------

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        with self._lock:
            now = self._clock()
            self._next_sweep = now + self._sweep_interval
            return self._sweep_locked(now)

    def __len__(self) -> int:
        """Entries held, including expired ones the next sweep will drop."""
        with self._lock:
            return len(self._entries)

    def _tick(self) -> float:
        """The current time; runs the periodic sweep when it is due. Caller holds the lock."""
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            self._sweep_locked(now)
        return now

    def _sweep_locked(self, now: float) -> int:
        expired = [k for k, (_, deadline) in self._entries.items() if deadline <= now]
        for k in expired:
            del self._entries[k]
        return len(expired)

    def _live(self, key: str, now: float) -> bytes | None:
        """The value under key if it has not expired; drops it lazily if it has. Caller holds the lock."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline <= now:
            del self._entries[key]
            return None
        return value

"""What only the in-process StateStore can show: exact expiry on its clock, and a sweep that bounds memory."""

from __future__ import annotations

import pytest

from broker.ports import FrozenClock
from broker.store.state import MemoryStateStore


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(0.0)


@pytest.fixture
def store(clock: FrozenClock) -> MemoryStateStore:
    return MemoryStateStore(clock=clock.now, sweep_interval=10.0)


def test_value_lives_until_its_deadline_exactly(store: MemoryStateStore, clock: FrozenClock) -> None:
    store.put("k", b"v", 5.0)
    clock.advance(4.999)
    assert store.get("k") == b"v"
    clock.advance(0.001)
    assert store.get("k") is None


def test_counter_window_is_fixed_at_first_increment(store: MemoryStateStore, clock: FrozenClock) -> None:
    store.incr("rate", 5.0)
    clock.advance(4.0)
    assert store.incr("rate", 5.0) == 2
    clock.advance(1.0)
    assert store.incr("rate", 5.0) == 1


def test_expired_entries_are_dropped_lazily(store: MemoryStateStore, clock: FrozenClock) -> None:
    store.put("k", b"v", 1.0)
    clock.advance(2.0)
    assert len(store) == 1
    assert store.get("k") is None
    assert len(store) == 0


def test_periodic_sweep_bounds_memory(store: MemoryStateStore, clock: FrozenClock) -> None:
    for i in range(1000):
        store.put(f"txn:{i}", b"v", 1.0)
    store.put("keep", b"v", 100.0)
    clock.advance(9.0)
    store.get("unrelated")
    assert len(store) == 1001, "no sweep before the interval"
    clock.advance(1.0)
    store.get("unrelated")
    assert len(store) == 1, "any call after the interval sweeps expired entries"
    assert store.get("keep") == b"v"


def test_sweep_on_demand_reports_what_it_dropped(store: MemoryStateStore, clock: FrozenClock) -> None:
    store.put("a", b"v", 1.0)
    store.put("b", b"v", 1.0)
    store.put("c", b"v", 3.0)
    clock.advance(2.0)
    assert store.sweep() == 2
    assert len(store) == 1


def test_stored_value_is_a_copy(store: MemoryStateStore) -> None:
    buf = bytearray(b"abc")
    store.put("k", buf, 10.0)  # type: ignore[arg-type]  # callers may hand in a buffer by mistake
    buf[0] = ord("z")
    assert store.get("k") == b"abc"


def test_default_clock_is_monotonic_time() -> None:
    store = MemoryStateStore()
    store.put("k", b"v", 60.0)
    assert store.take("k") == b"v"
    assert store.ping() is True


@pytest.mark.parametrize("interval", [0, -1.0])
def test_sweep_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError):
        MemoryStateStore(sweep_interval=interval)

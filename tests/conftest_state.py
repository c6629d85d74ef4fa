"""Fixtures for the StateStore conformance suite: one `state_store` fixture over every backend.

Registered from tests/conftest.py (`pytest_plugins = ["tests.conftest_state"]`).
The Redis backend runs when TEST_REDIS_URL or REDIS_URL points at a live server (use a spare db,
e.g. redis://127.0.0.1:6379/15); each test gets a random key prefix and its keys are removed after.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from broker.ports import FrozenClock, StateStore
from broker.store.state import MemoryStateStore
from broker.store.state_redis import RedisStateStore

REDIS_SKIP_REASON = (
    "Redis tests need TEST_REDIS_URL pointing at a running Redis (e.g. redis://127.0.0.1:6379/15); "
    "REDIS_URL is never used, so a shell set up to run the broker cannot point the tests at its Redis"
)


def configured_redis_url() -> str | None:
    return os.environ.get("TEST_REDIS_URL") or None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, checked once per session; skips the test when there is none."""
    url = configured_redis_url()
    if not url:
        pytest.skip(REDIS_SKIP_REASON)
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(REDIS_SKIP_REASON)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix for one test; every key under it is deleted afterwards (SCAN, never KEYS)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def state_clock() -> FrozenClock:
    """The clock the memory backend runs on (monotonic seconds, advanced by hand)."""
    return FrozenClock(1_000.0)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state_store(request: pytest.FixtureRequest, state_clock: FrozenClock) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore(clock=state_clock.now)
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    store = RedisStateStore.from_url(url, prefix=prefix)
    try:
        yield store
    finally:
        store.client.close()


@pytest.fixture
def state_expire(state_store: StateStore, state_clock: FrozenClock) -> Callable[[float], None]:
    """Let `seconds` pass for `state_store`: the memory backend's clock is advanced, Redis really waits
    (so Redis-backed tests keep their TTLs to tens of milliseconds)."""
    if isinstance(state_store, MemoryStateStore):
        return state_clock.advance
    return time.sleep

"""RedisGeneration: configuration changes reach other replicas through pub/sub, without a GET per request,
and a lost subscription costs correctness never, only round trips."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from broker.errors import StateStoreError
from broker.ports import FrozenClock
from broker.store.generation import (
    GENERATION_KEY,
    RedisGeneration,
    StateGeneration,
    generation_for,
    parse_announcement,
)
from broker.store.state import MemoryStateStore
from broker.store.state_redis import RedisStateStore

pytestmark = pytest.mark.redis


class Replica:
    """One process's view: its own Redis client and generation, with a count of its token GETs."""

    def __init__(self, url: str, prefix: str, clock: FrozenClock) -> None:
        self.store = RedisStateStore.from_url(url, prefix=prefix)
        self.gets = 0
        original = self.store.get

        def counting_get(key: str) -> bytes | None:
            if key == GENERATION_KEY:
                self.gets += 1
            return original(key)

        self.store.get = counting_get  # type: ignore[method-assign]
        self.generation = RedisGeneration(self.store, verify_every=1.0, clock=clock.now)

    def close(self) -> None:
        self.generation.close()
        self.store.client.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1_000.0)


@pytest.fixture
def pair(redis_url: str, redis_prefix: str, clock: FrozenClock) -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(redis_url, redis_prefix, clock), Replica(redis_url, redis_prefix, clock)
    yield a, b
    a.close()
    b.close()


def test_a_change_on_one_replica_is_seen_by_the_next_read_on_the_other_without_a_get(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    a.generation.bump()
    first = b.generation.current()  # subscribes, then reads the token once
    assert first is not None and b.gets == 1
    for _ in range(5):
        assert b.generation.current() == first
    assert b.gets == 1, "no round trip per read while subscribed"
    a.generation.bump()
    second = b.generation.current()
    assert second != first
    assert second == a.generation.current()
    assert b.gets == 1, "the change arrived as a notification"


def test_the_writer_sees_its_own_change_at_once(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    before = a.generation.current()
    a.generation.bump()
    after = a.generation.current()
    assert after != before and after is not None


@contextmanager
def killed_subscription(redis_url: str, replica: Replica) -> Iterator[None]:
    """The replica's pub/sub connection closed by the server, as a Redis restart or a network cut would."""
    raw = redis.Redis.from_url(redis_url)
    try:
        host, port = replica.generation._pubsub.connection._sock.getsockname()[:2]  # noqa: SLF001
        assert raw.client_kill(f"{host}:{port}")
        yield
    finally:
        raw.close()


def test_a_killed_subscription_is_noticed_and_the_change_still_seen(
    pair: tuple[Replica, Replica], redis_url: str
) -> None:
    a, b = pair
    b.generation.current()
    with killed_subscription(redis_url, b):
        a.generation.bump()  # published while b has no subscription
        assert b.generation.current() == a.generation.current()
        assert b.gets == 2, "the dead subscription made b read the token again (and subscribe anew)"
        a.generation.bump()
        assert b.generation.current() == a.generation.current()
        assert b.gets == 2, "subscribed again: notifications flow"


def test_a_silently_lost_notification_is_caught_by_the_periodic_check(
    pair: tuple[Replica, Replica], redis_url: str, redis_prefix: str, clock: FrozenClock
) -> None:
    _, b = pair
    old = b.generation.current()
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(redis_prefix + GENERATION_KEY, b"changed-without-notification")
        assert b.generation.current() == old, "within verify_every the last announced token is used"
        clock.advance(1.0)
        assert b.generation.current() == b"changed-without-notification"
    finally:
        raw.close()


def test_redis_down_is_a_state_store_error() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.3)
    generation = RedisGeneration(store)
    try:
        with pytest.raises(StateStoreError):
            generation.current()
        with pytest.raises(StateStoreError):
            generation.bump()
    finally:
        store.client.close()


def test_the_in_process_store_keeps_the_token_in_the_store() -> None:
    state = MemoryStateStore()
    generation = generation_for(state)
    assert isinstance(generation, StateGeneration)
    assert generation.current() is None
    generation.bump()
    token = generation.current()
    assert token is not None and state.get(GENERATION_KEY) == token


def test_redis_gets_the_pub_sub_generation(redis_url: str, redis_prefix: str) -> None:
    store: Any = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    try:
        assert isinstance(generation_for(store), RedisGeneration)
    finally:
        store.client.close()


# --- poll(): what changed since the last poll ------------------------------------------------------------


def test_poll_reports_the_scopes_of_each_change_and_nothing_when_nothing_changed(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    assert b.generation.poll()[1] is None, "a first poll cannot know what it missed"
    assert b.generation.poll()[1] == frozenset()
    a.generation.bump(frozenset({"t:1"}))
    a.generation.bump(frozenset({"t:2", "s:acme"}))
    token, changed = b.generation.poll()
    assert changed == frozenset({"t:1", "t:2", "s:acme"}) and token == a.generation.current()
    assert b.generation.poll()[1] == frozenset()
    a.generation.bump(frozenset({"t:3"}))
    a.generation.bump(None)  # everything
    assert b.generation.poll()[1] is None
    assert b.gets == 1, "all of it arrived as notifications"


def test_the_writer_knows_the_scopes_of_its_own_change(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    a.generation.poll()
    a.generation.bump(frozenset({"t:mine"}))
    assert a.generation.poll()[1] == frozenset({"t:mine"})


def test_a_killed_subscription_makes_the_next_poll_say_everything(
    pair: tuple[Replica, Replica], redis_url: str
) -> None:
    a, b = pair
    b.generation.poll()
    with killed_subscription(redis_url, b):
        a.generation.bump(frozenset({"t:1"}))  # published while b has no subscription
        assert b.generation.poll()[1] is None


def test_announcements_parse_and_earlier_versions_mean_everything() -> None:
    token = b"0123456789abcdef01234567"
    assert parse_announcement(b"v2:" + token) == (token, None)
    assert parse_announcement(b"v2:" + token + b"\nt:1\ns:acme") == (token, frozenset({"t:1", "s:acme"}))
    for legacy in (b"\x00\x01binary-12b", b"v2:" + token + b"\n", b"v2:short\nt:1", b"v2:" + token + b"\n\nt:1"):
        assert parse_announcement(legacy) == (legacy, None)


def test_the_in_process_generation_reports_any_change_as_everything() -> None:
    """A token alone cannot tell which writes it stands for (one may have overwritten another's)."""
    state = MemoryStateStore()
    mine, other = StateGeneration(state), StateGeneration(state)
    assert mine.poll()[1] is None and other.poll()[1] is None
    assert mine.poll()[1] == frozenset()
    mine.bump(frozenset({"t:1"}))
    assert mine.poll()[1] is None and other.poll()[1] is None
    assert mine.poll()[1] == frozenset() and other.poll()[1] == frozenset()

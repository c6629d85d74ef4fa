"""What only the Redis StateStore can show: races across processes, key layout, PX, failure mapping."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
import redis

from broker.errors import StateStoreError
from broker.store.state_redis import RedisStateStore

PROCESSES = 4
KEYS = 40
LONG = 60.0
SECRET_KEY = "txn:Zq9-transaction-id"


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Any:
    s = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    yield s
    s.client.close()


@pytest.fixture
def raw(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# --- several processes, each with its own client --------------------------------------------


def _race_worker(url: str, prefix: str, op: str, keys: list[str], barrier: Any, results: Any) -> None:
    """Runs in a spawned process: wait for the others, then try every key once."""
    store = RedisStateStore.from_url(url, prefix=prefix)
    try:
        barrier.wait(timeout=30)
        if op == "take":
            won = [k for k in keys if store.take(k) is not None]
        else:
            won = [k for k in keys if store.add_if_absent(k, b"x", LONG)]
        results.put(won)
    finally:
        store.client.close()


def _race_processes(url: str, prefix: str, op: str, keys: list[str]) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(url, prefix, op, keys, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        wins = [k for _ in procs for k in results.get(timeout=60)]
    finally:
        for p in procs:
            p.join(timeout=30)
    results.close()
    results.join_thread()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    return wins


@pytest.mark.redis
def test_take_across_processes_has_exactly_one_winner(
    store: RedisStateStore, redis_url: str, redis_prefix: str
) -> None:
    keys = [f"code:{i}" for i in range(KEYS)]
    for k in keys:
        store.put(k, b"grant", LONG)
    wins = _race_processes(redis_url, redis_prefix, "take", keys)
    assert sorted(wins) == sorted(keys)


@pytest.mark.redis
def test_add_if_absent_across_processes_has_exactly_one_winner(redis_url: str, redis_prefix: str) -> None:
    keys = [f"replay:{i}" for i in range(KEYS)]
    wins = _race_processes(redis_url, redis_prefix, "add", keys)
    assert sorted(wins) == sorted(keys)


# --- key layout and expiry on the server ------------------------------------------------------


@pytest.mark.redis
def test_keys_live_under_the_prefix(store: RedisStateStore, raw: redis.Redis, redis_prefix: str) -> None:
    store.put("txn:1", b"v", LONG)
    assert raw.get(redis_prefix + "txn:1") == b"v"
    assert raw.get("txn:1") is None


@pytest.mark.redis
def test_stores_with_different_prefixes_do_not_see_each_other(
    store: RedisStateStore, redis_url: str, redis_prefix: str
) -> None:
    other = RedisStateStore.from_url(redis_url, prefix=redis_prefix + "other:")
    try:
        store.put("k", b"mine", LONG)
        assert other.get("k") is None
        assert other.add_if_absent("k", b"theirs", LONG) is True
        assert store.get("k") == b"mine"
    finally:
        other.client.close()


@pytest.mark.redis
def test_ttl_seconds_become_milliseconds(store: RedisStateStore, raw: redis.Redis, redis_prefix: str) -> None:
    store.put("k", b"v", 1.5)
    assert 1400 <= raw.pttl(redis_prefix + "k") <= 1500
    store.add_if_absent("a", b"v", 2.25)
    assert 2150 <= raw.pttl(redis_prefix + "a") <= 2250


@pytest.mark.redis
def test_incr_sets_the_window_only_on_the_first_increment(
    store: RedisStateStore, raw: redis.Redis, redis_prefix: str
) -> None:
    store.incr("rate:x", LONG)
    store.incr("rate:x", 0.5)
    assert raw.pttl(redis_prefix + "rate:x") > 50_000


@pytest.mark.redis
def test_incr_repairs_a_counter_without_expiry(
    store: RedisStateStore, raw: redis.Redis, redis_prefix: str
) -> None:
    raw.set(redis_prefix + "rate:x", b"7")  # no TTL: a counter must never live forever
    assert store.incr("rate:x", 1.0) == 8
    assert 0 < raw.pttl(redis_prefix + "rate:x") <= 1000


@pytest.mark.redis
def test_wrong_type_is_a_store_error(store: RedisStateStore, raw: redis.Redis, redis_prefix: str) -> None:
    raw.rpush(redis_prefix + "list", b"x")
    with pytest.raises(StateStoreError) as info:
        store.take("list")
    assert info.value.message == "The state store is unavailable."
    assert info.value.detail is not None and "ResponseError" in info.value.detail


@pytest.mark.redis
def test_take_if_prefixed_is_one_script_call(store: RedisStateStore, raw: redis.Redis) -> None:
    store.put("txn:one", b"mine:v", LONG)
    store.take_if_prefixed("txn:warm", b"x")  # the first call may load the script
    evalsha, getdel = _calls(raw, "evalsha"), _calls(raw, "getdel")
    assert store.take_if_prefixed("txn:one", b"yours:") == (b"mine:v", False)
    assert store.take_if_prefixed("txn:one", b"mine:") == (b"mine:v", True)
    assert _calls(raw, "evalsha") - evalsha == 2
    assert _calls(raw, "getdel") == getdel, "one script per call, no separate take"


@pytest.mark.redis
def test_a_decoding_client_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError):
            RedisStateStore(client)
    finally:
        client.close()


@pytest.mark.redis
def test_a_passed_in_client_is_used_as_is(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisStateStore(client, prefix=redis_prefix)
        store.put("k", b"v", LONG)
        assert store.take("k") == b"v"
        assert store.ping() is True
    finally:
        client.close()


# --- batches ---------------------------------------------------------------------------------


def _batch_of_two(store: RedisStateStore) -> None:
    with store.batch():
        store.put(SECRET_KEY, b"a", LONG)
        store.put(SECRET_KEY + "-2", b"b", LONG)


def _calls(raw: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = raw.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_batch_is_one_multi_exec_with_each_ttl(
    store: RedisStateStore, raw: redis.Redis, redis_prefix: str
) -> None:
    multi, exec_ = _calls(raw, "multi"), _calls(raw, "exec")
    with store.batch():
        store.put("sess:x", b"s", LONG)
        store.put("code:x", b"c", 30.0)
        store.put("grant:x", b"g", 120.0)
    assert (_calls(raw, "multi") - multi, _calls(raw, "exec") - exec_) == (1, 1)
    assert raw.get(redis_prefix + "code:x") == b"c"
    assert 29_000 < raw.pttl(redis_prefix + "code:x") <= 30_000
    assert 119_000 < raw.pttl(redis_prefix + "grant:x") <= 120_000


def test_a_batch_of_one_put_is_a_plain_set(store: RedisStateStore, raw: redis.Redis) -> None:
    multi = _calls(raw, "multi")
    with store.batch():
        store.put("one", b"v", LONG)
    assert _calls(raw, "multi") == multi
    assert store.get("one") == b"v"


# --- an unreachable server --------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.put(SECRET_KEY, b"v", LONG), id="put"),
        pytest.param(lambda s: s.get(SECRET_KEY), id="get"),
        pytest.param(lambda s: s.take(SECRET_KEY), id="take"),
        pytest.param(lambda s: s.take_if_prefixed(SECRET_KEY, b"p"), id="take_if_prefixed"),
        pytest.param(lambda s: s.add_if_absent(SECRET_KEY, b"v", LONG), id="add_if_absent"),
        pytest.param(lambda s: s.incr(SECRET_KEY, LONG), id="incr"),
        pytest.param(lambda s: s.delete(SECRET_KEY), id="delete"),
        pytest.param(lambda s: _batch_of_two(s), id="batch"),
    ],
)
def test_unreachable_server_raises_state_store_error_fast(call: Any) -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StateStoreError) as info:
        call(store)
    assert time.monotonic() - started < 2.0
    err = info.value
    assert err.code == "state_store_unavailable"
    assert err.status == 503
    assert err.message == "The state store is unavailable."
    assert str(err) == "The state store is unavailable."
    assert err.detail is not None and "ConnectionError" in err.detail
    assert SECRET_KEY not in err.detail, "keys (transaction ids, code digests) stay out of the detail"
    store.client.close()


def test_unreachable_server_ping_is_false_and_fast() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    started = time.monotonic()
    assert store.ping() is False
    assert time.monotonic() - started < 2.0
    store.client.close()


def test_ttl_is_checked_before_any_network_call() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(ValueError):
        store.put("k", b"v", 0)
    store.client.close()


@pytest.mark.redis
def test_a_store_that_lost_its_data_starts_its_memory_again(store: Any, raw: Any, redis_prefix: str) -> None:
    """A Redis restarted without persistence: its start marker went with the data, so the next caller's
    time is the new start (and what was consumed before it, unknown)."""
    assert store.kept_since(1_000.0) == 1_000.0
    assert store.add_if_absent("saml-replay:c:a1", b"1", 60)
    for key in raw.scan_iter(match=redis_prefix + "*"):  # the data is gone
        raw.delete(key)
    assert store.kept_since(5_000.0) == 5_000.0
    assert store.add_if_absent("saml-replay:c:a1", b"1", 60)  # the record of its use went too

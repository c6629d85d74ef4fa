"""The StateStore contract (broker.ports.StateStore), run against every backend via `state_store`.

Memory runs on an injected clock; Redis on the real server with TTLs of tens of milliseconds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.errors import StateStoreError
from broker.ports import StateStore

Expire = Callable[[float], None]

SHORT = 0.05  # seconds; the longest real wait in this suite is SHORT + MARGIN
MARGIN = 0.03
LONG = 60.0


# --- put / get ---------------------------------------------------------------------------------


def test_get_of_missing_key_is_none(state_store: StateStore) -> None:
    assert state_store.get("txn:missing") is None


def test_put_then_get_returns_the_value(state_store: StateStore) -> None:
    state_store.put("txn:1", b"hello", LONG)
    assert state_store.get("txn:1") == b"hello"
    assert state_store.get("txn:1") == b"hello", "get does not consume"


def test_put_replaces_value_and_ttl(state_store: StateStore, state_expire: Expire) -> None:
    state_store.put("txn:1", b"first", SHORT)
    state_store.put("txn:1", b"second", LONG)
    state_expire(SHORT + MARGIN)
    assert state_store.get("txn:1") == b"second"


def test_put_value_expires_after_ttl(state_store: StateStore, state_expire: Expire) -> None:
    state_store.put("txn:short", b"v", SHORT)
    state_store.put("txn:long", b"v", LONG)
    assert state_store.get("txn:short") == b"v"
    state_expire(SHORT + MARGIN)
    assert state_store.get("txn:short") is None
    assert state_store.get("txn:long") == b"v"


def test_keys_are_independent(state_store: StateStore) -> None:
    state_store.put("a", b"1", LONG)
    state_store.put("b", b"2", LONG)
    assert (state_store.get("a"), state_store.get("b")) == (b"1", b"2")


def test_all_256_byte_values_roundtrip(state_store: StateStore) -> None:
    value = bytes(range(256))
    state_store.put("bin:put", value, LONG)
    assert state_store.get("bin:put") == value
    assert state_store.add_if_absent("bin:add", value, LONG)
    assert state_store.take("bin:add") == value


def test_empty_value_is_a_value_not_absence(state_store: StateStore) -> None:
    state_store.put("empty", b"", LONG)
    assert state_store.get("empty") == b""
    assert state_store.add_if_absent("empty", b"x", LONG) is False
    assert state_store.take("empty") == b""
    assert state_store.take("empty") is None


def test_one_mebibyte_value_roundtrips(state_store: StateStore) -> None:
    value = bytes(range(256)) * 4096
    assert len(value) == 1024 * 1024
    state_store.put("big", value, LONG)
    assert state_store.get("big") == value
    assert state_store.take("big") == value


def test_unicode_keys_are_distinct(state_store: StateStore) -> None:
    state_store.put("txn:é", b"1", LONG)
    state_store.put("txn:e", b"2", LONG)
    assert state_store.get("txn:é") == b"1"


# --- take --------------------------------------------------------------------------------------


def test_take_returns_the_value_exactly_once(state_store: StateStore) -> None:
    state_store.put("code:1", b"grant", LONG)
    assert state_store.take("code:1") == b"grant"
    assert state_store.take("code:1") is None
    assert state_store.get("code:1") is None


def test_take_of_missing_key_is_none(state_store: StateStore) -> None:
    assert state_store.take("code:missing") is None


def test_take_of_expired_value_is_none(state_store: StateStore, state_expire: Expire) -> None:
    state_store.put("code:1", b"grant", SHORT)
    state_expire(SHORT + MARGIN)
    assert state_store.take("code:1") is None


# --- take_if_prefixed -------------------------------------------------------------------------


def test_take_if_prefixed_takes_a_matching_value_exactly_once(state_store: StateStore) -> None:
    state_store.put("txn:1", b"owner-a|payload", LONG)
    assert state_store.take_if_prefixed("txn:1", b"owner-a|") == (b"owner-a|payload", True)
    assert state_store.take_if_prefixed("txn:1", b"owner-a|") == (None, False)
    assert state_store.get("txn:1") is None


def test_take_if_prefixed_leaves_a_value_that_does_not_match(state_store: StateStore) -> None:
    state_store.put("txn:1", b"owner-a|payload", LONG)
    assert state_store.take_if_prefixed("txn:1", b"owner-b|") == (b"owner-a|payload", False)
    assert state_store.take_if_prefixed("txn:1", b"owner-a|payload and more") == (b"owner-a|payload", False)
    assert state_store.get("txn:1") == b"owner-a|payload", "a mismatch consumes nothing"
    assert state_store.take_if_prefixed("txn:1", b"") == (b"owner-a|payload", True), "every value starts with b''"


def test_take_if_prefixed_of_missing_or_expired_value(state_store: StateStore, state_expire: Expire) -> None:
    assert state_store.take_if_prefixed("txn:missing", b"x") == (None, False)
    state_store.put("txn:short", b"x1", SHORT)
    state_expire(SHORT + MARGIN)
    assert state_store.take_if_prefixed("txn:short", b"x") == (None, False)


def test_take_if_prefixed_compares_bytes_exactly(state_store: StateStore) -> None:
    value = bytes(range(256))
    state_store.put("bin", value, LONG)
    assert state_store.take_if_prefixed("bin", bytes(range(1, 9))) == (value, False)
    assert state_store.take_if_prefixed("bin", bytes(range(8))) == (value, True)


def test_take_if_prefixed_has_exactly_one_winner(state_store: StateStore) -> None:
    state_store.put("txn:race", b"mine:1", LONG)
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: state_store.take_if_prefixed("txn:race", b"mine:"), range(32)))
    assert sum(1 for _, taken in outcomes if taken) == 1
    assert all(value in (None, b"mine:1") for value, _ in outcomes)


# --- kept_since --------------------------------------------------------------------------------


def test_kept_since_is_the_first_callers_time_and_stays(state_store: StateStore) -> None:
    assert state_store.kept_since(1_000.0) == 1_000.0
    assert state_store.kept_since(2_000.0) == 1_000.0  # later callers (other replicas) read the same start


# --- add_if_absent -----------------------------------------------------------------------------


def test_add_if_absent_true_then_false_then_true_after_expiry(
    state_store: StateStore, state_expire: Expire
) -> None:
    assert state_store.add_if_absent("replay:a", b"first", SHORT) is True
    assert state_store.add_if_absent("replay:a", b"second", SHORT) is False
    assert state_store.get("replay:a") == b"first", "a losing add does not overwrite"
    state_expire(SHORT + MARGIN)
    assert state_store.add_if_absent("replay:a", b"third", LONG) is True
    assert state_store.get("replay:a") == b"third"


def test_add_if_absent_after_take_or_delete_succeeds(state_store: StateStore) -> None:
    assert state_store.add_if_absent("k", b"1", LONG)
    state_store.take("k")
    assert state_store.add_if_absent("k", b"2", LONG)
    state_store.delete("k")
    assert state_store.add_if_absent("k", b"3", LONG)


def test_add_if_absent_loses_to_put(state_store: StateStore) -> None:
    state_store.put("k", b"put", LONG)
    assert state_store.add_if_absent("k", b"add", LONG) is False


# --- put_all_unless ----------------------------------------------------------------------------


def test_put_all_unless_writes_every_put_when_the_guard_is_absent(
    state_store: StateStore, state_expire: Expire
) -> None:
    assert state_store.put_all_unless("deny:g", [("grant:g", b"g", LONG), ("rt:t", b"t", SHORT)]) is True
    assert (state_store.get("grant:g"), state_store.get("rt:t")) == (b"g", b"t")
    assert state_store.get("deny:g") is None, "the guard is only read"
    state_expire(SHORT + MARGIN)
    assert (state_store.get("grant:g"), state_store.get("rt:t")) == (b"g", None), "each put keeps its own ttl"


def test_put_all_unless_writes_nothing_when_the_guard_is_live(
    state_store: StateStore, state_expire: Expire
) -> None:
    state_store.put("grant:g", b"old", LONG)
    state_store.put("deny:g", b"1", SHORT)
    assert state_store.put_all_unless("deny:g", [("grant:g", b"new", LONG), ("rt:t", b"t", LONG)]) is False
    assert (state_store.get("grant:g"), state_store.get("rt:t")) == (b"old", None)
    state_expire(SHORT + MARGIN)  # an expired guard no longer blocks
    assert state_store.put_all_unless("deny:g", [("grant:g", b"new", LONG)]) is True
    assert state_store.get("grant:g") == b"new"


def test_put_all_unless_keeps_order_and_binary_values(state_store: StateStore) -> None:
    value = bytes(range(256))
    assert state_store.put_all_unless("guard", [("k", b"first", LONG), ("k", value, LONG)]) is True
    assert state_store.get("k") == value


def test_put_all_unless_sees_what_an_open_batch_holds(state_store: StateStore) -> None:
    with state_store.batch():
        state_store.put("deny:g", b"1", LONG)
        assert state_store.put_all_unless("deny:g", [("grant:g", b"g", LONG)]) is False
    assert state_store.get("grant:g") is None


def test_put_all_unless_refuses_a_bad_ttl_and_writes_nothing(state_store: StateStore) -> None:
    with pytest.raises(ValueError):
        state_store.put_all_unless("guard", [("a", b"1", LONG), ("b", b"2", -1.0)])
    assert state_store.get("a") is None


def test_put_all_unless_against_a_concurrent_guard_write_is_all_or_nothing(state_store: StateStore) -> None:
    """Racing writers of the guard: every attempt either wrote all of its puts or none of them."""
    def attempt(i: int) -> bool:
        if i % 2:
            state_store.put("deny:g", b"1", LONG)
            return False
        return state_store.put_all_unless("deny:g", [(f"a:{i}", b"1", LONG), (f"b:{i}", b"1", LONG)])

    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(attempt, range(40)))
    for i in range(0, 40, 2):
        written = (state_store.get(f"a:{i}") is not None, state_store.get(f"b:{i}") is not None)
        assert written == (won[i], won[i])


# --- incr --------------------------------------------------------------------------------------


def test_incr_counts_from_one(state_store: StateStore) -> None:
    assert [state_store.incr("rate:ip", LONG) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert state_store.get("rate:ip") == b"5"


def test_incr_window_starts_with_first_increment(state_store: StateStore, state_expire: Expire) -> None:
    assert state_store.incr("rate:ip", SHORT) == 1
    # A later increment with a longer ttl must not extend the window.
    assert state_store.incr("rate:ip", LONG) == 2
    state_expire(SHORT + MARGIN)
    assert state_store.get("rate:ip") is None
    assert state_store.incr("rate:ip", LONG) == 1


def test_incr_counters_are_independent(state_store: StateStore) -> None:
    state_store.incr("rate:a", LONG)
    state_store.incr("rate:a", LONG)
    assert state_store.incr("rate:b", LONG) == 1


def test_incr_of_a_non_integer_value_is_a_store_error(state_store: StateStore) -> None:
    state_store.put("rate:x", b"not a number", LONG)
    with pytest.raises(StateStoreError) as info:
        state_store.incr("rate:x", LONG)
    assert info.value.message == "The state store is unavailable."


# --- delete / ping -----------------------------------------------------------------------------


def test_delete_removes_the_value(state_store: StateStore) -> None:
    state_store.put("k", b"v", LONG)
    state_store.delete("k")
    assert state_store.get("k") is None


def test_delete_of_missing_key_is_a_no_op(state_store: StateStore) -> None:
    state_store.delete("never-there")


def test_ping_is_true_when_the_backend_answers(state_store: StateStore) -> None:
    assert state_store.ping() is True


# --- ttl validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, 0.0, -1, -0.001, math.nan, math.inf])
def test_non_positive_or_non_finite_ttl_is_refused(state_store: StateStore, ttl: float) -> None:
    with pytest.raises(ValueError):
        state_store.put("k", b"v", ttl)
    with pytest.raises(ValueError):
        state_store.add_if_absent("k", b"v", ttl)
    with pytest.raises(ValueError):
        state_store.incr("k", ttl)
    assert state_store.get("k") is None


def test_sub_millisecond_ttl_is_accepted(state_store: StateStore) -> None:
    state_store.put("k", b"v", 0.0001)
    assert state_store.add_if_absent("k2", b"v", 0.0001) is True


# --- batch: puts held and written together -------------------------------------------------


def test_batch_writes_its_puts_when_the_block_ends(state_store: StateStore) -> None:
    seen_inside: list[bytes | None] = []

    def other_thread_reads() -> None:
        seen_inside.append(state_store.get("sess:1"))

    with state_store.batch():
        state_store.put("sess:1", b"s", LONG)
        state_store.put("code:1", b"c", LONG)
        reader = threading.Thread(target=other_thread_reads)
        reader.start()
        reader.join()
    assert seen_inside == [None], "nothing is written before the block ends"
    assert state_store.get("sess:1") == b"s"
    assert state_store.get("code:1") == b"c"


def test_batch_that_raises_writes_nothing(state_store: StateStore) -> None:
    with pytest.raises(RuntimeError), state_store.batch():
        state_store.put("sess:2", b"s", LONG)
        raise RuntimeError("issuing failed")
    assert state_store.get("sess:2") is None
    state_store.put("sess:2b", b"after", LONG)  # the failed block left no batch open
    assert state_store.get("sess:2b") == b"after"


def test_batch_keeps_order_and_the_last_put_wins(state_store: StateStore) -> None:
    with state_store.batch():
        state_store.put("k", b"first", LONG)
        state_store.put("k", b"second", LONG)
    assert state_store.get("k") == b"second"


def test_reads_and_other_writes_in_a_batch_see_its_puts(state_store: StateStore) -> None:
    with state_store.batch():
        state_store.put("a", b"1", LONG)
        assert state_store.get("a") == b"1"
        state_store.put("b", b"2", LONG)
        assert state_store.take("b") == b"2"
        state_store.put("c", b"3", LONG)
        assert state_store.add_if_absent("c", b"x", LONG) is False
        state_store.put("d", b"4", LONG)
        state_store.delete("d")
        state_store.put("e", b"e:5", LONG)
        assert state_store.take_if_prefixed("e", b"e:") == (b"e:5", True)
    assert state_store.get("b") is None
    assert state_store.get("e") is None
    assert state_store.get("c") == b"3"
    assert state_store.get("d") is None


def test_nested_batches_write_at_the_outermost_end(state_store: StateStore) -> None:
    seen: list[bytes | None] = []
    with state_store.batch():
        with state_store.batch():
            state_store.put("n", b"v", LONG)
        reader = threading.Thread(target=lambda: seen.append(state_store.get("n")))
        reader.start()
        reader.join()
    assert seen == [None]
    assert state_store.get("n") == b"v"


def test_batched_puts_keep_their_own_ttls(state_store: StateStore, state_expire: Expire) -> None:
    with state_store.batch():
        state_store.put("short", b"s", SHORT)
        state_store.put("long", b"l", LONG)
    state_expire(SHORT + MARGIN)
    assert state_store.get("short") is None
    assert state_store.get("long") == b"l"


def test_batch_refuses_a_bad_ttl_at_the_put(state_store: StateStore) -> None:
    with state_store.batch():
        with pytest.raises(ValueError):
            state_store.put("bad", b"v", 0)
        state_store.put("good", b"v", LONG)
    assert state_store.get("bad") is None
    assert state_store.get("good") == b"v"


def test_batches_of_different_threads_are_separate(state_store: StateStore) -> None:
    def work(i: int) -> list[str]:
        with state_store.batch():
            for r in range(ROUNDS):
                state_store.put(f"t{i}:{r}", str(i).encode(), LONG)
        return []

    _race(THREADS, work)
    for i in range(THREADS):
        for r in range(ROUNDS):
            assert state_store.get(f"t{i}:{r}") == str(i).encode()


# --- concurrency: exactly one winner -----------------------------------------------------------

THREADS = 16
ROUNDS = 25


def _race(n: int, work: Callable[[int], list[str]]) -> list[list[str]]:
    """Run work(i) on n threads released together by a barrier; returns each thread's result."""
    barrier = threading.Barrier(n)

    def run(i: int) -> list[str]:
        barrier.wait(timeout=10)
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run, i) for i in range(n)]
        return [f.result(timeout=30) for f in futures]


def test_concurrent_take_has_exactly_one_winner(state_store: StateStore) -> None:
    keys = [f"code:{r}" for r in range(ROUNDS)]
    for k in keys:
        state_store.put(k, k.encode(), LONG)

    def work(_: int) -> list[str]:
        return [k for k in keys if state_store.take(k) is not None]

    wins = [k for per_thread in _race(THREADS, work) for k in per_thread]
    assert sorted(wins) == sorted(keys), "every key taken exactly once"


def test_concurrent_add_if_absent_has_exactly_one_winner(state_store: StateStore) -> None:
    keys = [f"replay:{r}" for r in range(ROUNDS)]

    def work(i: int) -> list[str]:
        return [k for k in keys if state_store.add_if_absent(k, str(i).encode(), LONG)]

    results = _race(THREADS, work)
    wins = [k for per_thread in results for k in per_thread]
    assert sorted(wins) == sorted(keys), "every key added exactly once"
    for i, per_thread in enumerate(results):
        for k in per_thread:
            assert state_store.get(k) == str(i).encode(), "the winner's value is the one stored"


def test_concurrent_incr_loses_no_increment(state_store: StateStore) -> None:
    per_thread = 20

    def work(_: int) -> list[str]:
        return [str(state_store.incr("rate:shared", LONG)) for _ in range(per_thread)]

    seen = [int(v) for r in _race(THREADS, work) for v in r]
    assert sorted(seen) == list(range(1, THREADS * per_thread + 1))

"""The Redis StateStore: short-lived state shared by every worker and replica.

Each operation is a single atomic Redis command (or one Lua script), so single-use values are consumed
exactly once across processes: `take` is GETDEL, `take_if_prefixed` one script (GET, and DEL on a match),
`add_if_absent` is SET NX PX, `put_all_unless` one script (EXISTS, then the SETs), and `incr` starts its
window with the first increment inside one script. A `batch()` of puts is one MULTI/EXEC. Never a KEYS
scan, never get-then-delete across round trips.
Every Redis failure becomes `StateStoreError` with a safe message; the Redis detail stays private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from broker.errors import StateStoreError
from broker.store.state import Put, PutBatches, check_ttl

__all__ = ["RedisStateStore"]

_UNAVAILABLE = "The state store is unavailable."
# no TTL: it lives as long as the store keeps its data (see StateStore.kept_since)
KEPT_SINCE_KEY = "store:kept-since"

# INCR, and start the window only with the first increment (or repair a counter that lost its TTL).
_INCR_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""


# GET, and DEL only when the value starts with ARGV[1]: {1, value} taken, {0, value} left, nil when absent.
_TAKE_IF_PREFIXED = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {1, v}
end
return {0, v}
"""


# When KEYS[1] is absent, SET KEYS[2..n] to ARGV[2i-1] with PX ARGV[2i] and return 1; otherwise write nothing, 0.
_PUT_ALL_UNLESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 3], 'PX', ARGV[2 * i - 2])
end
return 1
"""


def _ttl_ms(ttl: float) -> int:
    """Seconds (float) -> whole milliseconds for PX, at least 1 ms."""
    return max(1, math.ceil(check_ttl(ttl) * 1000))


class RedisStateStore:
    """StateStore on a Redis server; keys are namespaced with `prefix`."""

    def __init__(self, client: redis.Redis, *, prefix: str = "broker:") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisStateStore needs a client with decode_responses=False (values are bytes)")
        self._client = client
        self._prefix = prefix
        self._incr_script = client.register_script(_INCR_WINDOW)
        self._take_if_script = client.register_script(_TAKE_IF_PREFIXED)
        self._put_all_unless_script = client.register_script(_PUT_ALL_UNLESS)
        self._batches = PutBatches(self._put_all)

    @classmethod
    def from_url(cls, url: str, *, socket_timeout: float = 2.0, prefix: str = "broker:") -> RedisStateStore:
        """A store with its own client: bounded connect/read timeouts, one immediate retry on a
        dropped connection (e.g. after a server restart), no retry on timeouts."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(client, prefix=prefix)

    @property
    def client(self) -> redis.Redis:
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    # --- StateStore ---------------------------------------------------------------------------

    def put(self, key: str, value: bytes, ttl: float) -> None:
        if self._batches.hold(key, value, ttl):
            return
        px = _ttl_ms(ttl)
        try:
            self._client.set(self._key(key), value, px=px)
        except RedisError as exc:
            self._fail("put", exc)

    def batch(self) -> AbstractContextManager[None]:
        return self._batches.batch()

    def _put_all(self, puts: list[Put]) -> None:
        """One round trip: MULTI, the SETs in order, EXEC (all or none)."""
        if len(puts) == 1:
            key, value, ttl = puts[0]
            try:
                self._client.set(self._key(key), value, px=_ttl_ms(ttl))
            except RedisError as exc:
                self._fail("put", exc)
            return
        pipe = self._client.pipeline(transaction=True)
        for key, value, ttl in puts:
            pipe.set(self._key(key), value, px=_ttl_ms(ttl))
        try:
            pipe.execute()
        except RedisError as exc:
            self._fail("batch put", exc)

    def get(self, key: str) -> bytes | None:
        self._batches.flush()
        try:
            value = self._client.get(self._key(key))
        except RedisError as exc:
            self._fail("get", exc)
        return self._bytes(value)

    def take(self, key: str) -> bytes | None:
        self._batches.flush()
        try:
            value = self._client.getdel(self._key(key))
        except RedisError as exc:
            self._fail("take", exc)
        return self._bytes(value)

    def take_if_prefixed(self, key: str, prefix: bytes) -> tuple[bytes | None, bool]:
        self._batches.flush()
        try:
            out: Any = self._take_if_script(keys=[self._key(key)], args=[bytes(prefix)])
        except RedisError as exc:
            self._fail("take_if_prefixed", exc)
        if out is None:
            return None, False
        taken, value = out
        return self._bytes(value), bool(taken)

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        px = _ttl_ms(ttl)
        self._batches.flush()
        try:
            stored = self._client.set(self._key(key), value, px=px, nx=True)
        except RedisError as exc:
            self._fail("add_if_absent", exc)
        return bool(stored)

    def put_all_unless(self, guard: str, puts: Sequence[Put]) -> bool:
        keys = [self._key(guard)]
        args: list[bytes | int] = []
        for key, value, ttl in puts:
            keys.append(self._key(key))
            args += [bytes(value), _ttl_ms(ttl)]
        self._batches.flush()
        try:
            out: Any = self._put_all_unless_script(keys=keys, args=args)
        except RedisError as exc:
            self._fail("put_all_unless", exc)
        return bool(out)

    def kept_since(self, now: float) -> float:
        key = self._key(KEPT_SINCE_KEY)
        try:
            raw = self._client.get(key)
            if raw is None:  # a new store, or one that lost its data: it keeps from now on (first writer wins)
                self._client.set(key, repr(now), nx=True)
                raw = self._client.get(key)
        except RedisError as exc:
            self._fail("kept_since", exc)
        try:
            return float(raw) if isinstance(raw, bytes | str) else now
        except ValueError:
            return now

    def incr(self, key: str, ttl: float) -> int:
        px = _ttl_ms(ttl)
        self._batches.flush()
        try:
            count: Any = self._incr_script(keys=[self._key(key)], args=[px])
        except RedisError as exc:
            self._fail("incr", exc)
        return int(count)

    def delete(self, key: str) -> None:
        self._batches.flush()
        try:
            self._client.delete(self._key(key))
        except RedisError as exc:
            self._fail("delete", exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (RedisError, OSError):
            return False

    # --- helpers ------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self._prefix + key

    @staticmethod
    def _bytes(value: object) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        raise StateStoreError(_UNAVAILABLE, detail=f"redis returned {type(value).__name__}, expected bytes")

    @staticmethod
    def _fail(op: str, exc: RedisError) -> NoReturn:
        # The key is left out of the detail on purpose: keys carry transaction ids and code digests.
        raise StateStoreError(_UNAVAILABLE, detail=f"redis {op} failed: {type(exc).__name__}: {exc}") from exc

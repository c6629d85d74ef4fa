"""The configuration generation: a random token replaced after every configuration write, which tells every
worker and replica whether its cached configuration is still current (broker.store.cached).

Three sources:
- `DatabaseGeneration` (without Redis) keeps the token in a database row and reads it once per request, so
  that a CLI process writing the same database (`broker config apply`) is seen by a running server at once.
- `StateGeneration` keeps the token in the StateStore and reads it once per request (a dict lookup with the
  in-process store; a Redis GET otherwise).
- `RedisGeneration` also announces every change on a Redis pub/sub channel, in the same MULTI/EXEC as the
  new token, and keeps the last token it heard. A request drains the notifications already waiting on the
  subscription socket (a non-blocking read, no round trip) before it uses the token. Redis writes the
  notification to every subscriber in the same event-loop turn as its reply to the writer, so by the time
  anyone can act on a write's response, the notification is already waiting at every replica: a change is
  seen by the next request everywhere, without a GET per request. If the subscription is lost (Redis
  restarted, connection dropped) it is re-established and the token re-read with a GET; the token is also
  re-read at least every `verify_every` seconds, which bounds staleness even on a silently dead connection.

Scopes: a change may name what it touched (for the config cache, the tenants whose entries it changed), so
that a replica drops only those entries. `poll()` returns the current token and the scopes changed since the
previous poll, or None ("everything") whenever that cannot be known for certain: a change announced without
scopes (or by an earlier version), a token that no notification explained (a lost notification, a new
subscription, a GET without one), or a process's first poll. Unsure always means everything.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.exceptions import RedisError

from broker.errors import StateStoreError
from broker.ports import StateStore
from broker.store.state_redis import RedisStateStore

GENERATION_KEY = "config:generation"
GENERATION_TTL = 400 * 86400.0
OWN_NOTIFICATION_WAIT = 0.05  # seconds a writer waits for its own notification before assuming the worst
_V2 = re.compile(rb"v2:([0-9a-f]{24})((?:\n[^\n]+)*)")

Scopes = frozenset[str] | None  # None: everything


def _new_token() -> bytes:
    return secrets.token_hex(12).encode("ascii")


def _announcement(token: bytes, scopes: Scopes) -> bytes:
    """The pub/sub message: `v2:<token>` then one scope per line (no lines: everything)."""
    lines = sorted(scopes) if scopes is not None else []
    if any(not s or "\n" in s for s in lines):
        raise ValueError("a scope is a non-empty string without line breaks")
    return b"v2:" + token + b"".join(b"\n" + s.encode("utf-8") for s in lines)


def parse_announcement(data: bytes) -> tuple[bytes, Scopes]:
    """(token, scopes) of a notification; a message of an earlier version is its own token, for everything."""
    m = _V2.fullmatch(data)
    if m is None:
        return data, None
    rest = m.group(2)
    return m.group(1), frozenset(s.decode("utf-8") for s in rest.split(b"\n")[1:]) if rest else None


class Generation(Protocol):
    def current(self) -> bytes | None:
        """The token of the newest configuration (None before the first write)."""
        ...

    def poll(self) -> tuple[bytes | None, Scopes]:
        """The current token, and the scopes changed since the previous poll (empty: nothing changed; None:
        anything may have). One consumer per instance: each poll consumes what it reports."""
        ...

    def bump(self, scopes: Scopes = None) -> None:
        """Announce a configuration change (after its transaction has committed) of `scopes` (None: all)."""
        ...


class _Unpolled:
    pass


_UNPOLLED = _Unpolled()


class StateGeneration:
    """The token in the StateStore, read on every call. A token alone cannot say what changed (a write may
    have overwritten another's), so any change is "everything": this serves the in-process store of a single
    process, where the writer has already dropped what it changed."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._polled: bytes | None | _Unpolled = _UNPOLLED

    def current(self) -> bytes | None:
        return self._state.get(GENERATION_KEY)

    def poll(self) -> tuple[bytes | None, Scopes]:
        with self._lock:
            token = self._state.get(GENERATION_KEY)
            if token == self._polled:
                return token, frozenset()
            self._polled = token
            return token, None

    def bump(self, scopes: Scopes = None) -> None:
        self._state.put(GENERATION_KEY, _new_token(), ttl=GENERATION_TTL)


class GenerationTable(Protocol):
    def config_generation(self) -> bytes | None: ...
    def set_config_generation(self, token: bytes) -> None: ...


class DatabaseGeneration:
    """The token in the database, read on every poll: for deployments without Redis, where the in-process
    StateStore is not shared with the other processes that write configuration (`broker config apply`,
    `broker keys rotate`, ... run beside the server). Like StateGeneration, a token alone cannot say what
    changed, so any change is "everything"."""

    def __init__(self, table: GenerationTable) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._polled: bytes | None | _Unpolled = _UNPOLLED

    def current(self) -> bytes | None:
        return self._table.config_generation()

    def poll(self) -> tuple[bytes | None, Scopes]:
        with self._lock:
            token = self._table.config_generation()
            if token == self._polled:
                return token, frozenset()
            self._polled = token
            return token, None

    def bump(self, scopes: Scopes = None) -> None:
        self._table.set_config_generation(_new_token())


class RedisGeneration:
    """The token in Redis, followed through pub/sub (see the module docstring). Thread-safe.

    Without a live subscription (Redis restarting, or a subscribe that failed) every read is a plain GET,
    as with StateGeneration, and a new subscription is tried at most once per `retry_every` seconds, by one
    thread at a time, without holding up the others."""

    def __init__(self, store: RedisStateStore, *, verify_every: float = 1.0, retry_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._client: redis.Redis = store.client
        self._channel = store.prefix + GENERATION_KEY
        self._verify_every = verify_every
        self._retry_every = retry_every
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._subscribing = threading.Lock()  # one subscribe attempt at a time, outside _lock
        self._pubsub: Any = None  # redis.client.PubSub while subscribed
        self._value: bytes | None = None
        self._verify_at = float("-inf")  # the periodic GET is due at this time
        self._reread = True  # GET before the next use (new subscription, or after our own bump)
        self._reconnected = False  # set by redis-py when it re-opens the subscription's connection
        self._subscribe_after = float("-inf")
        # poll() bookkeeping, under _lock: scopes announced since the last poll (None: unknown, everything)
        self._pending: set[str] | None = set()
        self._polled: bytes | None | _Unpolled = _UNPOLLED
        self._expect: bytes | None = None  # our own bump's token, until its notification arrives
        self._polling = threading.Lock()  # one poll at a time: each consumes what it reports

    def current(self) -> bytes | None:
        with self._lock:
            if self._pubsub is not None:
                try:
                    alive = self._drain()
                except (RedisError, OSError, ValueError):
                    alive = False
                if not alive:
                    self._unsubscribe()
                elif not self._reread and self._clock() < self._verify_at:
                    return self._value
                else:
                    return self._reread_locked()
        if self._clock() >= self._subscribe_after and self._subscribing.acquire(blocking=False):
            try:
                pubsub = self._new_subscription()
                if pubsub is None:
                    self._subscribe_after = self._clock() + self._retry_every
                else:
                    with self._lock:
                        self._unsubscribe()
                        self._pubsub = pubsub
                        self._reconnected = False
                        self._reread = True
                        return self._reread_locked()
            finally:
                self._subscribing.release()
        return self._store.get(GENERATION_KEY)  # no subscription: a GET per read

    def poll(self) -> tuple[bytes | None, Scopes]:
        with self._polling:
            token = self.current()
            with self._lock:
                if token == self._polled:
                    return token, frozenset()
                explained = (not isinstance(self._polled, _Unpolled) and self._pubsub is not None
                             and token == self._value and self._pending is not None)
                changes = frozenset(self._pending) if explained and self._pending is not None else None
                self._polled, self._pending = token, set()
                return token, changes

    def bump(self, scopes: Scopes = None) -> None:
        token = _new_token()
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self._channel, token, px=int(GENERATION_TTL * 1000))
        pipe.publish(self._channel, _announcement(token, scopes))
        try:
            pipe.execute()
        except RedisError as exc:
            raise StateStoreError("The state store is unavailable.",
                                  detail=f"redis generation bump failed: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._reread = True  # this process's next read takes the token from Redis
            self._expect = token

    def close(self) -> None:
        with self._lock:
            self._unsubscribe()

    # -- subscription ------------------------------------------------------------------------------

    def _new_subscription(self) -> Any:
        """A confirmed subscription to the channel, or None. Confirmed first, read after: no change made
        between the two can be missed."""
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel)
            confirmed = pubsub.get_message(timeout=2.0)
            if confirmed is None or confirmed.get("type") != "subscribe":
                raise RedisError("no subscribe confirmation")
        except (RedisError, OSError, ValueError):
            pubsub.close()
            return None
        pubsub.connection.register_connect_callback(self._on_reconnect)  # held weakly by redis-py
        return pubsub

    def _on_reconnect(self, _connection: Any) -> None:
        self._reconnected = True

    # -- under _lock ---------------------------------------------------------------------------------

    def _drain(self) -> bool:
        """Apply the notifications already received; False if the subscription is not usable, or was
        re-established by redis-py behind our back (notifications sent meanwhile are lost)."""
        while True:
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
            if self._reconnected:
                return False
            if message is None:
                return bool(self._pubsub.subscribed)
            self._apply(message)

    def _reread_locked(self) -> bytes | None:
        """The token by GET, while subscribed: after a new subscription or our own bump, and periodically."""
        periodic = not self._reread
        if self._expect is not None:
            self._await_own_notification()
        try:
            value = self._store.get(GENERATION_KEY)
        except StateStoreError:
            self._unsubscribe()  # the other threads go on without waiting for this lock
            raise
        if periodic and value != self._value:
            # A token no notification brought (or one still in flight): the subscription may be dead.
            # Take a new one on the next read; costs one SUBSCRIBE when the notification was only late.
            self._pending = None
            self._unsubscribe()
            return value
        if value != self._value:
            self._pending = None  # a change no notification explained (new subscription, or still in flight)
        self._value = value
        self._reread = False
        self._verify_at = self._clock() + self._verify_every
        return value

    def _await_own_notification(self) -> None:
        """After our own bump, give its notification a moment to arrive (Redis wrote it before answering the
        bump), so that its scopes are known here too; if it does not come, the poll says "everything"."""
        deadline = time.monotonic() + OWN_NOTIFICATION_WAIT
        while self._expect is not None and self._pubsub is not None and not self._reconnected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._apply(self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining))
            except (RedisError, OSError, ValueError):
                break
        self._expect = None

    def _apply(self, message: Any) -> None:
        """One notification: the token it brings, and its scopes added to what the next poll reports."""
        if message is None or message.get("type") != "message" or not isinstance(message.get("data"), bytes):
            return
        token, scopes = parse_announcement(message["data"])
        self._value = token
        if scopes is None or self._pending is None:
            self._pending = None
        else:
            self._pending |= scopes
        if token == self._expect:
            self._expect = None

    def _unsubscribe(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            self._reconnected = False
            try:
                if pubsub.connection is not None:  # pooled connections are reused: leave no callback behind
                    pubsub.connection.deregister_connect_callback(self._on_reconnect)
                pubsub.close()
            except (RedisError, OSError):
                pass


def generation_for(state: StateStore, database: GenerationTable | None = None) -> Generation:
    """Pub/sub-followed generation on Redis; otherwise the token in the database when there is one (the
    in-process StateStore is not shared with other processes), else in the StateStore."""
    if isinstance(state, RedisStateStore):
        return RedisGeneration(state)
    if database is not None:
        return DatabaseGeneration(database)
    return StateGeneration(state)

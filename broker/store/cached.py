"""A read-through cache in front of the SQL ConfigStore, kept exact across replicas by a generation token.

Every configuration write (admin API, `config apply`, key rotation) replaces a random generation token
after its transaction commits (broker.store.generation: in the StateStore, and with Redis also announced
over pub/sub). A request takes that token once (the web layer calls `begin_request()`; with Redis it is the
last announced token, after draining the notifications already received, with no round trip) and uses only
entries loaded under it, so a change made on any replica is seen by every other replica from its next
request on, and one request sees one consistent generation.

A token update that fails (the state store unreachable just after the write committed) fails the write's
request, and is owed: this process retries it at the start of each later request until it goes through.
Entries also expire after `max_age` seconds (10 minutes), the backstop should an owed update die with its
process. The backstop is long on purpose: every expiry is a reload of that tenant in that worker (a few ms),
and with 10,000 tenants a short one would make most logins reload.

Only the login/token hot path reads through the cache (tenants, connections, apps, signing keys); audit
events, metadata refresh state and last-login stamps go straight to the database.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from broker import logs
from broker.model import AdminKey, App, AuditEvent, Connection, SigningKey, Tenant
from broker.ports import AppDraft, AuditPage, ConnectionDraft, MetadataState, NewSigningKey, StateStore
from broker.store.config_repo import SqlConfigStore
from broker.store.generation import Generation, generation_for

T = TypeVar("T")
log = logs.get("broker.store.cached")
_MISSING = object()


class CachedConfigStore:
    def __init__(self, inner: SqlConfigStore, state: StateStore, *, max_age: float = 600.0,
                 max_entries: int = 200_000, clock: Callable[[], float] = time.monotonic,
                 generation: Generation | None = None) -> None:
        self.inner = inner
        self.state = state
        self.generation = generation or generation_for(state)
        self.max_age = max_age
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], tuple[bytes | None, float, Any]] = OrderedDict()
        self._owed = False  # a generation bump failed after its write committed: retried by begin_request()
        self._in_atomic: ContextVar[bool] = ContextVar(f"broker_cache_atomic_{id(self)}", default=False)
        self._dirty: ContextVar[bool] = ContextVar(f"broker_cache_dirty_{id(self)}", default=False)
        # one generation fetch per request: set by begin_request(), which the web layer calls first
        self._memo: ContextVar[tuple[bytes | None] | tuple[()] | None] = ContextVar(
            f"broker_cache_memo_{id(self)}", default=None)

    # -- generation ------------------------------------------------------------------------------

    def begin_request(self) -> None:
        """Start a request scope: its first cached read fetches the generation, later reads reuse it. An owed
        generation bump is retried first."""
        if self._owed:
            self._retry_bump()
        self._memo.set(())

    def _retry_bump(self) -> None:
        try:
            self.generation.bump()
        except Exception as exc:  # noqa: BLE001 - still unreachable: the request goes on, the next one retries
            log.warning("config_generation_bump_owed", extra={"error": exc.__class__.__name__})
            return
        self._owed = False
        log.info("config_generation_bump_retried")

    def end_request(self) -> None:
        """Leave the request scope: outside one, every cached read fetches the generation."""
        self._memo.set(None)

    def _generation(self) -> bytes | None:
        memo = self._memo.get()
        if memo:
            return memo[0]
        gen = self.generation.current()
        if memo is not None:
            self._memo.set((gen,))
        return gen

    def invalidate(self) -> None:
        """Announce a configuration change to every replica (called after a write commits)."""
        if self._in_atomic.get():
            self._dirty.set(True)
            return
        with self._lock:
            self._entries.clear()
        if self._memo.get() is not None:
            self._memo.set(())
        try:
            self.generation.bump()
        except Exception:
            self._owed = True  # the write has committed: other replicas must still hear of it
            raise

    def _cached(self, key: tuple[Any, ...], load: Callable[[], T]) -> T:
        if self._in_atomic.get():
            return load()
        gen = self._generation()
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == gen and now - hit[1] < self.max_age:
                self._entries.move_to_end(key)
                value: T = hit[2]
                return value
        value = load()
        with self._lock:
            self._entries[key] = (gen, now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def _write(self, fn: Callable[[], T]) -> T:
        result = fn()
        self.invalidate()
        return result

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._in_atomic.get():
            yield
            return
        token = self._in_atomic.set(True)
        dirty = self._dirty.set(False)
        try:
            with self.inner.atomic():
                yield
        finally:
            changed = self._dirty.get()
            self._in_atomic.reset(token)
            self._dirty.reset(dirty)
        if changed:
            self.invalidate()

    def ping(self) -> bool:
        return self.inner.ping()

    # -- cached reads ----------------------------------------------------------------------------

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        return self._cached(("tenant_slug", slug), lambda: self.inner.tenant_by_slug(slug))

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self._cached(("tenant_id", tenant_id), lambda: self.inner.tenant_by_id(tenant_id))

    def connection(self, tenant_id: str, slug: str) -> Connection | None:
        return self._cached(("connection", tenant_id, slug), lambda: self.inner.connection(tenant_id, slug))

    def connections(self, tenant_id: str) -> Sequence[Connection]:
        return self._cached(("connections", tenant_id), lambda: tuple(self.inner.connections(tenant_id)))

    def app(self, tenant_id: str, client_id: str) -> App | None:
        return self._cached(("app", tenant_id, client_id), lambda: self.inner.app(tenant_id, client_id))

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        return self._cached(("keys", tenant_id), lambda: tuple(self.inner.signing_keys(tenant_id)))

    # -- uncached reads --------------------------------------------------------------------------

    def admin_key_by_hash(self, key_hash: str) -> AdminKey | None:
        return self.inner.admin_key_by_hash(key_hash)

    def admin_keys(self, tenant_id: str | None, *, every_tenant: bool = False) -> Sequence[AdminKey]:
        return self.inner.admin_keys(tenant_id, every_tenant=every_tenant)

    def tenants(self) -> Sequence[Tenant]:
        return self.inner.tenants()

    def apps(self, tenant_id: str) -> Sequence[App]:
        return self.inner.apps(tenant_id)

    def metadata_state(self, connection_id: str) -> MetadataState:
        return self.inner.metadata_state(connection_id)

    def last_logins(self, tenant_id: str) -> Mapping[str, float | None]:
        return self.inner.last_logins(tenant_id)

    def audit_page(self, tenant_id: str | None, *, type: str | None, outcome: str | None, limit: int,
                   cursor: str | None) -> AuditPage:
        return self.inner.audit_page(tenant_id, type=type, outcome=outcome, limit=limit, cursor=cursor)

    # -- writes that change configuration (invalidate everywhere) ---------------------------------

    def create_tenant(self, slug: str, name: str, key: NewSigningKey) -> Tenant:
        return self._write(lambda: self.inner.create_tenant(slug, name, key))

    def update_tenant(self, tenant_id: str, *, name: str) -> Tenant:
        return self._write(lambda: self.inner.update_tenant(tenant_id, name=name))

    def delete_tenant(self, tenant_id: str) -> None:
        self._write(lambda: self.inner.delete_tenant(tenant_id))

    def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str) -> AdminKey:
        return self._write(lambda: self.inner.create_admin_key(tenant_id, key_hash, label))

    def delete_admin_key(self, key_id: str, *, tenant_id: str | None) -> None:
        # Admin keys are never cached (every request reads its key): no generation bump needed.
        self.inner.delete_admin_key(key_id, tenant_id=tenant_id)

    def create_connection(self, tenant_id: str, draft: ConnectionDraft) -> Connection:
        return self._write(lambda: self.inner.create_connection(tenant_id, draft))

    def replace_connection(self, connection_id: str, draft: ConnectionDraft) -> Connection:
        return self._write(lambda: self.inner.replace_connection(connection_id, draft))

    def delete_connection(self, connection_id: str) -> None:
        self._write(lambda: self.inner.delete_connection(connection_id))

    def create_app(self, tenant_id: str, client_id: str, draft: AppDraft, secret_hash: str | None) -> App:
        return self._write(lambda: self.inner.create_app(tenant_id, client_id, draft, secret_hash))

    def replace_app(self, app_id: str, draft: AppDraft, secret_hash: str | None) -> App:
        return self._write(lambda: self.inner.replace_app(app_id, draft, secret_hash))

    def delete_app(self, app_id: str) -> None:
        self._write(lambda: self.inner.delete_app(app_id))

    def add_signing_key(self, tenant_id: str, key: NewSigningKey) -> SigningKey:
        return self._write(lambda: self.inner.add_signing_key(tenant_id, key))

    def reseal_all(self) -> int:
        return self._write(self.inner.reseal_all)

    # -- writes that are not configuration -------------------------------------------------------

    def save_metadata_state(self, connection_id: str, state: MetadataState) -> None:
        self.inner.save_metadata_state(connection_id, state)

    def touch_last_logins(self, stamps: Mapping[str, float]) -> None:
        self.inner.touch_last_logins(stamps)

    def record(self, event: AuditEvent) -> None:
        tenant_id = None
        if event.tenant is not None:
            tenant = self.tenant_by_slug(event.tenant)
            tenant_id = tenant.id if tenant is not None else None
        self.inner.record(event, tenant_id=tenant_id)

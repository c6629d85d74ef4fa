"""A read-through cache in front of the SQL ConfigStore, kept exact across replicas by a generation token.

Every configuration write (admin API, `config apply`, key rotation) replaces a random generation token
after its transaction commits (broker.store.generation: with Redis, in Redis and announced over pub/sub;
without it, in the database, so that a CLI process writing beside a running server is seen too). A request
takes that token once (the web layer calls `begin_request()`; with Redis it is the last announced token,
after draining the notifications already received, with no round trip) and uses only entries loaded under
it, so a change made on any replica is seen by every other replica from its next request on, and one request
sees one consistent generation.

A token update that fails (the state store unreachable just after the write committed) does not fail the
write, which has committed (its request answers as it would have, and writes its audit event): it is owed,
logged (`change_not_announced`), and this process retries it at the start of each later request until it
goes through. Entries also expire after `max_age` seconds (10 minutes), the backstop should an owed update
die with its process. The backstop is long on purpose: every expiry is a reload of that tenant in that worker
(a few ms), and with 10,000 tenants a short one would make most logins reload.

Scoped: a write names the tenant it changed (`t:<tenant id>`; creating a tenant also `s:<slug>`, for a
cached "no such tenant"), and replicas that learn of it through a notification drop only that tenant's
entries, so an admin editing one tenant does not make every other tenant's next login reload. Whenever a
replica cannot be sure what changed (broker.store.generation.Generation.poll says None), it drops
everything, as before. Each entry carries the change count of its replica at the start of the request that
loaded it; it is used while no change of its scope (or of everything) has been counted since.

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
from datetime import datetime
from typing import Any, TypeVar

from broker import logs
from broker.errors import StateStoreError
from broker.model import SLUG_RE, AdminKey, App, AuditEvent, Connection, SigningKey, Tenant, unstorable
from broker.ports import AppDraft, AuditPage, ConnectionDraft, MetadataState, NewSigningKey, StateStore
from broker.store.config_repo import SqlConfigStore
from broker.store.generation import Generation, Scopes, generation_for

T = TypeVar("T")
log = logs.get("broker.store.cached")
_MISSING = object()
MAX_SCOPES = 100_000  # scope counters kept; past that they are folded into one "everything" change
MAX_CLIENT_ID = 100  # the length of apps.client_id: no longer one can name an app


def tenant_scope(tenant_id: str) -> str:
    return "t:" + tenant_id


def slug_scope(slug: str) -> str:
    return "s:" + slug


class CachedConfigStore:
    def __init__(self, inner: SqlConfigStore, state: StateStore, *, max_age: float = 600.0,
                 max_entries: int = 200_000, max_misses: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 generation: Generation | None = None) -> None:
        self.inner = inner
        self.state = state
        self.generation = generation or generation_for(state, inner)
        self.max_age = max_age
        self.max_entries = max_entries
        self.max_misses = max_misses
        self._clock = clock
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one poll-and-apply at a time
        # key -> (scope, change count when loaded, loaded at, value)
        self._entries: OrderedDict[tuple[Any, ...], tuple[str, int, float, Any]] = OrderedDict()
        self._misses: OrderedDict[tuple[Any, ...], tuple[str, int, float, Any]] = OrderedDict()
        self._changes = 0  # changes counted in this process (under _lock)
        self._all_changed = 0  # the count at the last change of everything
        self._scope_changed: dict[str, int] = {}  # the count at each scope's last change
        # a bump that failed after its write committed, and the scopes it owes (None: everything)
        self._owed = False
        self._certificates: tuple[int, float, list[tuple[str, str, dict[str, float]]]] | None = None
        self._owed_scopes: Scopes = frozenset()
        self._in_atomic: ContextVar[bool] = ContextVar(f"broker_cache_atomic_{id(self)}", default=False)
        self._dirty: ContextVar[tuple[bool, Scopes]] = ContextVar(f"broker_cache_dirty_{id(self)}",
                                                                  default=(False, frozenset()))
        # one generation poll per request: set by begin_request(), which the web layer calls first
        self._memo: ContextVar[tuple[int] | tuple[()] | None] = ContextVar(
            f"broker_cache_memo_{id(self)}", default=None)

    # -- generation ------------------------------------------------------------------------------

    def begin_request(self) -> None:
        """Start a request scope: its first cached read polls the generation, later reads reuse it. An owed
        generation bump is retried first."""
        if self._owed:
            self._retry_bump()
        self._memo.set(())

    def _retry_bump(self) -> None:
        try:
            self.generation.bump(self._owed_scopes)
        except Exception as exc:  # noqa: BLE001 - still unreachable: the request goes on, the next one retries
            log.warning("config_generation_bump_owed", extra={"error": exc.__class__.__name__})
            return
        self._owed, self._owed_scopes = False, frozenset()
        log.info("config_generation_bump_retried")

    def end_request(self) -> None:
        """Leave the request scope: outside one, every cached read fetches the generation."""
        self._memo.set(None)

    def _generation(self) -> int:
        """This request's view: the change count after applying what the generation reports as changed."""
        memo = self._memo.get()
        if memo:
            return memo[0]
        with self._sync_lock:
            _, changed = self.generation.poll()
            if changed is None or changed:
                self._count(changed)
            with self._lock:
                seen = self._changes
        if memo is not None:
            self._memo.set((seen,))
        return seen

    def _count(self, scopes: Scopes) -> None:
        """Count a change of `scopes` (None: everything): entries loaded before it are no longer used."""
        with self._lock:
            self._changes += 1
            if scopes is None or len(self._scope_changed) + len(scopes) > MAX_SCOPES:
                self._all_changed = self._changes
                self._scope_changed.clear()
                self._entries.clear()
                self._misses.clear()
            else:
                for scope in scopes:
                    self._scope_changed[scope] = self._changes

    def invalidate(self, scopes: Scopes = None) -> None:
        """Announce a configuration change of `scopes` (None: everything) to every replica, after its write
        committed. An announcement the state store does not take is owed (see the module's docstring), not
        raised: failing the request would hide that its write committed, and skip the write's audit event."""
        if self._in_atomic.get():
            _, pending = self._dirty.get()
            self._dirty.set((True, None if scopes is None or pending is None else pending | scopes))
            return
        self._count(scopes)
        if self._memo.get() is not None:
            self._memo.set(())
        try:
            self.generation.bump(scopes)
        except Exception as exc:  # noqa: BLE001 - the write has committed: other replicas must still hear of it
            owed = self._owed_scopes if self._owed else frozenset()
            self._owed = True
            self._owed_scopes = None if scopes is None or owed is None else owed | scopes
            log.warning("change_not_announced", extra={
                "error": exc.__class__.__name__, "scopes": None if scopes is None else sorted(scopes),
                "detail": "the change committed; other replicas learn of it when this process reaches the state "
                          "store again (retried at each request), or within 10 minutes"})

    @property
    def announcement_owed(self) -> bool:
        """A write committed but could not yet be announced to the other replicas (see _announce)."""
        return self._owed

    def _cached(self, key: tuple[Any, ...], scope: str | Callable[[Any], str], load: Callable[[], T]) -> T:
        """`scope`: the entry's scope, or a function of the loaded value that gives it."""
        if self._in_atomic.get():
            return load()
        seen = self._generation()
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key) or self._misses.get(key)
            if hit is not None:
                hit_scope, loaded_in, loaded_at, cached = hit
                current = loaded_in >= max(self._all_changed, self._scope_changed.get(hit_scope, 0))
                if current and now - loaded_at < self.max_age:
                    (self._entries if key in self._entries else self._misses).move_to_end(key)
                    value: T = cached
                    return value
        value = load()
        entry_scope = scope if isinstance(scope, str) else scope(value)
        with self._lock:
            # "no such thing" answers go to an LRU of their own, so that requests naming random tenants,
            # connections or clients can neither grow memory past it nor push real entries out
            store, limit = (self._misses, self.max_misses) if value is None else (self._entries, self.max_entries)
            (self._entries if value is None else self._misses).pop(key, None)
            store[key] = (entry_scope, seen, now, value)
            store.move_to_end(key)
            while len(store) > limit:
                store.popitem(last=False)
        return value

    def _write(self, fn: Callable[[], T], scopes: Callable[[T], Scopes]) -> T:
        """`scopes` of the result: what changed (None: everything; empty: nothing, so nothing is announced)."""
        result = fn()
        changed = scopes(result)
        if changed is None or changed:
            self.invalidate(changed)
        return result

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._in_atomic.get():
            yield
            return
        token = self._in_atomic.set(True)
        dirty = self._dirty.set((False, frozenset()))
        try:
            with self.inner.atomic():
                yield
        finally:
            changed, scopes = self._dirty.get()
            self._in_atomic.reset(token)
            self._dirty.reset(dirty)
        if changed:
            self.invalidate(scopes)

    def ping(self) -> bool:
        return self.inner.ping()

    # -- cached reads ----------------------------------------------------------------------------

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        if not SLUG_RE.match(slug):  # no tenant can have it: neither a query nor a cache entry for a URL's junk
            return None
        # a tenant's entry belongs to its id; "no such tenant" to the slug, which creating it announces
        return self._cached(("tenant_slug", slug),
                            lambda t: tenant_scope(t.id) if t is not None else slug_scope(slug),
                            lambda: self.inner.tenant_by_slug(slug))

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self._cached(("tenant_id", tenant_id), tenant_scope(tenant_id),
                            lambda: self.inner.tenant_by_id(tenant_id))

    def connection(self, tenant_id: str, slug: str) -> Connection | None:
        if not SLUG_RE.match(slug):
            return None
        return self._cached(("connection", tenant_id, slug), tenant_scope(tenant_id),
                            lambda: self.inner.connection(tenant_id, slug))

    def connections(self, tenant_id: str) -> Sequence[Connection]:
        return self._cached(("connections", tenant_id), tenant_scope(tenant_id),
                            lambda: tuple(self.inner.connections(tenant_id)))

    def app(self, tenant_id: str, client_id: str) -> App | None:
        if not 0 < len(client_id) <= MAX_CLIENT_ID or unstorable(client_id):  # longer than the column holds
            return None
        return self._cached(("app", tenant_id, client_id), tenant_scope(tenant_id),
                            lambda: self.inner.app(tenant_id, client_id))

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        return self._cached(("keys", tenant_id), tenant_scope(tenant_id),
                            lambda: tuple(self.inner.signing_keys(tenant_id)))

    def idp_certificates(self, max_age: float = 60.0) -> list[tuple[str, str, dict[str, float]]]:
        """For the certificate-expiry gauge: reloaded after any configuration change (a metadata upload
        shows at the next scrape) and at least every `max_age` seconds (a refreshed metadata_url document,
        which is not a configuration change)."""
        seen: int | None
        try:
            seen = self._generation()
        except StateStoreError:  # the state store is down, the database may not be: go by age alone
            seen = None
        now = self._clock()
        hit = self._certificates
        if hit is not None and (seen is None or hit[0] == seen) and now - hit[1] < max_age:
            return hit[2]
        value = self.inner.idp_certificates()
        self._certificates = (seen if seen is not None else -1, now, value)  # -1: re-read once it is back
        return value

    # -- uncached reads --------------------------------------------------------------------------

    def metadata_freshness(self) -> list[tuple[str, str, float | None, bool]]:
        return list(self.inner.metadata_freshness())

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

    def prune_audit(self, before: datetime, *, batch: int = 5000) -> int:
        return self.inner.prune_audit(before, batch=batch)

    # -- writes that change configuration (invalidate everywhere) ---------------------------------

    def create_tenant(self, slug: str, name: str, key: NewSigningKey) -> Tenant:
        return self._write(lambda: self.inner.create_tenant(slug, name, key),
                           lambda t: frozenset({tenant_scope(t.id), slug_scope(slug)}))

    def update_tenant(self, tenant_id: str, *, name: str, expected_version: int | None = None) -> Tenant:
        return self._write(lambda: self.inner.update_tenant(tenant_id, name=name, expected_version=expected_version),
                           _tenant(tenant_id))

    def delete_tenant(self, tenant_id: str, *, expected_version: int | None = None) -> None:
        self._write(lambda: self.inner.delete_tenant(tenant_id, expected_version=expected_version),
                    _tenant(tenant_id))

    def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str,
                         expires_at: datetime | None = None) -> AdminKey:
        # Admin keys are never cached (every request reads its key): nothing to announce.
        return self.inner.create_admin_key(tenant_id, key_hash, label, expires_at)

    def delete_admin_key(self, key_id: str, *, tenant_id: str | None) -> str | None:
        # Admin keys are never cached (every request reads its key): no generation bump needed.
        return self.inner.delete_admin_key(key_id, tenant_id=tenant_id)

    def lock_tenant(self, tenant_id: str) -> None:
        self.inner.lock_tenant(tenant_id)

    def create_connection(self, tenant_id: str, draft: ConnectionDraft) -> Connection:
        return self._write(lambda: self.inner.create_connection(tenant_id, draft), _tenant(tenant_id))

    def replace_connection(self, connection_id: str, draft: ConnectionDraft,
                           expected_version: int | None = None) -> Connection:
        return self._write(lambda: self.inner.replace_connection(connection_id, draft, expected_version),
                           lambda c: frozenset({tenant_scope(c.tenant_id)}))

    def delete_connection(self, connection_id: str, *, expected_version: int | None = None) -> str:
        return self._write(lambda: self.inner.delete_connection(connection_id, expected_version=expected_version),
                           _owner)

    def create_app(self, tenant_id: str, client_id: str, draft: AppDraft, secret_hash: str | None) -> App:
        return self._write(lambda: self.inner.create_app(tenant_id, client_id, draft, secret_hash),
                           _tenant(tenant_id))

    def replace_app(self, app_id: str, draft: AppDraft, secret_hash: str | None,
                    expected_version: int | None = None) -> App:
        return self._write(lambda: self.inner.replace_app(app_id, draft, secret_hash, expected_version),
                           lambda a: frozenset({tenant_scope(a.tenant_id)}))

    def delete_app(self, app_id: str, *, expected_version: int | None = None) -> str:
        return self._write(lambda: self.inner.delete_app(app_id, expected_version=expected_version), _owner)

    def add_signing_key(self, tenant_id: str, key: NewSigningKey) -> SigningKey:
        return self._write(lambda: self.inner.add_signing_key(tenant_id, key), _tenant(tenant_id))

    def revoke_signing_key(self, tenant_id: str, kid: str) -> tuple[SigningKey, bool]:
        # a repeated revocation changed nothing: no replica need reload the tenant
        return self._write(lambda: self.inner.revoke_signing_key(tenant_id, kid),
                           lambda out: frozenset({tenant_scope(tenant_id)}) if out[1] else frozenset())

    def reseal_all(self) -> int:
        return self._write(self.inner.reseal_all, lambda _: None)

    def check_secret_key(self) -> None:
        self.inner.check_secret_key()

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


def _tenant(tenant_id: str) -> Callable[[object], Scopes]:
    """The scopes of a write to one tenant, whatever it returned."""
    scopes = frozenset({tenant_scope(tenant_id)})
    return lambda _: scopes


def _owner(tenant_id: str | None) -> Scopes:
    """The scopes of a delete that returned the owning tenant's id (None: nothing was there; say all)."""
    return frozenset({tenant_scope(tenant_id)}) if tenant_id is not None else None

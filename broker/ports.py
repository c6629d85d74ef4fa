"""typing.Protocols the core depends on: state store, config store, clock, fetcher, audit sink.

Implementations live in store/ (and tests); core modules import only these interfaces.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from broker.model import (
    AdminKey,
    App,
    AuditEvent,
    Connection,
    MappingConfig,
    SigningKey,
    SpCredentials,
    Tenant,
)


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass
class FrozenClock:
    """A clock tests set by hand; never sleeps."""

    t: float

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class StateStore(Protocol):
    """Short-lived shared state: login transactions, codes, replay cache, rate counters.

    Every method is atomic with respect to other workers and replicas sharing the same backend.
    Keys are plain strings; callers namespace them (e.g. "txn:", "code:", "replay:"). Values are bytes.
    Raises broker.errors.StateStoreError when the backend cannot be reached.
    """

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store value under key for ttl seconds, replacing any previous value."""
        ...

    def get(self, key: str) -> bytes | None:
        """The live value under key, or None."""
        ...

    def take(self, key: str) -> bytes | None:
        """Atomically return and delete the value: exactly one concurrent caller gets it."""
        ...

    def take_if_prefixed(self, key: str, prefix: bytes) -> tuple[bytes | None, bool]:
        """Atomically: when the live value starts with `prefix`, delete it and return (value, True); when it
        does not, leave it in place and return (value, False); (None, False) when there is none. Lets a caller
        consume a value only if it belongs to them, and still tell "unknown" from "someone else's"."""
        ...

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if no live value exists; True if this call stored it (exactly one concurrent winner)."""
        ...

    def put_all_unless(self, guard: str, puts: Sequence[tuple[str, bytes, float]]) -> bool:
        """Atomically: when no live value is under `guard`, store every (key, value, ttl) of `puts`, in order,
        and return True; when there is one, store nothing and return False. One round trip: a check and the
        writes it allows, with no gap between them for another worker's write to the guard."""
        ...

    def kept_since(self, now: float) -> float:
        """Since when this store has kept what is written to it: the `now` of the first call, kept in the store
        itself, so a store that lost its data (a Redis restarted without persistence) starts over at the time
        it is next asked. What was consumed before then (assertion IDs in the replay cache) is unknown."""
        ...

    def incr(self, key: str, ttl: float) -> int:
        """Increment a counter and return the new value; the window (ttl) starts with the first increment."""
        ...

    def delete(self, key: str) -> None: ...

    def batch(self) -> AbstractContextManager[None]:
        """Inside `with store.batch():`, this thread's put() calls are held and written together when the
        block ends: all of them, in order, in one round trip and atomically (or none, if the block raises or
        the write fails, which raises StateStoreError at the end of the block). Any other operation inside
        the block writes what is held first. Blocks nest; the outermost one writes."""
        ...

    def ping(self) -> bool:
        """True when the backend answers; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]


class Fetcher(Protocol):
    """Outbound HTTP for metadata and discovery/JWKS documents: always with a timeout and a size cap."""

    def get(
        self, url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
    ) -> FetchResult: ...

    def post_form(
        self, url: str, data: dict[str, str], *, timeout: float, max_bytes: int,
        headers: dict[str, str] | None = None,
    ) -> FetchResult: ...


class ConfigReader(Protocol):
    """Read side of tenant configuration, as frozen values. Lookups of missing things return None."""

    def tenant_by_slug(self, slug: str) -> Tenant | None: ...

    def connection(self, tenant_id: str, slug: str) -> Connection | None: ...

    def connections(self, tenant_id: str) -> Sequence[Connection]: ...

    def app(self, tenant_id: str, client_id: str) -> App | None: ...

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        """Published keys, the active one first."""
        ...


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionDraft:
    """Everything needed to create or replace a connection; validated by admin/ before it gets here."""

    slug: str
    protocol: str
    domains: tuple[str, ...]
    restrict_to_domains: bool
    mapping: MappingConfig
    settings: Mapping[str, Any]  # public settings only
    secrets: Mapping[str, str]  # e.g. {"client_secret": ...}; sealed at rest
    enabled: bool
    sp: SpCredentials | None


@dataclass(frozen=True, slots=True)
class AppDraft:
    name: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    public: bool
    allowed_scopes: tuple[str, ...]
    token_endpoint_auth_method: str
    id_token_signed_response_alg: str
    access_token_ttl: int
    id_token_ttl: int
    refresh_token_ttl: int
    subject_type: str = "public"


@dataclass(frozen=True, slots=True)
class NewSigningKey:
    kid: str
    alg: str
    private_pem: bytes
    public_jwk: Mapping[str, Any]
    activates_at: datetime | None = None  # None: signing at once; else published now, signing from then


@dataclass(frozen=True, slots=True)
class MetadataState:
    """The last good copy of a connection's metadata_url document, and how its refresh went."""

    xml: bytes | None
    fetched_at: float | None
    next_refresh_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: Sequence[AuditEvent]
    next_cursor: str | None


class ConfigStore(ConfigReader, Protocol):
    """Read and write tenant configuration. Writes inside `atomic()` share one database transaction."""

    def atomic(self) -> AbstractContextManager[None]: ...

    def ping(self) -> bool: ...

    # tenants
    def tenants(self) -> Sequence[Tenant]: ...
    def tenant_by_id(self, tenant_id: str) -> Tenant | None: ...
    def create_tenant(self, slug: str, name: str, key: NewSigningKey) -> Tenant: ...
    # update_tenant / replace_connection / replace_app with `expected_version`: raise VersionConflict
    # (no change) unless the row is still at that version, checked under the row's write lock
    def update_tenant(self, tenant_id: str, *, name: str, expected_version: int | None = None) -> Tenant: ...
    def delete_tenant(self, tenant_id: str, *, expected_version: int | None = None) -> None: ...

    # admin keys (stored as digests)
    def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str,
                         expires_at: datetime | None = None) -> AdminKey: ...
    def admin_key_by_hash(self, key_hash: str) -> AdminKey | None: ...
    def admin_keys(self, tenant_id: str | None, *, every_tenant: bool = False) -> Sequence[AdminKey]:
        """The keys of one tenant, or the global keys (tenant_id None); with every_tenant, all keys."""
        ...
    def delete_admin_key(self, key_id: str, *, tenant_id: str | None) -> str | None:
        """Delete the key with this id; when tenant_id is given it must be that tenant's key. Returns the tenant
        the key belonged to (None: a global key). NotFound when there is no such key (a concurrent revocation
        may have deleted it); Conflict when it is the last global key (nobody could then administer)."""
        ...

    # connections
    def lock_tenant(self, tenant_id: str) -> None:
        """Inside atomic(): the tenant's configuration writes wait for this transaction to end."""
        ...
    def create_connection(self, tenant_id: str, draft: ConnectionDraft) -> Connection: ...
    def replace_connection(self, connection_id: str, draft: ConnectionDraft,
                           expected_version: int | None = None) -> Connection: ...
    def delete_connection(self, connection_id: str, *, expected_version: int | None = None) -> str:
        """Returns the tenant it belonged to; NotFound when gone, VersionConflict when not at the version."""
        ...
    def metadata_state(self, connection_id: str) -> MetadataState: ...
    def save_metadata_state(self, connection_id: str, state: MetadataState) -> None: ...
    def idp_certificates(self) -> Sequence[tuple[str, str, Mapping[str, float]]]:
        """(tenant slug, connection slug, signing certificate fingerprint -> notAfter in epoch seconds) of
        every enabled SAML connection with usable metadata."""
        ...
    def metadata_freshness(self) -> Sequence[tuple[str, str, float | None, bool]]:
        """(tenant slug, connection slug, when the metadata in use was fetched (epoch seconds) or None, whether
        the last refresh failed) of every enabled SAML connection fed by a metadata_url that was tried."""
        ...
    def touch_last_logins(self, stamps: Mapping[str, float]) -> None:
        """Connection id -> time of a successful login (epoch seconds); a connection keeps the later of
        its stored time and the given one (workers write their stamps independently)."""
        ...

    def last_logins(self, tenant_id: str) -> Mapping[str, float | None]:
        """Connection slug -> time of its last successful login (epoch seconds), for status pages."""
        ...

    # apps
    def apps(self, tenant_id: str) -> Sequence[App]: ...
    def create_app(self, tenant_id: str, client_id: str, draft: AppDraft, secret_hash: str | None) -> App: ...
    def replace_app(self, app_id: str, draft: AppDraft, secret_hash: str | None,
                    expected_version: int | None = None) -> App: ...
    def delete_app(self, app_id: str, *, expected_version: int | None = None) -> str:
        """Returns the tenant it belonged to; NotFound when gone, VersionConflict when not at the version."""
        ...

    # signing keys
    def add_signing_key(self, tenant_id: str, key: NewSigningKey) -> SigningKey:
        """Make `key` the active key for its alg, at once or from its `activates_at`; the earlier keys of that alg
        are retired then and stay published for their tokens' lifetime."""
        ...

    def revoke_signing_key(self, tenant_id: str, kid: str) -> tuple[SigningKey, bool]:
        """Revoke a key that does not sign now (a retired or pending one; a pending one's predecessor signs on in
        its place): out of the JWKS, trusted for nothing. Returns the key and whether this call revoked it (False:
        it already was). NotFound for an unknown kid; Conflict (key_in_use) for the key that signs now."""
        ...

    def check_secret_key(self) -> None:
        """Raise ConfigError unless this process's BROKER_SECRET_KEY opens what is sealed in the store."""
        ...

    # audit
    def audit_page(
        self, tenant_id: str | None, *, type: str | None, outcome: str | None, limit: int, cursor: str | None
    ) -> AuditPage: ...
    def prune_audit(self, before: datetime, *, batch: int = 5000) -> int:
        """Delete the audit events older than `before`, `batch` at a time (each its own short transaction);
        returns how many."""
        ...

"""The SQL ConfigStore: tenants, connections, apps, keys, admin keys and audit as frozen values.

Rows never leave this module; callers get broker.model values with secrets unsealed in memory only.
Every public method runs in its own transaction unless called inside `atomic()`, which makes a whole
batch (e.g. `config apply`) commit or roll back as one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from psycopg.types.json import Json
from sqlalchemy import Engine, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import SQLAlchemyError as _SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import Conflict, NotFound, ServiceUnavailable, VersionConflict
from broker.model import (
    UNSTORABLE_CHARS,
    AdminKey,
    App,
    AuditEvent,
    Connection,
    MappingConfig,
    SigningKey,
    SpCredentials,
    Tenant,
    unstorable,
)
from broker.ports import AppDraft, AuditPage, ConnectionDraft, MetadataState, NewSigningKey
from broker.store.sealing import Sealer
from broker.store.tables import (
    AdminKeyRow,
    AppRow,
    AuditRow,
    ConfigGenerationRow,
    ConnectionRow,
    SigningKeyRow,
    TenantRow,
)

_AUDIT_INSERT = insert(AuditRow)
# The same INSERT as a server-side prepared statement on the psycopg connection under the pool (PostgreSQL
# only): it runs on every login, where SQLAlchemy's per-execution work cost more than the insert itself.
_AUDIT_INSERT_PG = (
    "INSERT INTO audit_events (id, time, tenant_id, tenant, type, connection, app, outcome, reason, details) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


_UNCHANGED = object()


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_version(current: int, expected: int | None, what: str) -> None:
    """Optimistic concurrency: a write made on what was read at version `expected` is refused once the row
    has moved on (the caller re-reads and merges again, or, for a client's If-Match, answers 412)."""
    if expected is not None and current != expected:
        raise VersionConflict(f"This {what} was changed by someone else since it was read; read it again.",
                              details={"current_version": current})


def _ts(dt: datetime | None) -> float | None:
    d = _utc(dt)
    return d.timestamp() if d is not None else None


def _from_ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def _column(value: str | None, size: int) -> str | None:
    """What a refused request named (a 101-character client_id, a NUL) still fits its audit column: an event
    that failed to insert would be in the log only."""
    if value is None:
        return None
    return UNSTORABLE_CHARS.sub("\ufffd", value)[:size]


def _storable(value: Any) -> Any:
    """`value` (JSON) with NULs and lone surrogates replaced (U+FFFD) in every string, key or value."""
    if isinstance(value, str):
        return _column(value, len(value))
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


@contextmanager
def _exists_as(taken: Conflict) -> Iterator[None]:
    """A create that lost a race with the same create meets the unique index (a generic Conflict from
    _session): answer with `taken`, what the check before the insert says when it sees the row."""
    try:
        yield
    except Conflict as exc:
        if exc.code != Conflict.default_code:
            raise
        taken.detail = exc.detail
        raise taken from None


class SqlConfigStore:
    def __init__(self, engine: Engine, sealer: Sealer, *,
                 certificate_expiry: Callable[[bytes, str | None], Mapping[str, float]] | None = None) -> None:
        """`certificate_expiry`: reads the IdP signing certificates' notAfter (fingerprint -> epoch seconds)
        out of a metadata document; with it, every metadata write keeps `idp_certificates()` current."""
        self._certificate_expiry = certificate_expiry
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._prepared_audit = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._autocommit, expire_on_commit=False)
        self._sealer = sealer
        self._current: ContextVar[Session | None] = ContextVar(f"broker_session_{id(self)}", default=None)

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._current.get() is not None:
            yield
            return
        session = self._sessions()
        token = self._current.set(session)
        try:
            yield
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self._current.reset(token)
            session.close()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A session for reads. Outside `atomic()` it runs on an autocommit connection: one round trip per
        query instead of BEGIN, query, COMMIT. Under READ COMMITTED each statement already took its own
        snapshot, so nothing a reader could see changes."""
        current = self._current.get()
        if current is not None:
            yield current
            return
        session = self._read_sessions()
        try:
            yield session
        except OperationalError as exc:
            raise ServiceUnavailable("The database is unavailable.", detail=str(exc.orig)) from None
        finally:
            session.close()

    @contextmanager
    def _session(self, *, serialized: bool = False) -> Iterator[Session]:
        """A write transaction (or the surrounding atomic() one). `serialized`: it reads and then writes on
        what it read, so it must run alone. PostgreSQL callers lock their rows (FOR UPDATE); SQLite ignores
        that, and pysqlite would begin the transaction only at the first write, so there the write lock is
        taken at once (BEGIN IMMEDIATE)."""
        current = self._current.get()
        if current is not None:
            try:
                yield current
                current.flush()
            except IntegrityError as exc:
                raise Conflict("That conflicts with an existing resource.", detail=str(exc.orig)) from None
            return
        session = self._sessions()
        try:
            if serialized and self._engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise Conflict("That conflicts with an existing resource.", detail=str(exc.orig)) from None
        except OperationalError as exc:
            session.rollback()
            raise ServiceUnavailable("The database is unavailable.", detail=str(exc.orig)) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- the configuration generation, where no Redis carries it ----------------------------------

    def config_generation(self) -> bytes | None:
        """The generation token in the database (one primary-key read)."""
        with self._read() as s:
            token = s.scalar(select(ConfigGenerationRow.token).where(ConfigGenerationRow.id == 1))
        return token.encode("ascii") if token else None

    def set_config_generation(self, token: bytes) -> None:
        with self._session() as s:
            row = s.get(ConfigGenerationRow, 1)
            if row is None:
                s.add(ConfigGenerationRow(id=1, token=token.decode("ascii")))
            else:
                row.token = token.decode("ascii")

    def ping(self) -> bool:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except _SQLAlchemyError:
            return False

    # -- conversions -----------------------------------------------------------------------------

    @staticmethod
    def _tenant(row: TenantRow) -> Tenant:
        return Tenant(id=row.id, slug=row.slug, name=row.name, created_at=_utc(row.created_at) or _now(),
                      version=row.version)

    def _connection(self, row: ConnectionRow, tenant_slug: str) -> Connection:
        settings: dict[str, Any] = dict(row.settings)
        if row.sealed_secrets:
            secrets = json.loads(self._sealer.open(row.sealed_secrets, context=f"connection:{row.id}"))
            settings.update(secrets)
        sp: SpCredentials | None = None
        if row.sealed_sp:
            raw = json.loads(self._sealer.open(row.sealed_sp, context=f"connection-sp:{row.id}"))
            sp = SpCredentials(
                signing_key_pem=raw["signing_key_pem"].encode(),
                signing_cert_pem=raw["signing_cert_pem"],
                encryption_key_pem=raw["encryption_key_pem"].encode(),
                encryption_cert_pem=raw["encryption_cert_pem"],
            )
        mapping = row.mapping or {}
        return Connection(
            id=row.id,
            tenant_id=row.tenant_id,
            tenant_slug=tenant_slug,
            slug=row.slug,
            protocol="saml" if row.protocol == "saml" else "oidc",
            domains=tuple(row.domains or ()),
            restrict_to_domains=row.restrict_to_domains,
            mapping=MappingConfig(
                preset=str(mapping.get("preset", "")),
                rules=tuple(mapping.get("rules") or ()),
                subject_source=mapping.get("subject_source"),
            ),
            settings=settings,
            enabled=row.enabled,
            version=row.version,
            created_at=_utc(row.created_at) or _now(),
            updated_at=_utc(row.updated_at) or _now(),
            sp=sp,
        )

    @staticmethod
    def _app(row: AppRow) -> App:
        return App(
            id=row.id,
            tenant_id=row.tenant_id,
            client_id=row.client_id,
            name=row.name,
            redirect_uris=tuple(row.redirect_uris),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris),
            public=row.public,
            allowed_scopes=tuple(row.allowed_scopes),
            token_endpoint_auth_method=row.token_endpoint_auth_method,
            id_token_signed_response_alg=row.id_token_signed_response_alg,
            access_token_ttl=row.access_token_ttl,
            id_token_ttl=row.id_token_ttl,
            refresh_token_ttl=row.refresh_token_ttl,
            subject_type=row.subject_type or "public",
            client_secret_hash=row.client_secret_hash,
            version=row.version,
            created_at=_utc(row.created_at) or _now(),
        )

    def _key(self, row: SigningKeyRow, *, unseal: bool = True) -> SigningKey:
        """`unseal=False`: the key's state only (when it signs), its private part left sealed (empty)."""
        return SigningKey(
            kid=row.kid,
            tenant_id=row.tenant_id,
            alg=row.alg,
            public_jwk=dict(row.public_jwk),
            private_pem=self._sealer.open(row.sealed_private, context=f"signing-key:{row.tenant_id}:{row.kid}")
            if unseal else b"",
            active=row.active,
            created_at=_utc(row.created_at) or _now(),
            retired_at=_utc(row.retired_at),
            activates_at=_utc(row.activates_at),
            revoked_at=_utc(row.revoked_at),
        )

    # -- tenants ---------------------------------------------------------------------------------

    def tenants(self) -> Sequence[Tenant]:
        with self._read() as s:
            return [self._tenant(r) for r in s.scalars(select(TenantRow).order_by(TenantRow.slug))]

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        # Here and in the other lookups by a key from a request: a key with a NUL or a lone surrogate names no
        # row, and looked up as it is the driver would raise (PostgreSQL): simply not found.
        if unstorable(slug):
            return None
        with self._read() as s:
            row = s.scalars(select(TenantRow).where(TenantRow.slug == slug)).one_or_none()
            return self._tenant(row) if row else None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        if unstorable(tenant_id):
            return None
        with self._read() as s:
            row = s.get(TenantRow, tenant_id)
            return self._tenant(row) if row else None

    def create_tenant(self, slug: str, name: str, key: NewSigningKey) -> Tenant:
        now = _now()
        taken = Conflict(f"A tenant with slug {slug!r} already exists.", code="tenant_exists")
        with _exists_as(taken), self._session() as s:
            if s.scalars(select(TenantRow.id).where(TenantRow.slug == slug)).first() is not None:
                raise taken
            row = TenantRow(id=str(uuid.uuid4()), slug=slug, name=name, version=1, created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            s.add(self._key_row(row.id, key, now))
            return self._tenant(row)

    def update_tenant(self, tenant_id: str, *, name: str, expected_version: int | None = None) -> Tenant:
        with self._session(serialized=expected_version is not None) as s:
            row = s.get(TenantRow, tenant_id, with_for_update=expected_version is not None)
            if row is None:
                raise NotFound("No such tenant.")
            _check_version(row.version, expected_version, "tenant")
            row.name = name
            row.version += 1
            row.updated_at = _now()
            return self._tenant(row)

    def delete_tenant(self, tenant_id: str, *, expected_version: int | None = None) -> None:
        """Delete a tenant and everything it owns. NotFound when it is already gone (a concurrent delete won),
        VersionConflict when `expected_version` is given and the tenant has moved on: checked under the row
        lock, so a delete conditioned on a version never removes a newer one."""
        with self._session(serialized=True) as s:
            row = s.get(TenantRow, tenant_id, with_for_update=True)
            if row is None:
                raise NotFound("No such tenant.", code="tenant_not_found")
            _check_version(row.version, expected_version, "tenant")
            for table in (AdminKeyRow, ConnectionRow, AppRow, SigningKeyRow):
                s.execute(delete(table).where(table.tenant_id == tenant_id))
            s.execute(delete(TenantRow).where(TenantRow.id == tenant_id))

    # -- admin keys ------------------------------------------------------------------------------

    def create_admin_key(self, tenant_id: str | None, key_hash: str, label: str,
                         expires_at: datetime | None = None) -> AdminKey:
        now = _now()
        with self._session() as s:
            slug = None
            if tenant_id is not None:
                t = s.get(TenantRow, tenant_id)
                if t is None:
                    raise NotFound("No such tenant.")
                slug = t.slug
            existing = s.scalars(select(AdminKeyRow).where(AdminKeyRow.key_hash == key_hash)).one_or_none()
            if existing is not None:
                return self._admin_key(existing, slug)
            row = AdminKeyRow(id=str(uuid.uuid4()), tenant_id=tenant_id, key_hash=key_hash, label=label,
                              created_at=now, expires_at=expires_at)
            s.add(row)
            return AdminKey(id=row.id, tenant_id=tenant_id, tenant_slug=slug, created_at=now, label=label,
                            expires_at=expires_at)

    @staticmethod
    def _admin_key(row: AdminKeyRow, slug: str | None) -> AdminKey:
        return AdminKey(id=row.id, tenant_id=row.tenant_id, tenant_slug=slug,
                        created_at=_utc(row.created_at) or _now(), label=row.label, expires_at=_utc(row.expires_at))

    def admin_key_by_hash(self, key_hash: str) -> AdminKey | None:
        with self._read() as s:
            row = s.scalars(select(AdminKeyRow).where(AdminKeyRow.key_hash == key_hash)).one_or_none()
            if row is None:
                return None
            slug = None
            if row.tenant_id is not None:
                t = s.get(TenantRow, row.tenant_id)
                if t is None:
                    return None
                slug = t.slug
            return self._admin_key(row, slug)

    def admin_keys(self, tenant_id: str | None, *, every_tenant: bool = False) -> list[AdminKey]:
        with self._read() as s:
            q = select(AdminKeyRow, TenantRow.slug).outerjoin(TenantRow, TenantRow.id == AdminKeyRow.tenant_id)
            if not every_tenant:
                q = q.where(AdminKeyRow.tenant_id.is_(None) if tenant_id is None
                            else AdminKeyRow.tenant_id == tenant_id)
            rows = s.execute(q.order_by(AdminKeyRow.created_at, AdminKeyRow.id)).all()
            return [self._admin_key(r, slug) for r, slug in rows]

    def delete_admin_key(self, key_id: str, *, tenant_id: str | None) -> str | None:
        """Delete a key (only one of `tenant_id`'s, when given); returns the tenant id the key belonged to.
        NotFound when there is none (or a concurrent revocation deleted it first)."""
        if unstorable(key_id):
            raise NotFound("No such admin key.", code="admin_key_not_found")
        with self._session(serialized=True) as s:
            row = s.get(AdminKeyRow, key_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise NotFound("No such admin key.", code="admin_key_not_found")
            if row.tenant_id is None:
                # Lock every global key row first, so two concurrent revocations cannot both see "one more".
                globals_ = s.scalars(
                    select(AdminKeyRow.id).where(AdminKeyRow.tenant_id.is_(None)).with_for_update()
                ).all()
                if key_id not in globals_:
                    raise NotFound("No such admin key.", code="admin_key_not_found")
                if len(globals_) <= 1:
                    raise Conflict("This is the last global admin key: create another one before revoking it.",
                                   code="last_global_admin_key")
            owner = row.tenant_id
            # a concurrent revocation of the same key may have deleted it since it was read: one of them did
            if s.execute(delete(AdminKeyRow).where(AdminKeyRow.id == key_id)).rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound("No such admin key.", code="admin_key_not_found")
            return owner

    # -- connections -----------------------------------------------------------------------------

    def connection(self, tenant_id: str, slug: str) -> Connection | None:
        if unstorable(slug):
            return None
        with self._read() as s:
            found = s.execute(
                select(ConnectionRow, TenantRow.slug)
                .join(TenantRow, TenantRow.id == ConnectionRow.tenant_id)
                .where(ConnectionRow.tenant_id == tenant_id, ConnectionRow.slug == slug)
            ).one_or_none()
            if found is None:
                return None
            row, tenant_slug = found
            return self._connection(row, tenant_slug)

    def connections(self, tenant_id: str) -> Sequence[Connection]:
        with self._read() as s:
            t = s.get(TenantRow, tenant_id)
            if t is None:
                return []
            rows = s.scalars(
                select(ConnectionRow).where(ConnectionRow.tenant_id == tenant_id).order_by(ConnectionRow.slug)
            )
            return [self._connection(r, t.slug) for r in rows]

    def _fill_connection(self, row: ConnectionRow, draft: ConnectionDraft) -> None:
        row.slug = draft.slug
        row.protocol = draft.protocol
        row.domains = list(draft.domains)
        row.restrict_to_domains = draft.restrict_to_domains
        row.mapping = {
            "preset": draft.mapping.preset,
            "rules": [dict(r) for r in draft.mapping.rules],
            **({"subject_source": draft.mapping.subject_source} if draft.mapping.subject_source else {}),
        }
        row.settings = dict(draft.settings)
        row.sealed_secrets = (
            self._sealer.seal(json.dumps(dict(draft.secrets)).encode(), context=f"connection:{row.id}")
            if draft.secrets
            else None
        )
        if draft.sp is not None:
            row.sealed_sp = self._sealer.seal(
                json.dumps(
                    {
                        "signing_key_pem": draft.sp.signing_key_pem.decode(),
                        "signing_cert_pem": draft.sp.signing_cert_pem,
                        "encryption_key_pem": draft.sp.encryption_key_pem.decode(),
                        "encryption_cert_pem": draft.sp.encryption_cert_pem,
                    }
                ).encode(),
                context=f"connection-sp:{row.id}",
            )
        row.enabled = draft.enabled

    def lock_tenant(self, tenant_id: str) -> None:
        """Inside atomic(): hold the tenant's row (PostgreSQL) or the database (SQLite) for writing until the
        transaction ends, so that checks across the tenant's connections (a domain named once) and the write
        that relies on them run alone. A write that changes nothing: it only takes the lock."""
        with self._session() as s:
            s.execute(update(TenantRow).where(TenantRow.id == tenant_id).values(version=TenantRow.version))

    def create_connection(self, tenant_id: str, draft: ConnectionDraft) -> Connection:
        now = _now()
        taken = Conflict(f"A connection with slug {draft.slug!r} already exists.", code="connection_exists")
        with _exists_as(taken), self._session() as s:
            t = s.get(TenantRow, tenant_id)
            if t is None:
                raise NotFound("No such tenant.")
            exists = s.scalars(
                select(ConnectionRow.id).where(ConnectionRow.tenant_id == tenant_id, ConnectionRow.slug == draft.slug)
            ).first()
            if exists is not None:
                raise taken
            row = ConnectionRow(id=str(uuid.uuid4()), tenant_id=tenant_id, version=1, created_at=now, updated_at=now)
            self._fill_connection(row, draft)
            row.idp_certificates = self._idp_certificates(row)
            s.add(row)
            s.flush()
            return self._connection(row, t.slug)

    def replace_connection(self, connection_id: str, draft: ConnectionDraft,
                           expected_version: int | None = None) -> Connection:
        with self._session(serialized=expected_version is not None) as s:
            row = s.get(ConnectionRow, connection_id, with_for_update=expected_version is not None)
            if row is None:
                raise NotFound("No such connection.")
            _check_version(row.version, expected_version, "connection")
            old_settings = dict(row.settings)
            self._fill_connection(row, draft)
            if old_settings.get("metadata_url") != row.settings.get("metadata_url"):
                row.fetched_metadata = None
                row.metadata_fetched_at = None
                row.metadata_next_refresh_at = None
                row.metadata_last_error = None
            row.idp_certificates = self._idp_certificates(row)
            row.version += 1
            row.updated_at = _now()
            s.flush()
            t = s.get(TenantRow, row.tenant_id)
            return self._connection(row, t.slug if t else "")

    def delete_connection(self, connection_id: str, *, expected_version: int | None = None) -> str:
        """Delete; returns the tenant id the connection belonged to. NotFound when it is already gone,
        VersionConflict when `expected_version` is given and the row has moved on (checked under its lock)."""
        return self._delete_owned(ConnectionRow, connection_id, expected_version, "connection")

    def _idp_certificates(self, row: ConnectionRow,
                          fetched: str | None | object = _UNCHANGED) -> dict[str, float] | None:
        """The expiry of the signing certificates in the metadata this connection uses: its inline
        metadata_xml, else the last good copy of its metadata_url (`fetched` when that is being replaced)."""
        if self._certificate_expiry is None or row.protocol != "saml":
            return None
        xml = (row.settings or {}).get("metadata_xml")
        if not xml:
            xml = row.fetched_metadata if fetched is _UNCHANGED else fetched
        if not isinstance(xml, str) or not xml:
            return None
        entity_id = (row.settings or {}).get("idp_entity_id") or None
        return dict(self._certificate_expiry(xml.encode("utf-8"), entity_id)) or None

    def idp_certificates(self) -> list[tuple[str, str, dict[str, float]]]:
        """(tenant slug, connection slug, fingerprint -> notAfter) of every enabled SAML connection with
        usable metadata, for the certificate-expiry gauge: one query, whatever the number of tenants."""
        with self._read() as s:
            rows = s.execute(
                select(TenantRow.slug, ConnectionRow.slug, ConnectionRow.idp_certificates)
                .join(TenantRow, TenantRow.id == ConnectionRow.tenant_id)
                .where(ConnectionRow.protocol == "saml", ConnectionRow.enabled.is_(True),
                       ConnectionRow.idp_certificates.is_not(None))
            ).all()
        out = []
        for tenant, conn, certs in rows:
            if isinstance(certs, dict) and certs:
                out.append((tenant, conn, {str(k): float(v) for k, v in certs.items()}))
        return out

    def metadata_freshness(self) -> list[tuple[str, str, float | None, bool]]:
        """For the metadata gauges: one query of the refresh state columns (never the documents themselves)."""
        with self._read() as s:
            rows = s.execute(
                select(TenantRow.slug, ConnectionRow.slug, ConnectionRow.metadata_fetched_at,
                       ConnectionRow.metadata_last_error)
                .join(TenantRow, TenantRow.id == ConnectionRow.tenant_id)
                .where(ConnectionRow.protocol == "saml", ConnectionRow.enabled.is_(True),
                       or_(ConnectionRow.metadata_fetched_at.is_not(None),
                           ConnectionRow.metadata_last_error.is_not(None)))
            ).all()
        return [(tenant, conn, _ts(fetched), error is not None) for tenant, conn, fetched, error in rows]

    def metadata_state(self, connection_id: str) -> MetadataState:
        with self._read() as s:
            row = s.get(ConnectionRow, connection_id)
            if row is None:
                return MetadataState(None, None, None, None)
            return MetadataState(
                xml=row.fetched_metadata.encode() if row.fetched_metadata else None,
                fetched_at=_ts(row.metadata_fetched_at),
                next_refresh_at=_ts(row.metadata_next_refresh_at),
                last_error=row.metadata_last_error,
            )

    def save_metadata_state(self, connection_id: str, state: MetadataState) -> None:
        with self._session() as s:
            row = s.get(ConnectionRow, connection_id)
            if row is None:
                return
            fetched = state.xml.decode("utf-8", "replace") if state.xml is not None else None
            if fetched != row.fetched_metadata:
                row.idp_certificates = self._idp_certificates(row, fetched)
            row.fetched_metadata = fetched
            row.metadata_fetched_at = _from_ts(state.fetched_at)
            row.metadata_next_refresh_at = _from_ts(state.next_refresh_at)
            row.metadata_last_error = state.last_error

    def touch_last_logins(self, stamps: Mapping[str, float]) -> None:
        if not stamps:
            return
        rows = [{"cid": cid, "at": _from_ts(when)} for cid, when in stamps.items()]
        later = or_(ConnectionRow.last_login_at.is_(None), ConnectionRow.last_login_at < bindparam("at"))
        stmt = (update(ConnectionRow).where(ConnectionRow.id == bindparam("cid")).where(later)
                .values(last_login_at=bindparam("at")))
        with self._session() as s:
            s.connection().execute(stmt, rows)  # Core executemany: one statement, every row, one transaction

    def last_logins(self, tenant_id: str) -> Mapping[str, float | None]:
        with self._read() as s:
            rows = s.execute(
                select(ConnectionRow.slug, ConnectionRow.last_login_at).where(ConnectionRow.tenant_id == tenant_id)
            )
            return {slug: _ts(at) for slug, at in rows}

    # -- apps ------------------------------------------------------------------------------------

    def app(self, tenant_id: str, client_id: str) -> App | None:
        if unstorable(client_id):
            return None
        with self._read() as s:
            row = s.scalars(
                select(AppRow).where(AppRow.tenant_id == tenant_id, AppRow.client_id == client_id)
            ).one_or_none()
            return self._app(row) if row else None

    def apps(self, tenant_id: str) -> Sequence[App]:
        with self._read() as s:
            rows = s.scalars(select(AppRow).where(AppRow.tenant_id == tenant_id).order_by(AppRow.created_at))
            return [self._app(r) for r in rows]

    @staticmethod
    def _fill_app(row: AppRow, draft: AppDraft, secret_hash: str | None) -> None:
        row.name = draft.name
        row.redirect_uris = list(draft.redirect_uris)
        row.post_logout_redirect_uris = list(draft.post_logout_redirect_uris)
        row.public = draft.public
        row.allowed_scopes = list(draft.allowed_scopes)
        row.token_endpoint_auth_method = draft.token_endpoint_auth_method
        row.id_token_signed_response_alg = draft.id_token_signed_response_alg
        row.access_token_ttl = draft.access_token_ttl
        row.id_token_ttl = draft.id_token_ttl
        row.refresh_token_ttl = draft.refresh_token_ttl
        row.subject_type = draft.subject_type
        row.client_secret_hash = secret_hash

    def create_app(self, tenant_id: str, client_id: str, draft: AppDraft, secret_hash: str | None) -> App:
        now = _now()
        taken = Conflict(f"This tenant already has an app with client_id {client_id!r}.", code="app_exists")
        with _exists_as(taken), self._session() as s:
            if s.get(TenantRow, tenant_id) is None:
                raise NotFound("No such tenant.")
            exists = s.scalars(
                select(AppRow.id).where(AppRow.tenant_id == tenant_id, AppRow.client_id == client_id)
            ).first()
            if exists is not None:
                raise taken
            row = AppRow(id=str(uuid.uuid4()), tenant_id=tenant_id, client_id=client_id, version=1,
                         created_at=now, updated_at=now)
            self._fill_app(row, draft, secret_hash)
            s.add(row)
            s.flush()
            return self._app(row)

    def replace_app(self, app_id: str, draft: AppDraft, secret_hash: str | None,
                    expected_version: int | None = None) -> App:
        with self._session(serialized=expected_version is not None) as s:
            row = s.get(AppRow, app_id, with_for_update=expected_version is not None)
            if row is None:
                raise NotFound("No such app.")
            _check_version(row.version, expected_version, "app")
            self._fill_app(row, draft, secret_hash)
            row.version += 1
            row.updated_at = _now()
            s.flush()
            return self._app(row)

    def delete_app(self, app_id: str, *, expected_version: int | None = None) -> str:
        """Delete; returns the tenant id the app belonged to. NotFound when it is already gone,
        VersionConflict when `expected_version` is given and the row has moved on (checked under its lock)."""
        return self._delete_owned(AppRow, app_id, expected_version, "app")

    def _delete_owned(self, table: type[ConnectionRow] | type[AppRow], row_id: str, expected_version: int | None,
                      what: str) -> str:
        """Delete one row of a tenant's under its lock; the tenant id it belonged to."""
        with self._session(serialized=True) as s:
            row = cast("ConnectionRow | AppRow | None", s.get(table, row_id, with_for_update=True))
            if row is None:
                raise NotFound(f"No such {what}.", code=f"{what}_not_found")
            _check_version(row.version, expected_version, what)
            owner: str = row.tenant_id
            s.execute(delete(table).where(table.id == row_id))
            return owner

    # -- signing keys ----------------------------------------------------------------------------

    def _key_row(self, tenant_id: str, key: NewSigningKey, now: datetime,
                 starts: datetime | None = None) -> SigningKeyRow:
        """`starts`: when the key begins to sign (None or `now`: at once)."""
        return SigningKeyRow(
            tenant_id=tenant_id,
            kid=key.kid,
            alg=key.alg,
            public_jwk=dict(key.public_jwk),
            sealed_private=self._sealer.seal(key.private_pem, context=f"signing-key:{tenant_id}:{key.kid}"),
            active=True,
            created_at=now,
            retired_at=None,
            activates_at=starts if starts is not None and starts > now else None,
        )

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        with self._read() as s:
            rows = s.scalars(
                select(SigningKeyRow)
                .where(SigningKeyRow.tenant_id == tenant_id)
                .order_by(SigningKeyRow.active.desc(), SigningKeyRow.id.desc())
            )
            return [self._key(r) for r in rows]

    def add_signing_key(self, tenant_id: str, key: NewSigningKey) -> SigningKey:
        with self._session(serialized=True) as s:
            # rotations of one tenant run one at a time (the row lock; SQLite: BEGIN IMMEDIATE): two at once
            # would each retire only the keys they saw, leaving two active, and lose a version bump
            t = s.get(TenantRow, tenant_id, with_for_update=True, populate_existing=True)
            if t is None:
                raise NotFound("No such tenant.")
            now = _now()
            # the keys of this alg that sign, or are to, stop when this one starts: now, or at its activates_at;
            # now too when none signs yet (the tenant's first key of this alg: nothing to stage against)
            olds = list(s.scalars(select(SigningKeyRow).where(
                SigningKeyRow.tenant_id == tenant_id, SigningKeyRow.alg == key.alg, SigningKeyRow.active.is_(True))))
            starts = now
            if key.activates_at is not None and key.activates_at > now and any(
                    self._key(o, unseal=False).signs_at(now.timestamp()) for o in olds):
                starts = key.activates_at
            for old in olds:
                retired, old_starts = _utc(old.retired_at), _utc(old.activates_at)
                if old_starts is not None and old_starts >= starts:
                    # a pending key this one overtakes never signs: withdrawn now
                    old.active, old.retired_at = False, now
                    continue
                old.retired_at = starts if retired is None or retired > starts else retired
                # a key that can no longer sign is plainly retired; one that signs until `starts` stays active
                if starts == now or old.retired_at <= now:
                    old.active = False
            row = self._key_row(tenant_id, key, now, starts)
            s.add(row)
            t.version += 1
            s.flush()
            return self._key(row)

    def revoke_signing_key(self, tenant_id: str, kid: str) -> tuple[SigningKey, bool]:
        if unstorable(kid):  # a NUL or a lone surrogate: no stored kid has one
            raise NotFound("The tenant has no signing key with that kid.", code="key_not_found")
        with self._session(serialized=True) as s:
            t = s.get(TenantRow, tenant_id, with_for_update=True, populate_existing=True)
            if t is None:
                raise NotFound("No such tenant.")
            row = s.scalars(select(SigningKeyRow).where(SigningKeyRow.tenant_id == tenant_id,
                                                        SigningKeyRow.kid == kid)).first()
            if row is None:
                raise NotFound("The tenant has no signing key with that kid.", code="key_not_found")
            if row.revoked_at is not None:
                return self._key(row), False
            now = _now()
            key = self._key(row, unseal=False)
            if key.signs_at(now.timestamp()):
                raise Conflict("This key signs the tenant's tokens now: rotate first (a new key at once), then "
                               "revoke this one.", code="key_in_use")
            if key.pending_at(now.timestamp()):
                # withdrawn before it signs: the key it was to replace signs on until this one's successor, if any
                for prev in s.scalars(select(SigningKeyRow).where(
                        SigningKeyRow.tenant_id == tenant_id, SigningKeyRow.alg == row.alg,
                        SigningKeyRow.active.is_(True), SigningKeyRow.id != row.id)):
                    if _utc(prev.retired_at) == key.activates_at:
                        prev.retired_at = row.retired_at
            row.revoked_at, row.active = now, False
            if key.retired_at is None or key.retired_at > now:
                row.retired_at = now
            t.version += 1
            s.flush()
            return self._key(row), True

    # -- secret key rotation -------------------------------------------------------------------

    def check_secret_key(self) -> None:
        """Raise ConfigError unless BROKER_SECRET_KEY (or a previous key) opens what is sealed here: the newest
        signing key, one per tenant ever created. A command run with another key would otherwise write values
        the servers cannot read (a signing key, an admin key's digest) and leave the tenant broken."""
        with self._read() as s:
            row = s.scalars(select(SigningKeyRow).order_by(SigningKeyRow.id.desc()).limit(1)).first()
            if row is not None:
                self._sealer.open(row.sealed_private, context=f"signing-key:{row.tenant_id}:{row.kid}")


    def reseal_all(self) -> int:
        """Re-seal every sealed value under the current BROKER_SECRET_KEY (after a rotation, with the old key
        in BROKER_SECRET_KEY_PREVIOUS). One transaction; returns how many values changed."""
        changed = 0
        with self._session() as s:
            for conn in s.scalars(select(ConnectionRow)):
                for attr, context in (("sealed_secrets", f"connection:{conn.id}"),
                                      ("sealed_sp", f"connection-sp:{conn.id}")):
                    value = getattr(conn, attr)
                    if value:
                        new = self._sealer.reseal(value, context=context)
                        if new is not None:
                            setattr(conn, attr, new)
                            changed += 1
            for key in s.scalars(select(SigningKeyRow)):
                new = self._sealer.reseal(key.sealed_private, context=f"signing-key:{key.tenant_id}:{key.kid}")
                if new is not None:
                    key.sealed_private = new
                    changed += 1
        return changed

    # -- audit -----------------------------------------------------------------------------------

    def record(self, event: AuditEvent, *, tenant_id: str | None | object = None) -> None:
        """Append an audit event (one Core INSERT, outside any ORM session: it is on every login's path).
        Pass `tenant_id` when known to save a lookup by slug."""
        tid: str | None
        if isinstance(tenant_id, str):
            tid = tenant_id
        elif event.tenant is not None:
            found = self.tenant_by_slug(event.tenant)
            tid = found.id if found is not None else None
        else:
            tid = None
        row = {
            "id": event.id, "time": event.time, "tenant_id": tid, "tenant": _column(event.tenant, 63),
            "type": event.type, "connection": _column(event.connection, 63), "app": _column(event.app, 100),
            "outcome": event.outcome, "reason": _column(event.reason, 100), "details": _storable(dict(event.details)),
        }
        current = self._current.get()
        if current is not None:
            current.execute(_AUDIT_INSERT, row)
            return
        try:
            # one statement is atomic by itself: no BEGIN/COMMIT round trips around it
            if self._prepared_audit:
                _insert_prepared(self._engine, row)
            else:
                with self._autocommit.connect() as conn:
                    conn.execute(_AUDIT_INSERT, row)
        except OperationalError as exc:
            raise ServiceUnavailable("The database is unavailable.", detail=str(exc.orig)) from None
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable("The database is unavailable.", detail=str(exc)) from None

    def audit_page(
        self, tenant_id: str | None, *, type: str | None, outcome: str | None, limit: int, cursor: str | None
    ) -> AuditPage:
        with self._read() as s:
            q = select(AuditRow)
            if tenant_id is not None:
                q = q.where(AuditRow.tenant_id == tenant_id)
            if type is not None:
                q = q.where(AuditRow.type == type)
            if outcome is not None:
                q = q.where(AuditRow.outcome == outcome)
            if cursor is not None:
                q = q.where(AuditRow.seq < int(cursor))
            rows = list(s.scalars(q.order_by(AuditRow.seq.desc()).limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            events = [
                AuditEvent(
                    id=r.id,
                    time=_utc(r.time) or _now(),
                    type=r.type,  # type: ignore[arg-type]
                    tenant=r.tenant,
                    connection=r.connection,
                    app=r.app,
                    outcome=r.outcome,  # type: ignore[arg-type]
                    reason=r.reason,
                    details=r.details or {},
                )
                for r in rows
            ]
            return AuditPage(events=events, next_cursor=str(rows[-1].seq) if more and rows else None)

    def prune_audit(self, before: datetime, *, batch: int = 5000) -> int:
        """Delete the audit events older than `before`, oldest first, `batch` rows per transaction (through the
        time index): the table stays writable throughout, and a prune stopped halfway keeps what it did."""
        oldest = select(AuditRow.seq).where(AuditRow.time < before).order_by(AuditRow.time).limit(batch)
        total = 0
        while True:
            with self._session() as s:
                done = int(getattr(s.execute(delete(AuditRow).where(AuditRow.seq.in_(oldest.scalar_subquery()))),
                                   "rowcount", 0) or 0)
            total += done
            if done < batch:
                return total


def _insert_prepared(engine: Engine, row: Mapping[str, Any]) -> None:
    """`_AUDIT_INSERT_PG`, prepared, on a pooled psycopg connection switched to autocommit for the one
    statement and back before it returns to the pool (the pool's other users run transactions). The raw pool
    checkout (the pool's events, such as the idle ping, still run) skips what a SQLAlchemy Connection with an
    isolation-level option costs on every login: about half of this write's CPU. A connection that cannot be
    put back as it was taken (it failed, or is left in a transaction) is invalidated, so the pool never hands
    it out again."""
    raw = engine.raw_connection()
    reusable = False
    try:
        driver = raw.driver_connection
        assert isinstance(driver, psycopg.Connection)
        driver.autocommit = True
        try:
            driver.execute(_AUDIT_INSERT_PG, (
                row["id"], row["time"], row["tenant_id"], row["tenant"], row["type"], row["connection"],
                row["app"], row["outcome"], row["reason"], Json(row["details"]),
            ), prepare=True)
        finally:
            if driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                driver.autocommit = False
                reusable = True
    finally:
        if not reusable:
            raw.invalidate()
        raw.close()

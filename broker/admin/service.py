"""Admin operations: tenants, admin keys, connections, apps, signing keys, audit — with tenant scoping.

One validation path for the admin API and `config apply`: bodies are parsed by admin/schema.py, then the
protocol settings are validated by opening them the way a login would (connector settings parsers, IdP
metadata parser, claims compiler). Nothing is written unless everything validated.
A tenant-scoped key sees only its own tenant; anything else is NotFound (never Forbidden, which would
confirm the other tenant exists).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from broker.admin import schema
from broker.audit import Auditor, event_json
from broker.claims.pipeline import compile_mapping, explain, transient_subject_warning
from broker.errors import BrokerError, Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed, VersionConflict
from broker.issuer.keys import MAX_ACTIVATE_AFTER, generate_signing_key, published_keys
from broker.model import AdminKey, App, Connection, MappingConfig, Profile, Tenant, UpstreamIdentity
from broker.ports import AppDraft, Clock, ConfigStore, ConnectionDraft, MetadataState, NewSigningKey
from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import IdpMetadata, parse_idp_metadata, to_json
from broker.samlxml.metadata import metadata_text as samlxml_metadata_text
from broker.upstream.oidc import assertion_public_jwk, load_assertion_key, parse_oidc_settings
from broker.upstream.saml import parse_saml_settings
from broker.upstream.saml_keys import generate_sp_credentials

DEFAULT_PRESET = {"saml": "generic-saml", "oidc": "generic-oidc"}
SECRET_FIELDS = {"oidc": ("client_secret", "private_key_jwt"), "saml": ()}
WRITE_ATTEMPTS = 3  # a PATCH re-reads and merges again when a concurrent write got in between, this often
T = TypeVar("T")
R = TypeVar("R", Tenant, Connection, App)


def etag(resource_id: str, version: int) -> str:
    """The entity tag of a tenant, connection or app: its id and configuration version (strong: every
    configuration change bumps the version; state the API only reports, like last_login_at, is not part)."""
    return f'"{resource_id}.{version}"'


def check_precondition(if_match: Sequence[str] | None, resource_id: str, version: int, what: str) -> None:
    """RFC 9110 §13.1.1: with If-Match, a change applies only to the version the client names ("*": any)."""
    if if_match is None or "*" in if_match or etag(resource_id, version) in if_match:
        return
    raise VersionConflict(f"This {what} has changed since the version named in If-Match; read it again.",
                          details={"etag": etag(resource_id, version)})


def shown(value: str, limit: int = 100) -> str:
    """A name from the request, quoted for an error message; a long one cut short (it is echoed back)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


def named_version(if_match: Sequence[str] | None, version: int) -> int | None:
    """The version a conditional write must still find under the row lock: the one If-Match named (checked
    against the read by check_precondition), or None when any version will do (no If-Match, or "*")."""
    return None if if_match is None or "*" in if_match else version


def none_match_hit(if_none_match: Sequence[str] | None, resource_id: str, version: int) -> bool:
    """RFC 9110 §13.1.2: If-None-Match names the current version ("*": any), so a GET can answer 304.
    It compares weakly (§8.8.3.2): W/"x" names "x" too, since only a cache's copy is at stake, not a write."""
    if if_none_match is None:
        return False
    current = etag(resource_id, version)
    return "*" in if_none_match or any(tag.removeprefix("W/") == current for tag in if_none_match)


READ_ONLY_SETTINGS = frozenset({  # shown by GET, ignored when sent back (a GET-then-PUT round trip)
    "client_secret_set", "private_key_jwt_set", "private_key_jwt_public_jwk"})


class SecretHashing(Protocol):
    def digest(self, value: str) -> str: ...
    def digests(self, value: str) -> list[str]: ...
    def verify(self, value: str, digest: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Urls:
    public_url: str

    def tenant(self, slug: str) -> str:
        return f"{self.public_url}/t/{slug}"

    def sp_metadata(self, tenant: str, conn: str) -> str:
        return f"{self.tenant(tenant)}/connections/{conn}/saml/metadata"

    def acs(self, tenant: str, conn: str) -> str:
        return f"{self.tenant(tenant)}/connections/{conn}/saml/acs"

    def oidc_callback(self, tenant: str, conn: str) -> str:
        return f"{self.tenant(tenant)}/connections/{conn}/oidc/callback"


def metadata_text(raw: bytes) -> str:
    """Uploaded IdP metadata as the text it is kept as (samlxml's metadata_text); any other encoding is
    refused before it is parsed, with a message for the admin who uploads it."""
    text = samlxml_metadata_text(raw)
    if text is None:
        raise ValidationFailed(
            "The metadata is not UTF-8 text (UTF-16 and other encodings are not accepted); save the XML file as "
            "UTF-8 and upload it again.", code="metadata_invalid", details={"field": "saml.metadata_xml"})
    return text


class AdminKeyExpired(Unauthorized):
    """A known admin key past its expires_at: refused like an unknown one (401 invalid_token), said so."""


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


MetadataLoader = Callable[[str], bytes]


@dataclass(frozen=True, slots=True)
class Understood:
    """IdP metadata read from a metadata_url; `fetched` is set when it was fetched just now."""

    meta: IdpMetadata
    fetched: bytes | None


def idp_initiated_problem(settings: Mapping[str, Any],
                          redirect_uris_of: Callable[[str], Sequence[str] | None]) -> tuple[str, str] | None:
    """(setting, message) when an IdP-initiated connection's app or redirect URI cannot work, else None.
    `redirect_uris_of(client_id)`: that app's redirect URIs, None when the tenant has no such app."""
    if not settings.get("allow_idp_initiated"):
        return None
    client_id = str(settings.get("idp_initiated_app") or "")
    uris = redirect_uris_of(client_id) if client_id else None
    if uris is None:
        return "idp_initiated_app", f"saml.idp_initiated_app {client_id!r} is not an app of this tenant."
    redirect_uri = settings.get("idp_initiated_redirect_uri")
    if not redirect_uri:
        return ("idp_initiated_redirect_uri",
                "saml.allow_idp_initiated needs saml.idp_initiated_redirect_uri: one of the app's redirect URIs.")
    if redirect_uri not in uris:
        return ("idp_initiated_redirect_uri",
                f"saml.idp_initiated_redirect_uri is not one of the redirect URIs of app {client_id!r}.")
    return None


def _subject_warning(c: Connection, meta: IdpMetadata | None) -> str | None:
    """The transient-subject warning (SPEC: a connection with neither a stable NameID nor a subject attribute
    gets a warning): the NameID format the connection asks for, else what the IdP's metadata offers."""
    asked = c.settings.get("name_id_format")
    formats = (str(asked),) if asked else (meta.name_id_formats if meta is not None else ())
    return transient_subject_warning(c.mapping.preset, c.mapping.subject_source, tuple(formats))


class AdminService:
    def __init__(
        self,
        *,
        store: ConfigStore,
        hasher: SecretHashing,
        auditor: Auditor,
        clock: Clock,
        urls: Urls,
        fetch_metadata: MetadataLoader | None = None,
        max_metadata_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.auditor = auditor
        self.clock = clock
        self.urls = urls
        self.fetch_metadata = fetch_metadata
        self.max_metadata_bytes = max_metadata_bytes

    # -- authentication and scoping --------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> AdminKey:
        """The admin key of an `Authorization: Bearer <key>` header value. The scheme is matched without
        regard to case (RFC 7235 §2.1: `bearer xyz` is `Bearer xyz`). A refused key that was presented raises
        Unauthorized with detail "invalid_token" (the RFC 6750 §3.1 error the API's WWW-Authenticate names);
        a missing one has no detail, as RFC 6750 §3.1 wants no error code when no credentials were sent."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        token = credentials.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("An admin API key is required: Authorization: Bearer <key>.", code="unauthorized")
        if len(token) > 512:
            raise Unauthorized("The admin API key is not valid.", code="unauthorized", detail="invalid_token")
        key = None
        for digest in self.hasher.digests(token):  # current BROKER_SECRET_KEY first, then previous ones
            key = self.store.admin_key_by_hash(digest)
            if key is not None:
                break
        if key is None:
            raise Unauthorized("The admin API key is not valid.", code="unauthorized", detail="invalid_token")
        if key.expired(self.clock.now()):
            raise AdminKeyExpired("The admin API key has expired.", code="unauthorized", detail="invalid_token")
        return key

    def tenant_for(self, key: AdminKey, slug: str) -> Tenant:
        tenant = self.store.tenant_by_slug(slug)
        if tenant is None or (key.tenant_id is not None and key.tenant_id != tenant.id):
            raise NotFound(f"No tenant {shown(slug)}.", code="tenant_not_found")
        return tenant

    def _admin_event(self, key: AdminKey | None, action: str, tenant: str | None, **details: Any) -> None:
        self.auditor.emit(
            "admin", "success", tenant=tenant, connection=details.pop("connection", None),
            app=details.pop("app", None), reason=None,
            details={"action": action, "admin_key_id": key.id if key else None, **details},
        )

    # -- tenants ---------------------------------------------------------------------------------

    @staticmethod
    def tenant_json(t: Tenant, urls: Urls) -> dict[str, Any]:
        return {"id": t.id, "slug": t.slug, "name": t.name, "issuer": urls.tenant(t.slug),
                "version": t.version, "created_at": iso(t.created_at)}

    def create_tenant(self, key: AdminKey | None, body: Any) -> dict[str, Any]:
        if key is not None and not key.is_global:
            raise Forbidden("A tenant-scoped key cannot create tenants.", code="forbidden")
        data = schema.parse(schema.TenantCreate, body)
        gen = generate_signing_key("RS256")
        tenant = self.store.create_tenant(
            data.slug, data.name, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk)
        )
        self._admin_event(key, "tenant.create", tenant.slug)
        return self.tenant_json(tenant, self.urls)

    def list_tenants(self, key: AdminKey) -> dict[str, Any]:
        tenants = self.store.tenants()
        if key.tenant_id is not None:
            tenants = [t for t in tenants if t.id == key.tenant_id]
        return {"tenants": [self.tenant_json(t, self.urls) for t in tenants]}

    def get_tenant(self, key: AdminKey, slug: str) -> dict[str, Any]:
        return self.tenant_json(self.tenant_for(key, slug), self.urls)

    def patch_tenant(self, key: AdminKey, slug: str, body: Any,
                     if_match: Sequence[str] | None = None) -> dict[str, Any]:
        data = schema.parse(schema.TenantPatch, body)

        def write(tenant: Tenant) -> dict[str, Any]:
            if data.name is None or data.name == tenant.name:  # nothing to change (RFC 7396: {} is no change)
                return self.tenant_json(tenant, self.urls)
            updated = self.store.update_tenant(tenant.id, name=data.name, expected_version=tenant.version)
            self._admin_event(key, "tenant.update", tenant.slug)
            return self.tenant_json(updated, self.urls)

        return self._read_modify_write(if_match, "tenant", lambda: self.tenant_for(key, slug), write)

    def delete_tenant(self, key: AdminKey, slug: str, if_match: Sequence[str] | None = None) -> None:
        tenant = self._fresh_if(if_match, lambda: self.tenant_for(key, slug))
        if not key.is_global:
            raise Forbidden("A tenant-scoped key cannot delete its tenant.", code="forbidden")
        check_precondition(if_match, tenant.id, tenant.version, "tenant")
        self.store.delete_tenant(tenant.id, expected_version=named_version(if_match, tenant.version))
        self._admin_event(key, "tenant.delete", tenant.slug)

    # -- optimistic concurrency ------------------------------------------------------------------

    def _fresh_if(self, fresh: object, read: Callable[[], T]) -> T:
        """`read()`, past the per-worker configuration cache when `fresh` is set (a write conditioned on what
        it read must see the current row, not a copy that another replica's change has not yet displaced)."""
        if not fresh:
            return read()
        with self.store.atomic():
            return read()

    def _read_modify_write(self, if_match: Sequence[str] | None, what: str, read: Callable[[], R],
                           write: Callable[[R], T]) -> T:
        """Read a resource, compute the change on it and write it on condition that it is still the version
        read (the store checks under the row lock). Without If-Match, a write that lost that race is
        redone on a fresh read (a merge PATCH must not undo a concurrent change to another field); with
        If-Match the client named the version, so the loss is its 412."""
        for attempt in range(WRITE_ATTEMPTS):
            current = self._fresh_if(attempt or if_match is not None, read)
            check_precondition(if_match, current.id, current.version, what)
            try:
                return write(current)
            except VersionConflict:
                if if_match is not None:
                    raise
        raise VersionConflict(f"This {what} is being changed by someone else at the same moment; try again.",
                              code="concurrent_update", status=409)

    # -- admin keys ------------------------------------------------------------------------------

    def create_admin_key(self, key: AdminKey | None, slug: str | None, body: Any) -> dict[str, Any]:
        data = schema.parse(schema.AdminKeyCreate, body if body is not None else {})
        tenant_id = None
        if slug is not None:
            tenant_id = self._admin_key_tenant(key, slug).id
        elif key is not None and not key.is_global:
            raise Forbidden("A tenant-scoped key cannot create global keys.", code="forbidden")
        expires_at = None
        if data.expires_in is not None:
            expires_at = datetime.fromtimestamp(int(self.clock.now()) + data.expires_in, UTC)
        value = "bk_" + secrets.token_urlsafe(32)
        created = self.store.create_admin_key(tenant_id, self.hasher.digest(value), data.label, expires_at)
        self._admin_event(key, "admin_key.create", slug, key_id=created.id, expires_at=iso(expires_at))
        return {"id": created.id, "key": value, "tenant": slug, "expires_at": iso(expires_at)}

    @staticmethod
    def admin_key_json(k: AdminKey) -> dict[str, Any]:
        """What may be shown of a key: never its value or digest."""
        return {"id": k.id, "label": k.label, "tenant": k.tenant_slug, "created_at": iso(k.created_at),
                "expires_at": iso(k.expires_at)}

    def list_admin_keys(self, key: AdminKey | None, slug: str | None) -> dict[str, Any]:
        """A tenant's keys (slug), or with a global key every key (global ones have tenant null)."""
        if slug is not None:
            tenant = self._admin_key_tenant(key, slug)
            keys = self.store.admin_keys(tenant.id)
        else:
            if key is not None and not key.is_global:
                raise Forbidden("A tenant-scoped key can only list its own tenant's keys.", code="forbidden")
            keys = self.store.admin_keys(None, every_tenant=True)
        return {"admin_keys": [self.admin_key_json(k) for k in keys]}

    def revoke_admin_key(self, key: AdminKey | None, slug: str | None, key_id: str) -> None:
        """Delete a key: it stops working on the next request everywhere (keys are never cached), admin UI
        sessions opened with it included. Under a tenant only that tenant's keys; at the top level (global
        keys only) any key. The last global key cannot be revoked."""
        if slug is not None:
            tenant = self._admin_key_tenant(key, slug)
            self.store.delete_admin_key(key_id, tenant_id=tenant.id)
        else:
            if key is not None and not key.is_global:
                raise Forbidden("A tenant-scoped key can only revoke its own tenant's keys.", code="forbidden")
            owner = self.store.delete_admin_key(key_id, tenant_id=None)
            # a tenant's key revoked by the operator: the tenant's own audit log says so
            found = self.store.tenant_by_id(owner) if owner is not None else None
            slug = found.slug if found is not None else None
        self._admin_event(key, "admin_key.revoke", slug, key_id=key_id)

    def _admin_key_tenant(self, key: AdminKey | None, slug: str) -> Tenant:
        if key is None:
            tenant = self.store.tenant_by_slug(slug)
            if tenant is None:
                raise NotFound(f"No tenant {shown(slug)}.", code="tenant_not_found")
            return tenant
        return self.tenant_for(key, slug)

    def ensure_admin_key(self, value: str, label: str = "bootstrap") -> AdminKey:
        """A global admin key with exactly this value exists afterwards (BROKER_BOOTSTRAP_ADMIN_KEY).
        Workers and replicas starting together race to insert it: losing that race (the unique key hash
        conflicts) means the key now exists, which is all this promises."""
        digest = self.hasher.digest(value)
        try:
            return self.store.create_admin_key(None, digest, label)
        except Conflict:
            existing = self.store.admin_key_by_hash(digest)
            if existing is None or not existing.is_global:
                raise
            return existing

    # -- connections -----------------------------------------------------------------------------

    def connection_for(self, key: AdminKey, slug: str, conn: str) -> tuple[Tenant, Connection]:
        tenant = self.tenant_for(key, slug)
        connection = self.store.connection(tenant.id, conn)
        if connection is None:
            raise NotFound(f"No connection {shown(conn)} in tenant {shown(slug)}.", code="connection_not_found")
        return tenant, connection

    def preview_metadata(self, *, xml: bytes | None = None, url: str | None = None) -> tuple[IdpMetadata, bytes]:
        """Read IdP metadata (given, or fetched from `url`) the way a save would, without saving anything."""
        if url is not None:
            parse_saml_settings({"metadata_url": url})  # the same URL checks a save does
            if self.fetch_metadata is None:
                raise ValidationFailed("Fetching metadata URLs is not available here.",
                                       details={"field": "saml.metadata_url"})
            xml = self.fetch_metadata(url)
        if xml is None:
            raise ValidationFailed("Give the IdP metadata XML or its URL.", code="metadata_invalid")
        return self._parse_metadata(xml, field="saml.metadata_url" if url is not None else "saml.metadata_xml"), xml

    def _parse_metadata(self, xml: bytes, entity_id: str | None = None,
                        field: str = "saml.metadata_xml") -> IdpMetadata:
        """`field` names where the document came from, for the error: the XML given, or the URL fetched."""
        try:
            return parse_idp_metadata(xml, entity_id=entity_id, now=datetime.fromtimestamp(self.clock.now(), UTC),
                                      max_bytes=self.max_metadata_bytes)
        except SamlError as exc:
            code = exc.code if exc.code.startswith("metadata_") else "metadata_invalid"
            raise ValidationFailed(f"The IdP metadata was not accepted: {exc.message}", code=code,
                                   details={"field": field, "problem": exc.message}) from None

    def _draft(self, body: schema.ConnectionBody, existing: Connection | None) -> tuple[ConnectionDraft, Any]:
        """Validate a connection body fully (settings, metadata, mapping) and build the draft to store."""
        protocol = body.protocol
        if existing is not None and existing.protocol != protocol:
            raise ValidationFailed("A connection's protocol cannot be changed; create a new connection.",
                                   details={"field": "protocol"})
        settings_raw = body.saml if protocol == "saml" else body.oidc
        other = body.oidc if protocol == "saml" else body.saml
        if other is not None:
            article = "An OIDC" if protocol == "oidc" else "A SAML"
            raise ValidationFailed(f"{article} connection takes only `{protocol}` settings.",
                                   details={"field": "oidc" if protocol == "saml" else "saml"})
        raw = {k: v for k, v in (settings_raw or {}).items() if k not in READ_ONLY_SETTINGS}
        understood: Any = None
        secrets_out: dict[str, str] = {}
        for name in SECRET_FIELDS[protocol]:
            if name in raw and raw[name] is not None:
                secrets_out[name] = raw[name]
            elif existing is not None and name in existing.settings and name not in raw:
                secrets_out[name] = str(existing.settings[name])
        try:
            if protocol == "saml":
                parsed = parse_saml_settings(raw)
                if parsed.metadata_xml is not None and parsed.metadata_url is not None:
                    raise ValidationFailed("Give either saml.metadata_xml or saml.metadata_url, not both.",
                                           details={"field": "saml"})
                if parsed.metadata_xml:
                    understood = self._parse_metadata(parsed.metadata_xml.encode(), parsed.idp_entity_id)
                elif parsed.metadata_url:
                    understood = self._metadata_from_url(parsed.metadata_url, existing, parsed.idp_entity_id)
            else:
                oidc = parse_oidc_settings({**raw, **secrets_out})
                if oidc.token_endpoint_auth_method == "private_key_jwt":
                    # checked now, not at the first login: a missing or unusable key would lock everyone out
                    pem = secrets_out.get("private_key_jwt")
                    if not pem:
                        raise ValidationFailed("oidc.private_key_jwt (a PEM private key) is required with "
                                               "token_endpoint_auth_method private_key_jwt.",
                                               details={"field": "oidc.private_key_jwt"})
                    load_assertion_key(pem.encode("utf-8"))
        except ValidationFailed as exc:
            field = exc.details.get("field")
            if field and not str(field).startswith(protocol):
                exc.details["field"] = f"{protocol}.{field}"
            raise
        public = {k: v for k, v in raw.items() if k not in SECRET_FIELDS[protocol]}
        mapping = MappingConfig(
            preset=body.mapping.preset or DEFAULT_PRESET[protocol],
            rules=tuple(body.mapping.rules),
            subject_source=body.mapping.subject_source,
        )
        compile_mapping(mapping)
        sp = None
        if protocol == "saml":
            sp = existing.sp if existing is not None and existing.sp is not None else generate_sp_credentials(
                f"broker-sp-{body.slug}"
            )
        draft = ConnectionDraft(
            slug=body.slug,
            protocol=protocol,
            domains=tuple(body.domains),
            restrict_to_domains=body.restrict_to_domains,
            mapping=mapping,
            settings=public,
            secrets=secrets_out,
            enabled=body.enabled,
            sp=sp,
        )
        return draft, understood

    def _metadata_from_url(self, url: str, existing: Connection | None, entity_id: str | None) -> Understood:
        """The metadata behind a metadata_url: the stored last good copy when the URL is unchanged, else
        fetched now (and then kept as the first good copy once the connection is saved)."""
        if existing is not None and existing.settings.get("metadata_url") == url:
            stored = self.store.metadata_state(existing.id).xml
            if stored is not None:
                return Understood(self._parse_metadata(stored, entity_id, "saml.metadata_url"), None)
        if self.fetch_metadata is None:
            raise ValidationFailed("Fetching metadata URLs is not available here.",
                                   details={"field": "saml.metadata_url"})
        fetched = self.fetch_metadata(url)
        return Understood(self._parse_metadata(fetched, entity_id, "saml.metadata_url"), fetched)

    def _keep_fetched(self, connection: Connection, understood: Any) -> None:
        if isinstance(understood, Understood) and understood.fetched is not None:
            now = self.clock.now()
            interval = min(max(understood.meta.cache_duration_seconds or 6 * 3600, 300), 86400)
            self.store.save_metadata_state(connection.id, MetadataState(understood.fetched, now, now + interval, None))

    def _check_idp_initiated(self, tenant: Tenant, draft: ConnectionDraft) -> None:
        """An IdP-initiated connection must name an app of this tenant and one of that app's redirect URIs:
        checked when saved, rather than found out by the first employee who clicks the IdP's tile."""
        def redirect_uris_of(client_id: str) -> Sequence[str] | None:
            app = self.store.app(tenant.id, client_id)
            return app.redirect_uris if app is not None else None

        problem = idp_initiated_problem(draft.settings, redirect_uris_of)
        if problem is not None:
            field, message = problem
            raise ValidationFailed(message, details={"field": f"saml.{field}"})

    def _check_domains(self, tenant: Tenant, slug: str, domains: tuple[str, ...]) -> None:
        for other in self.store.connections(tenant.id):
            if other.slug == slug:
                continue
            clash = sorted(set(other.domains) & set(domains))
            if clash:
                raise ValidationFailed(
                    f"Domain {clash[0]} is already used by connection {other.slug!r} of this tenant.",
                    code="domain_conflict", details={"field": "domains", "domains": clash},
                )

    def connection_json(self, tenant: Tenant, c: Connection) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": c.id,
            "slug": c.slug,
            "protocol": c.protocol,
            "domains": list(c.domains),
            "restrict_to_domains": c.restrict_to_domains,
            "enabled": c.enabled,
            "mapping": {"preset": c.mapping.preset, "rules": [dict(r) for r in c.mapping.rules],
                        **({"subject_source": c.mapping.subject_source} if c.mapping.subject_source else {})},
            "version": c.version,
            "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at),
        }
        settings = {k: v for k, v in self.effective_settings(c).items() if k not in SECRET_FIELDS[c.protocol]}
        if c.protocol == "saml":
            metadata_url = self.urls.sp_metadata(tenant.slug, c.slug)
            out["saml"] = settings
            out["sp"] = {
                "entity_id": str(c.settings.get("sp_entity_id") or metadata_url),
                "acs_url": self.urls.acs(tenant.slug, c.slug),
                "metadata_url": metadata_url,
                "signing_certificate": c.sp.signing_cert_pem if c.sp else None,
                "encryption_certificate": c.sp.encryption_cert_pem if c.sp else None,
            }
        else:
            out["oidc"] = {**settings, "client_secret_set": bool(c.settings.get("client_secret")),
                           "private_key_jwt_set": bool(c.settings.get("private_key_jwt"))}
            pem = c.settings.get("private_key_jwt")
            if isinstance(pem, str) and pem:
                try:  # what to register at the OP: the public key, with the kid the assertions carry
                    out["oidc"]["private_key_jwt_public_jwk"] = assertion_public_jwk(pem.encode("utf-8"))
                except ValidationFailed:
                    out["oidc"]["private_key_jwt_public_jwk"] = None
            out["redirect_uri"] = self.urls.oidc_callback(tenant.slug, c.slug)
        return out

    @staticmethod
    def effective_settings(c: Connection) -> dict[str, Any]:
        """The connection's protocol settings with every default filled in (what a login will use)."""
        parsed: Any = parse_saml_settings(c.settings) if c.protocol == "saml" else parse_oidc_settings(c.settings)
        out: dict[str, Any] = {}
        for f in fields(parsed):
            value = getattr(parsed, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if c.protocol == "oidc" and "timeout" not in c.settings:
            out.pop("timeout", None)  # unset: BROKER_UPSTREAM_TIMEOUT applies
        return out

    def _connection_spec(self, c: Connection) -> dict[str, Any]:
        body = self.connection_json(Tenant(c.tenant_id, c.tenant_slug, "", c.created_at), c)
        spec = {k: body[k] for k in ("slug", "protocol", "domains", "restrict_to_domains", "enabled", "mapping")}
        spec[c.protocol] = {k: v for k, v in c.settings.items() if k not in SECRET_FIELDS[c.protocol]}
        return spec

    def _slug_free(self, tenant: Tenant, slug: str) -> None:
        if self.store.connection(tenant.id, slug) is not None:
            raise BrokerError(f"A connection with slug {slug!r} already exists.", code="connection_exists",
                              status=409)

    def _saved(self, key: AdminKey | None, tenant: Tenant, saved: Connection, understood: Any,
               action: str | None) -> dict[str, Any]:
        """After a create or replace: keep fetched metadata, audit, and answer with what was understood.
        `action` None: nothing was written (a patch that changes nothing), so nothing is kept or audited."""
        if action is not None:
            self._keep_fetched(saved, understood)
            self._admin_event(key, action, tenant.slug, connection=saved.slug)
        out = self.connection_json(tenant, saved)
        meta = understood.meta if isinstance(understood, Understood) else understood
        if meta is not None:
            out["metadata"] = to_json(meta)
        if saved.protocol == "saml":
            warning = _subject_warning(saved, meta)
            out["warnings"] = [warning] if warning else []
            if warning and meta is not None:
                out["metadata"]["warnings"].append(warning)
        return out

    def create_connection(self, key: AdminKey | None, tenant: Tenant, body: Any) -> dict[str, Any]:
        data = schema.parse(schema.ConnectionBody, body)
        self._slug_free(tenant, data.slug)
        draft, understood = self._draft(data, None)  # may fetch metadata: before the transaction
        with self.store.atomic():  # the domain check and the write that relies on it, alone in the tenant
            self.store.lock_tenant(tenant.id)
            self._check_domains(tenant, data.slug, draft.domains)
            self._check_idp_initiated(tenant, draft)
            created = self.store.create_connection(tenant.id, draft)
        return self._saved(key, tenant, created, understood, "connection.create")

    def get_connection(self, key: AdminKey, slug: str, conn: str) -> dict[str, Any]:
        tenant, c = self.connection_for(key, slug, conn)
        out = self.connection_json(tenant, c)
        last = self.store.last_logins(tenant.id).get(c.slug)
        out["last_login_at"] = iso(datetime.fromtimestamp(last, UTC)) if last else None
        if c.protocol == "saml":
            out["metadata"] = self.metadata_summary(c)
        return out

    def metadata_summary(self, c: Connection) -> dict[str, Any] | None:
        xml = c.settings.get("metadata_xml")
        state = self.store.metadata_state(c.id) if c.settings.get("metadata_url") else None
        raw = xml.encode() if isinstance(xml, str) else (state.xml if state else None)
        if raw is None:
            summary: dict[str, Any] | None = None
        else:
            try:
                summary = to_json(self._parse_metadata(raw, c.settings.get("idp_entity_id")))
            except ValidationFailed as exc:
                summary = {"error": exc.message}
        if state is not None:
            summary = dict(summary or {})
            summary["refresh"] = {
                "fetched_at": state.fetched_at, "next_refresh_at": state.next_refresh_at,
                "last_error": state.last_error,
            }
        return summary

    def replace_connection(self, key: AdminKey | None, tenant: Tenant, existing: Connection,
                           body: Any, *, expected_version: int | None = None) -> dict[str, Any]:
        data = schema.parse(schema.ConnectionBody, body)
        if data.slug != existing.slug:
            self._slug_free(tenant, data.slug)
        draft, understood = self._draft(data, existing)
        with self.store.atomic():
            self.store.lock_tenant(tenant.id)
            self._check_domains(tenant, existing.slug, draft.domains)
            self._check_idp_initiated(tenant, draft)
            updated = self.store.replace_connection(existing.id, draft, expected_version)
        out = self._saved(key, tenant, updated, understood, "connection.update")
        moved = self._moved_urls_warning(tenant, existing, updated)
        if moved:
            out.setdefault("warnings", []).append(moved)
        return out

    def _sp_urls(self, tenant: Tenant, c: Connection) -> list[tuple[str, str]]:
        """The URLs the upstream knows this connection by, as (what, URL)."""
        if c.protocol != "saml":
            return [("redirect URI", self.urls.oidc_callback(tenant.slug, c.slug))]
        entity_id = str(c.settings.get("sp_entity_id") or self.urls.sp_metadata(tenant.slug, c.slug))
        return [("ACS URL", self.urls.acs(tenant.slug, c.slug)), ("SP entityID", entity_id)]

    def _moved_urls_warning(self, tenant: Tenant, old: Connection, new: Connection) -> str | None:
        """A new slug (or SP entityID) moves URLs the upstream knows this connection by: say which, old and new,
        since logins fail at the IdP or OP until its configuration is updated (and logins in flight are lost)."""
        moved = [f"{what} {before} -> {after}"
                 for (what, before), (_, after) in zip(self._sp_urls(tenant, old), self._sp_urls(tenant, new),
                                                       strict=True)
                 if before != after]
        if not moved:
            return None
        where = ("the IdP's configuration for this SP is" if new.protocol == "saml"
                 else "the client's redirect URIs at the OP are")
        change = f"renaming {old.slug!r} to {new.slug!r}" if old.slug != new.slug else "this change"
        return (f"connection_urls_changed: {change} changed its {' and its '.join(moved)}; "
                f"logins fail until {where} updated.")

    def patch_connection(self, key: AdminKey, slug: str, conn: str, body: Any,
                         if_match: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationFailed("The request body must be a JSON object.")
        tenant = self.tenant_for(key, slug)

        def write(existing: Connection) -> dict[str, Any]:
            spec = self._connection_spec(existing)
            merged = merge_patch(spec, body)
            if same_json(merged, spec):  # changes nothing (secrets are not in `spec`: naming one is a change)
                _, understood = self._draft(schema.parse(schema.ConnectionBody, merged), existing)
                return self._saved(key, tenant, existing, understood, None)
            return self.replace_connection(key, tenant, existing, merged, expected_version=existing.version)

        return self._read_modify_write(if_match, "connection", lambda: self.connection_for(key, slug, conn)[1],
                                       write)

    def delete_connection(self, key: AdminKey, slug: str, conn: str, if_match: Sequence[str] | None = None) -> None:
        tenant, c = self._fresh_if(if_match, lambda: self.connection_for(key, slug, conn))
        check_precondition(if_match, c.id, c.version, "connection")
        self.store.delete_connection(c.id, expected_version=named_version(if_match, c.version))
        self._admin_event(key, "connection.delete", tenant.slug, connection=c.slug)

    def put_metadata(self, key: AdminKey, slug: str, conn: str, xml: bytes, entity_id: str | None = None,
                     if_match: Sequence[str] | None = None,
                     if_none_match: Sequence[str] | None = None) -> tuple[dict[str, Any], str]:
        """Replace a SAML connection's IdP metadata. `entity_id` picks the IdP of a document that describes
        several (kept as saml.idp_entity_id); without it the connection's idp_entity_id, if any, applies.
        Returns what was understood and the connection's new ETag: the version this write made, which a
        later read could not name for sure (another write may already have followed).
        If-None-Match (RFC 9110 §13.1.2): "*" writes only if the connection has no metadata yet (neither a
        document nor a metadata_url), so two first uploads cannot overwrite each other; entity tags write
        only if the connection is not at one of those versions. Either way the loser gets 412."""
        tenant = self.tenant_for(key, slug)

        def write(c: Connection) -> tuple[dict[str, Any], str]:
            if if_none_match is not None:
                saml = c.settings if c.protocol == "saml" else {}
                present = bool(saml.get("metadata_xml") or saml.get("metadata_url"))
                current = etag(c.id, c.version)
                if ("*" in if_none_match and present) or current in (t.removeprefix("W/") for t in if_none_match):
                    what = "already has IdP metadata" if "*" in if_none_match else "is at a version named"
                    raise Conflict(f"This connection {what} in If-None-Match; nothing was written.",
                                   code="precondition_failed", status=412, details={"etag": current})
            return self._put_metadata(key, tenant, c, xml, entity_id)

        return self._read_modify_write(if_match, "connection", lambda: self.connection_for(key, slug, conn)[1],
                                       write)

    def _put_metadata(self, key: AdminKey, tenant: Tenant, c: Connection, xml: bytes,
                      entity_id: str | None) -> tuple[dict[str, Any], str]:
        if c.protocol != "saml":
            raise ValidationFailed("IdP metadata applies to SAML connections only.", code="invalid_request")
        entity_id = entity_id or c.settings.get("idp_entity_id")
        text = metadata_text(xml)
        meta = self._parse_metadata(xml, entity_id)
        spec = self._connection_spec(c)
        saml = dict(spec.get("saml") or {})
        saml.pop("metadata_url", None)
        saml["metadata_xml"] = text
        if entity_id:
            saml["idp_entity_id"] = entity_id
        unchanged = spec.get("saml") == saml  # the same document again: like a PATCH that changes nothing
        spec["saml"] = saml
        if unchanged:
            saved = c
        else:
            data = schema.parse(schema.ConnectionBody, spec)
            draft, _ = self._draft(data, c)
            saved = self.store.replace_connection(c.id, draft, c.version)
            self._admin_event(key, "connection.metadata", tenant.slug, connection=c.slug,
                              entity_id=meta.entity_id)
        out = to_json(meta)
        warning = _subject_warning(saved, meta)
        if warning:
            out["warnings"].append(warning)
        return out, etag(saved.id, saved.version)

    def mapping_test(self, key: AdminKey, slug: str, conn: str, body: Any) -> dict[str, Any]:
        tenant, c = self.connection_for(key, slug, conn)
        data = schema.parse(schema.ConnectionTest, body)
        mapping = c.mapping
        if data.mapping is not None:
            mapping = MappingConfig(preset=data.mapping.preset or c.mapping.preset, rules=tuple(data.mapping.rules),
                                    subject_source=data.mapping.subject_source)
        compiled = compile_mapping(mapping)
        attrs = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in data.attributes.items()}
        issuer = data.issuer or str(c.settings.get("issuer") or "")
        if not issuer and c.protocol == "saml":
            summary = self.metadata_summary(c)
            issuer = str((summary or {}).get("entity_id") or "")
        identity = UpstreamIdentity(
            protocol=c.protocol,
            issuer=issuer,
            subject=data.subject or "",
            subject_format=data.subject_format,
            attributes=attrs,
        )
        result = explain(compiled, identity, tenant=tenant.slug, tenant_id=tenant.id, connection=c.slug,
                         connection_id=c.id, domains=c.domains)
        return explain_json(result)

    # -- apps ------------------------------------------------------------------------------------

    @staticmethod
    def app_json(a: App) -> dict[str, Any]:
        return {
            "id": a.id,
            "client_id": a.client_id,
            "name": a.name,
            "redirect_uris": list(a.redirect_uris),
            "post_logout_redirect_uris": list(a.post_logout_redirect_uris),
            "public": a.public,
            "allowed_scopes": list(a.allowed_scopes),
            "token_endpoint_auth_method": a.token_endpoint_auth_method,
            "id_token_signed_response_alg": a.id_token_signed_response_alg,
            "access_token_ttl": a.access_token_ttl,
            "id_token_ttl": a.id_token_ttl,
            "refresh_token_ttl": a.refresh_token_ttl,
            "subject_type": a.subject_type,
            "version": a.version,
            "created_at": iso(a.created_at),
        }

    @staticmethod
    def _app_draft(data: schema.AppBody) -> AppDraft:
        method = data.token_endpoint_auth_method or ("none" if data.public else "client_secret_basic")
        if data.public and method != "none":
            raise ValidationFailed("A public app authenticates with `none` (and PKCE).",
                                   details={"field": "token_endpoint_auth_method"})
        if not data.public and method == "none":
            raise ValidationFailed("A confidential app needs client_secret_basic or client_secret_post.",
                                   details={"field": "token_endpoint_auth_method"})
        if data.public and data.client_secret is not None:
            raise ValidationFailed("A public app has no client secret.", details={"field": "client_secret"})
        return AppDraft(
            name=data.name,
            redirect_uris=tuple(data.redirect_uris),
            post_logout_redirect_uris=tuple(data.post_logout_redirect_uris),
            public=data.public,
            allowed_scopes=tuple(data.allowed_scopes),
            token_endpoint_auth_method=method,
            id_token_signed_response_alg=data.id_token_signed_response_alg,
            access_token_ttl=data.access_token_ttl,
            id_token_ttl=data.id_token_ttl,
            refresh_token_ttl=data.refresh_token_ttl,
            subject_type=data.subject_type,
        )

    def app_for(self, key: AdminKey, slug: str, client_id: str) -> tuple[Tenant, App]:
        tenant = self.tenant_for(key, slug)
        app = self.store.app(tenant.id, client_id)
        if app is None:
            raise NotFound(f"No app {shown(client_id)} in tenant {shown(slug)}.", code="app_not_found")
        return tenant, app

    def create_app(self, key: AdminKey | None, tenant: Tenant, body: Any) -> dict[str, Any]:
        data = schema.parse(schema.AppBody, body)
        draft = self._app_draft(data)
        if data.id_token_signed_response_alg == "ES256":
            self._ensure_alg_key(tenant, "ES256")
        client_id = data.client_id or secrets.token_urlsafe(18)
        secret = None
        if not data.public:
            secret = data.client_secret or secrets.token_urlsafe(32)
        app = self.store.create_app(tenant.id, client_id, draft, self.hasher.digest(secret) if secret else None)
        self._admin_event(key, "app.create", tenant.slug, app=app.client_id)
        out = self.app_json(app)
        if secret is not None:
            out["client_secret"] = secret
        return out

    def replace_app(self, key: AdminKey | None, tenant: Tenant, existing: App, body: Any, *,
                    expected_version: int | None = None) -> dict[str, Any]:
        data = schema.parse(schema.AppBody, body)
        if data.client_id is not None and data.client_id != existing.client_id:
            raise ValidationFailed("client_id cannot be changed.", details={"field": "client_id"})
        draft = self._app_draft(data)
        if data.id_token_signed_response_alg == "ES256":
            self._ensure_alg_key(tenant, "ES256")
        secret_hash = existing.client_secret_hash
        if data.client_secret is not None:
            secret_hash = self.hasher.digest(data.client_secret)
        if draft.public:
            secret_hash = None
        elif secret_hash is None:
            raise ValidationFailed("Turning a public app confidential needs a client_secret.",
                                   details={"field": "client_secret"})
        app = self.store.replace_app(existing.id, draft, secret_hash, expected_version)
        self._admin_event(key, "app.update", tenant.slug, app=app.client_id)
        return self.app_json(app)

    def patch_app(self, key: AdminKey, slug: str, client_id: str, body: Any,
                  if_match: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationFailed("The request body must be a JSON object.")
        tenant = self.tenant_for(key, slug)

        def write(existing: App) -> dict[str, Any]:
            current = self.app_json(existing)
            for generated in ("id", "created_at", "client_id", "version"):
                current.pop(generated)
            merged = merge_patch(current, body)
            if same_json(merged, current):  # changes nothing: no write, no new version, no audit event
                return self.app_json(existing)
            return self.replace_app(key, tenant, existing, merged, expected_version=existing.version)

        return self._read_modify_write(if_match, "app", lambda: self.app_for(key, slug, client_id)[1], write)

    def delete_app(self, key: AdminKey, slug: str, client_id: str, if_match: Sequence[str] | None = None) -> None:
        tenant, app = self._fresh_if(if_match, lambda: self.app_for(key, slug, client_id))
        check_precondition(if_match, app.id, app.version, "app")
        self.store.delete_app(app.id, expected_version=named_version(if_match, app.version))
        self._admin_event(key, "app.delete", tenant.slug, app=app.client_id)

    # -- keys ------------------------------------------------------------------------------------

    def _ensure_alg_key(self, tenant: Tenant, alg: str) -> None:
        if not any(k.alg == alg and k.active for k in self.store.signing_keys(tenant.id)):
            gen = generate_signing_key(alg)
            self.store.add_signing_key(tenant.id, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk))

    def rotate_keys(self, key: AdminKey | None, tenant: Tenant, body: Any = None) -> dict[str, Any]:
        """A new signing key for `alg`: signing at once, or with `activate_after` seconds, published now and
        signing from then (a staged rotation: apps that cache the JWKS have the key before it is used)."""
        alg, activate_after = "RS256", 0
        if isinstance(body, dict) and body:
            extra = set(body) - {"alg", "activate_after"}
            if extra:
                raise ValidationFailed(f"Invalid field {sorted(extra)[0]}: unknown field.",
                                       details={"field": sorted(extra)[0]})
            alg = body.get("alg", "RS256")
            if alg not in ("RS256", "ES256"):
                raise ValidationFailed("alg must be RS256 or ES256.", details={"field": "alg"})
            activate_after = body.get("activate_after", 0)
            if (not isinstance(activate_after, int) or isinstance(activate_after, bool)
                    or not 0 <= activate_after <= MAX_ACTIVATE_AFTER):
                raise ValidationFailed(f"activate_after must be a whole number of seconds from 0 to "
                                       f"{MAX_ACTIVATE_AFTER} (30 days).", details={"field": "activate_after"})
        # the keys it keeps must be readable with this process's BROKER_SECRET_KEY before one is added: a
        # rotation run with another key would retire them all for one no server can open
        self.store.signing_keys(tenant.id)
        gen = generate_signing_key(alg)
        activates_at = (datetime.fromtimestamp(self.clock.now() + activate_after, UTC)
                        if activate_after else None)
        new = self.store.add_signing_key(
            tenant.id, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk, activates_at=activates_at))
        self._admin_event(key, "keys.rotate", tenant.slug, kid=new.kid, alg=alg,
                          **({"activates_at": iso(new.activates_at)} if new.activates_at else {}))
        listed = self._keys_json(tenant)
        signing = next((k["kid"] for k in listed if k["alg"] == alg and k["active"]), new.kid)
        out: dict[str, Any] = {"active_kid": signing, "alg": new.alg}
        if new.activates_at is not None:
            out.update({"next_kid": new.kid, "activates_at": iso(new.activates_at)})
        out["keys"] = listed
        return out

    def revoke_signing_key(self, key: AdminKey | None, tenant: Tenant, kid: str) -> dict[str, Any]:
        """A key that leaked: out of the JWKS at once and trusted for nothing (access tokens, id_token_hints).
        Not the key that signs now (rotate first); a pending one is withdrawn, its predecessor signing on."""
        revoked, changed = self.store.revoke_signing_key(tenant.id, kid)
        if changed:
            self._admin_event(key, "keys.revoke", tenant.slug, kid=revoked.kid, alg=revoked.alg)
        return {"revoked_kid": revoked.kid, "keys": self._keys_json(tenant)}

    def signing_keys(self, key: AdminKey, slug: str) -> dict[str, Any]:
        """The tenant's signing keys, newest first, with what each does now (public parts only)."""
        return {"keys": self._keys_json(self.tenant_for(key, slug))}

    def _keys_json(self, tenant: Tenant) -> list[dict[str, Any]]:
        now = self.clock.now()
        keys = self.store.signing_keys(tenant.id)
        published = {k.kid for k in published_keys(keys, now)}
        out = []
        for k in sorted(keys, key=lambda k: k.created_at, reverse=True):
            if k.revoked_at is not None:
                status = "revoked"
            elif k.signs_at(now):
                status = "active"
            elif k.pending_at(now):
                status = "pending"
            else:
                status = "retired"
            out.append({"kid": k.kid, "alg": k.alg, "status": status, "active": status == "active",
                        "published": k.kid in published, "created_at": iso(k.created_at),
                        "activates_at": iso(k.activates_at), "retired_at": iso(k.retired_at),
                        "revoked_at": iso(k.revoked_at)})
        return out

    # -- audit -----------------------------------------------------------------------------------

    def audit(self, key: AdminKey, slug: str, args: Mapping[str, str]) -> dict[str, Any]:
        """One tenant's audit events, newest first."""
        return self._audit_page(self.tenant_for(key, slug).id, args)

    def audit_all(self, key: AdminKey, args: Mapping[str, str]) -> dict[str, Any]:
        """Every audit event, of every tenant and of none (global keys, deleted tenants): global keys only."""
        if not key.is_global:
            raise Forbidden("Only a global key can read the audit events of every tenant; read your tenant's at "
                            "/tenants/{t}/audit.", code="forbidden")
        return self._audit_page(None, args)

    def _audit_page(self, tenant_id: str | None, args: Mapping[str, str]) -> dict[str, Any]:
        type_ = args.get("type")
        if type_ is not None and type_ not in ("login", "admin", "token"):
            raise ValidationFailed("type must be login, admin or token.", details={"field": "type"})
        outcome = args.get("outcome")
        if outcome is not None and outcome not in ("success", "failure"):
            raise ValidationFailed("outcome must be success or failure.", details={"field": "outcome"})
        raw_limit = str(args.get("limit", "50"))
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6):  # int() takes "١٢", " 5_0"
            raise ValidationFailed("limit must be a whole number.", details={"field": "limit"})
        limit = int(raw_limit)
        if not 1 <= limit <= 500:
            raise ValidationFailed("limit must be between 1 and 500.", details={"field": "limit"})
        cursor = args.get("cursor")
        if cursor is not None and not re.fullmatch(r"[0-9]{1,18}", cursor):  # ASCII digits, within a BIGINT
            raise ValidationFailed("cursor is not valid.", details={"field": "cursor"})
        page = self.store.audit_page(tenant_id, type=type_, outcome=outcome, limit=limit, cursor=cursor)
        return {"events": [event_json(e) for e in page.events], "next_cursor": page.next_cursor}


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included: Python's == says 0 == False and 600 == 600.0, so a patch of
    `{"public": 0}` would pass for "no change" where the same body on a real change is refused."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def explain_json(result: Any) -> dict[str, Any]:
    steps = [
        {"index": s.index, "source": s.source, "rule": dict(s.rule),
         "changed": {k: {"before": b, "after": a} for k, (b, a) in s.changed.items()}}
        for s in result.steps
    ]
    out: dict[str, Any] = {"raw": result.raw, "steps": steps}
    if result.error is not None:
        out["error"] = {"error": result.error.code, "message": result.error.message}
        out["profile"] = None
    else:
        out["profile"] = profile_json(result.profile)
        out["warnings"] = list(result.profile.warnings)
    return out


def profile_json(p: Profile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sub": p.sub, "tenant": p.tenant, "connection": p.connection, "idp": p.idp,
        "email": p.email, "email_verified": p.email_verified, "name": p.name, "given_name": p.given_name,
        "family_name": p.family_name, "groups": list(p.groups), "roles": list(p.roles),
        "amr": list(p.amr), "acr": p.acr,
    }
    out.update(dict(p.extra))
    return out

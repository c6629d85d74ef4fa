"""Frozen values that cross layers: tenants, connections, apps, logins, identities, profiles, audit events.

Nothing here does I/O. Stores return these; protocol code consumes them; the web layer renders them.
Mappings held by frozen values are never mutated after construction (treat them as read-only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Protocol = Literal["saml", "oidc"]
AuditType = Literal["login", "admin", "token"]
Outcome = Literal["success", "failure"]

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# NUL (PostgreSQL text cannot hold it) and lone UTF-16 surrogates (UTF-8 cannot encode them; JSON's \u escapes
# can carry both): text with either can be neither stored nor signed into a token.
UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: str) -> bool:
    return UNSTORABLE_CHARS.search(value) is not None


def normalize_domain(value: str) -> str | None:
    """A domain name in the one form home-realm discovery compares: lowercase, no trailing dot, IDNA-mapped
    (nameprep: full-width letters become ASCII, invisible characters go) and internationalized labels as
    Unicode, so `ＡＣＭＥ.com`, `acme.com.` and `acme.com` are one domain, as are `xn--bcher-kva.de` and
    `bücher.de`. None when it is no domain name at all (an empty label, a label over 63 characters)."""
    domain = value.strip().lower().rstrip(".")
    if not domain:
        return None
    try:
        domain = domain.encode("idna").decode("idna").lower()
    except UnicodeError:
        return None
    return domain or None


def email_domain(value: str | None) -> str | None:
    """The domain of an email address in the form connections' domains are kept in (normalize_domain)."""
    if not value or "@" not in value:
        return None
    return normalize_domain(value.rsplit("@", 1)[1])


JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    slug: str
    name: str
    created_at: datetime
    version: int = 1


@dataclass(frozen=True, slots=True)
class MappingConfig:
    """A connection's claim mapping: a vendor preset, then the connection's own rules (raw JSON rules)."""

    preset: str
    rules: tuple[JSON, ...] = ()
    subject_source: str | None = None


@dataclass(frozen=True, slots=True)
class SpCredentials:
    """The broker's own SAML SP key pairs for one connection (private keys unsealed, in memory only)."""

    signing_key_pem: bytes
    signing_cert_pem: str
    encryption_key_pem: bytes
    encryption_cert_pem: str


@dataclass(frozen=True, slots=True)
class Connection:
    """One upstream IdP of a tenant. `settings` is the protocol's JSON settings, secrets already unsealed."""

    id: str
    tenant_id: str
    tenant_slug: str
    slug: str
    protocol: Protocol
    domains: tuple[str, ...]
    restrict_to_domains: bool
    mapping: MappingConfig
    settings: Mapping[str, Any]
    enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime
    sp: SpCredentials | None = None  # SAML connections only


MAX_SIGNED_TOKEN_TTL = 86400
"""The longest lifetime an app may give its access and ID tokens, in seconds: the bound on how long a token
signed by a rotated-out key can still be live."""


@dataclass(frozen=True, slots=True)
class App:
    """A downstream OIDC client of a tenant."""

    id: str
    tenant_id: str
    client_id: str
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
    client_secret_hash: str | None
    version: int
    created_at: datetime
    subject_type: str = "public"  # "public" | "pairwise" (OIDC Core §8: a different sub for each app)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A tenant's token-signing key. `private_pem` is unsealed and lives in memory only."""

    kid: str
    tenant_id: str
    alg: str
    public_jwk: Mapping[str, Any]
    private_pem: bytes
    active: bool  # current, or scheduled to be (see broker.issuer.keys.signs_at)
    created_at: datetime
    retired_at: datetime | None = None  # may lie ahead: a staged rotation retires the key when the next one starts
    activates_at: datetime | None = None  # a staged rotation's key: published from its creation, signing from then
    revoked_at: datetime | None = None  # revoked (leaked): trusted for nothing from then, gone from the JWKS

    def signs_at(self, now: float) -> bool:
        """The key signs new tokens at `now`: active and not revoked, past its activation (a staged rotation's
        key) and before its retirement (a key a staged rotation replaces signs until the next one starts)."""
        return (self.active and self.revoked_at is None
                and (self.activates_at is None or self.activates_at.timestamp() <= now)
                and (self.retired_at is None or now < self.retired_at.timestamp()))

    def pending_at(self, now: float) -> bool:
        """A staged rotation's key, published and waiting for its activation."""
        return (self.active and self.revoked_at is None and self.activates_at is not None
                and self.activates_at.timestamp() > now)


@dataclass(frozen=True, slots=True)
class AdminKey:
    id: str
    tenant_id: str | None
    tenant_slug: str | None
    created_at: datetime
    label: str = ""
    expires_at: datetime | None = None  # None: until revoked

    @property
    def is_global(self) -> bool:
        return self.tenant_id is None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at.timestamp()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    time: datetime
    type: AuditType
    tenant: str | None
    connection: str | None
    app: str | None
    outcome: Outcome
    reason: str | None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """The downstream app's validated /authorize request, carried through the upstream login."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    state: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    prompt: tuple[str, ...] = ()
    max_age: int | None = None
    login_hint: str | None = None
    response_mode: str | None = None  # "form_post", or None: query (the default)
    # an id_token_hint's user: its `sub`, as the client it was issued to (`hint_client`) sees subjects
    hint_sub: str | None = None
    hint_client: str | None = None


@dataclass(frozen=True, slots=True)
class LoginTransaction:
    """A pending upstream login, kept in the StateStore under `id` until the IdP answers.

    `upstream` holds what the connector asked the broker to remember (SAML request ID, OIDC state/nonce/
    PKCE verifier). `browser_binding` is a digest of the cookie set on the browser that began the login.
    `request` is None for an IdP-initiated login.
    """

    id: str
    tenant_id: str
    tenant_slug: str
    connection_id: str
    connection_slug: str
    request: AuthorizationRequest | None
    upstream: Mapping[str, str]
    browser_binding: str
    created_at: float
    expires_at: float
    purpose: str = "login"  # "login" (answer an app) | "test" (an admin's connection test: show the claims)


@dataclass(frozen=True, slots=True)
class UpstreamIdentity:
    """What an upstream IdP asserted, after every check passed. Attributes are always multi-valued."""

    protocol: Protocol
    issuer: str
    subject: str
    subject_format: str | None
    attributes: Mapping[str, tuple[str, ...]]
    friendly_names: Mapping[str, str] = field(default_factory=dict)
    session_index: str | None = None
    authn_context: str | None = None
    amr: tuple[str, ...] = ()
    authn_instant: float | None = None
    assertion_id: str | None = None
    warnings: tuple[str, ...] = ()
    session_ends_at: float | None = None  # the upstream's own session ends then (SAML SessionNotOnOrAfter)


@dataclass(frozen=True, slots=True)
class Profile:
    """The normalized profile an app sees. `extra` holds claims that mapping rules added by name."""

    sub: str
    tenant: str
    connection: str
    idp: str
    email: str | None = None
    email_verified: bool | None = None
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    acr: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def profile_to_json(profile: Profile) -> dict[str, Any]:
    """A JSON-safe dict of every Profile field (tuples become lists)."""
    return {
        "sub": profile.sub,
        "tenant": profile.tenant,
        "connection": profile.connection,
        "idp": profile.idp,
        "email": profile.email,
        "email_verified": profile.email_verified,
        "name": profile.name,
        "given_name": profile.given_name,
        "family_name": profile.family_name,
        "groups": list(profile.groups),
        "roles": list(profile.roles),
        "amr": list(profile.amr),
        "acr": profile.acr,
        "extra": dict(profile.extra),
        "warnings": list(profile.warnings),
    }


def profile_from_json(data: Mapping[str, Any]) -> Profile:
    """The inverse of profile_to_json."""
    return Profile(
        sub=str(data["sub"]),
        tenant=str(data["tenant"]),
        connection=str(data["connection"]),
        idp=str(data["idp"]),
        email=data.get("email"),
        email_verified=data.get("email_verified"),
        name=data.get("name"),
        given_name=data.get("given_name"),
        family_name=data.get("family_name"),
        groups=tuple(data.get("groups") or ()),
        roles=tuple(data.get("roles") or ()),
        amr=tuple(data.get("amr") or ()),
        acr=data.get("acr"),
        extra=dict(data.get("extra") or {}),
        warnings=tuple(data.get("warnings") or ()),
    )

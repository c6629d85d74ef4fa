"""Fixtures for the downstream OP: a fake ConfigReader with real keys and apps, an Issuer, a flow driver."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest

from broker.issuer.keys import GeneratedKey, generate_signing_key
from broker.issuer.server import HttpRequest, HttpResponse, Issuer
from broker.model import (
    App,
    AuditEvent,
    AuthorizationRequest,
    Connection,
    MappingConfig,
    Profile,
    SigningKey,
    Tenant,
)
from broker.ports import FrozenClock
from broker.store.sealing import SecretHasher
from broker.store.state import MemoryStateStore

PUBLIC = "https://broker.test"
NOW = datetime(2025, 1, 1, tzinfo=UTC)
HASHER = SecretHasher("issuer-tests-secret-key-0123456789abcdef")
# Characters that must survive RFC 6749 §2.3.1 form-urlencoding inside HTTP Basic.
SPECIAL_SECRET = "s3cr+t:with %/&=?é+plus"
SECRET = "plain-secret-0123456789"


def signing_key(g: GeneratedKey, tenant_id: str, *, active: bool = True) -> SigningKey:
    return SigningKey(
        kid=g.kid, tenant_id=tenant_id, alg=g.alg, public_jwk=g.public_jwk, private_pem=g.private_pem,
        active=active, created_at=NOW,
    )


@pytest.fixture(scope="session")
def keypool() -> dict[str, GeneratedKey]:
    return {
        "rsa_a": generate_signing_key("RS256"),
        "rsa_a2": generate_signing_key("RS256"),
        "es_a": generate_signing_key("ES256"),
        "rsa_b": generate_signing_key("RS256"),
        "foreign": generate_signing_key("RS256"),
    }


def make_app(tenant: Tenant, client_id: str, **kw: Any) -> App:
    secret = kw.pop("secret", SECRET)
    public = kw.get("public", False)
    values: dict[str, Any] = dict(
        id=f"app-{client_id}",
        tenant_id=tenant.id,
        client_id=client_id,
        name=client_id,
        redirect_uris=("https://app.example/cb", "https://app.example/cb2?x=1&y=a%20b"),
        post_logout_redirect_uris=("https://app.example/bye",),
        public=public,
        allowed_scopes=("openid", "profile", "email", "groups", "offline_access"),
        token_endpoint_auth_method="none" if public else "client_secret_basic",
        id_token_signed_response_alg="RS256",
        access_token_ttl=600,
        id_token_ttl=300,
        refresh_token_ttl=86400,
        client_secret_hash=None if public else HASHER.digest(secret),
        version=1,
        created_at=NOW,
    )
    values.update(kw)
    return App(**values)


def make_connection(tenant: Tenant, slug: str, **kw: Any) -> Connection:
    values: dict[str, Any] = dict(
        id=f"conn-{tenant.slug}-{slug}", tenant_id=tenant.id, tenant_slug=tenant.slug, slug=slug,
        protocol="saml", domains=(), restrict_to_domains=False, mapping=MappingConfig(preset="okta"),
        settings={}, enabled=True, version=1, created_at=NOW, updated_at=NOW,
    )
    values.update(kw)
    return Connection(**values)


@dataclass
class FakeConfig:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    apps: dict[tuple[str, str], App] = field(default_factory=dict)
    keys: dict[str, list[SigningKey]] = field(default_factory=dict)
    conns: dict[tuple[str, str], Connection] = field(default_factory=dict)

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.slug == slug), None)

    def connection(self, tenant_id: str, slug: str) -> Connection | None:
        return self.conns.get((tenant_id, slug))

    def connections(self, tenant_id: str) -> Sequence[Connection]:
        return tuple(c for (t, _), c in self.conns.items() if t == tenant_id)

    def add_connection(self, conn: Connection) -> Connection:
        self.conns[(conn.tenant_id, conn.slug)] = conn
        return conn

    def app(self, tenant_id: str, client_id: str) -> App | None:
        return self.apps.get((tenant_id, client_id))

    def signing_keys(self, tenant_id: str) -> Sequence[SigningKey]:
        return list(self.keys.get(tenant_id, []))

    def add_app(self, app: App) -> App:
        self.apps[(app.tenant_id, app.client_id)] = app
        return app


@dataclass
class ListAudit:
    events: list[AuditEvent] = field(default_factory=list)

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@dataclass
class Env:
    """The system under test plus a driver for the steps an app and the broker take."""

    issuer: Issuer
    config: FakeConfig
    clock: FrozenClock
    state: MemoryStateStore
    audit: ListAudit
    tenant_a: Tenant
    tenant_b: Tenant
    keypool: dict[str, GeneratedKey]
    profile: Profile

    @property
    def conf(self) -> App:
        return self.config.apps[(self.tenant_a.id, "conf")]

    def authorize(self, tenant: Tenant | None = None, **params: str) -> AuthorizationRequest:
        q = {"client_id": "conf", "redirect_uri": "https://app.example/cb", "response_type": "code",
             "scope": "openid profile email groups offline_access", "state": "st-1", "nonce": "n-1"}
        q.update(params)
        q = {k: v for k, v in q.items() if v is not None}
        return self.issuer.parse_authorization_request(tenant or self.tenant_a, q)

    def authorize_spa(self, challenge: str) -> AuthorizationRequest:
        return self.authorize(client_id="spa", code_challenge=challenge, code_challenge_method="S256")

    def code_for(self, req: AuthorizationRequest, tenant: Tenant | None = None, **kw: Any) -> str:
        tenant = tenant or self.tenant_a
        profile = kw.pop("profile", replace(self.profile, tenant=tenant.slug))
        url = self.issuer.authorization_response(
            tenant, req, profile, auth_time=self.clock.now() - 5, session_id=kw.pop("sid", "sess-1"),
        ).url
        return query_of(url)["code"]

    def post(self, endpoint: str, form: dict[str, str], headers: dict[str, str] | None = None,
             tenant: Tenant | None = None) -> HttpResponse:
        tenant = tenant or self.tenant_a
        req = HttpRequest(method="POST", url=f"{self.issuer.issuer_url(tenant)}/{endpoint}",
                          headers=headers or {}, query={}, form=form)
        handler = {"token": self.issuer.token, "introspect": self.issuer.introspect,
                   "revoke": self.issuer.revoke}[endpoint]
        return handler(tenant, req)

    def exchange(self, code: str, *, client: str = "conf", secret: str = SECRET, method: str = "basic",
                 tenant: Tenant | None = None, **form: str) -> HttpResponse:
        body = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb"}
        body.update(form)
        headers: dict[str, str] = {}
        if method == "basic":
            headers = basic(client, secret)
        elif method == "post":
            body.update({"client_id": client, "client_secret": secret})
        else:
            body["client_id"] = client
        return self.post("token", body, headers, tenant)

    def refresh(self, refresh_token: str, *, client: str = "conf", secret: str = SECRET,
                **form: str) -> HttpResponse:
        body = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
        return self.post("token", body, basic(client, secret))

    def tokens(self, **authorize: Any) -> dict[str, Any]:
        resp = self.exchange(self.code_for(self.authorize(**authorize)))
        assert resp.status == 200, resp.body
        assert isinstance(resp.body, dict)
        return resp.body

    def userinfo(self, access_token: str, tenant: Tenant | None = None) -> HttpResponse:
        tenant = tenant or self.tenant_a
        req = HttpRequest(method="GET", url=f"{self.issuer.issuer_url(tenant)}/userinfo",
                          headers={"Authorization": f"Bearer {access_token}"}, query={}, form={})
        return self.issuer.userinfo(tenant, req)

    def introspect(self, token: str, *, client: str = "conf", secret: str = SECRET,
                   tenant: Tenant | None = None) -> HttpResponse:
        return self.post("introspect", {"token": token}, basic(client, secret), tenant)

    def active(self, token: str, tenant: Tenant | None = None) -> bool:
        resp = self.introspect(token, tenant=tenant)
        assert resp.status == 200, resp.body
        assert isinstance(resp.body, dict)
        return bool(resp.body["active"])


@pytest.fixture
def env(keypool: dict[str, GeneratedKey]) -> Env:
    return build_env(keypool)


def build_env(keypool: dict[str, GeneratedKey]) -> Env:
    clock = FrozenClock(NOW.timestamp() + 3600)
    state = MemoryStateStore(clock=clock.now)
    config = FakeConfig()
    ta = Tenant(id="tid-a", slug="acme", name="Acme", created_at=NOW)
    tb = Tenant(id="tid-b", slug="globex", name="Globex", created_at=NOW)
    config.tenants = {ta.id: ta, tb.id: tb}
    config.keys = {
        ta.id: [signing_key(keypool["rsa_a"], ta.id), signing_key(keypool["es_a"], ta.id)],
        tb.id: [signing_key(keypool["rsa_b"], tb.id)],
    }
    config.add_app(make_app(ta, "conf"))
    config.add_app(make_app(ta, "special", secret=SPECIAL_SECRET))
    config.add_app(make_app(ta, "poster", token_endpoint_auth_method="client_secret_post"))
    config.add_app(make_app(ta, "spa", public=True))
    config.add_app(make_app(ta, "other"))
    config.add_app(make_app(ta, "ec", id_token_signed_response_alg="ES256"))
    config.add_app(make_app(ta, "nooffline", allowed_scopes=("openid", "profile", "email")))
    # Same client_id and secret in tenant B: isolation must come from the tenant, not the name.
    config.add_app(make_app(tb, "conf"))
    config.add_connection(make_connection(ta, "okta"))
    config.add_connection(make_connection(tb, "okta"))
    audit = ListAudit()
    issuer = Issuer(config=config, state=state, clock=clock, secrets=HASHER, public_url=PUBLIC, audit=audit)
    profile = Profile(
        sub="sub-123", tenant="acme", connection="okta", idp="http://www.okta.com/exk1",
        email="ada@acme.example", email_verified=True, name="Ada Lovelace", given_name="Ada",
        family_name="Lovelace", groups=("eng", "admins"), roles=("admin",), amr=("pwd", "mfa"),
        acr="urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        extra={"department": "R&D", "iss": "evil"},
    )
    return Env(issuer, config, clock, state, audit, ta, tb, keypool, profile)

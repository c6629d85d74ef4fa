"""OidcConnector against a mocked OpenID Provider (the `responses` library at the HTTP edge).

ID tokens are signed here with joserfc and keys generated per test session. Attack tokens that joserfc
rightly refuses to produce (alg none, HMAC keyed with the RSA public key) are assembled by hand: that is
token *construction* for the attack, never parsing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
import requests
import responses
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from broker.errors import LoginError, ValidationFailed
from broker.model import Connection, LoginTransaction, MappingConfig
from broker.ports import Clock, FrozenClock
from broker.upstream.base import BeginRequest, CallbackInput, Redirect
from broker.upstream.oidc import OidcConnector, OidcSettings, basic_auth_header, parse_oidc_settings
from broker.upstream.oidc_discovery import OidcMetadataCache, parse_jwks, parse_provider_metadata
from tests.support.oidc_op import make_fetcher

ISSUER = "https://op.example.com"
CLIENT_ID = "broker client+1"
CLIENT_SECRET = "p@ss:w/rd+%&="
PUBLIC_URL = "https://broker.example.org"
REDIRECT_URI = f"{PUBLIC_URL}/t/acme/connections/corp/oidc/callback"
AUTHZ = f"{ISSUER}/authorize"
TOKEN = f"{ISSUER}/token"
JWKS_URI = f"{ISSUER}/jwks"
USERINFO = f"{ISSUER}/userinfo"
NOW = 1_800_000_000.0
VENDOR = Path(__file__).resolve().parents[2].parent / "shared" / "vendor-samples" / "oidc"
ENTRA = "https://login.microsoftonline.com"
TENANT = "6babcaad-604b-40ac-a9d7-9fd97c0b779f"


# --- keys, state, clock -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def op_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "op-1", "use": "sig"})


@pytest.fixture(scope="session")
def op_ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "op-ec", "use": "sig"})


@pytest.fixture(scope="session")
def client_key() -> RSAKey:
    return RSAKey.generate_key(2048)


class CountingStateStore:
    """A dict-backed broker.ports.StateStore with a frozen clock, counting incr calls (rate limits)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[bytes, float]] = {}
        self.incr_calls: list[str] = []

    def _live(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None or item[1] <= self.clock.now():
            self.data.pop(key, None)
            return None
        return item[0]

    def put(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = (value, self.clock.now() + ttl)

    def get(self, key: str) -> bytes | None:
        return self._live(key)

    def take(self, key: str) -> bytes | None:
        value = self._live(key)
        self.data.pop(key, None)
        return value

    def take_if_prefixed(self, key: str, prefix: bytes) -> tuple[bytes | None, bool]:
        value = self._live(key)
        if value is None or not value.startswith(prefix):
            return value, False
        self.data.pop(key, None)
        return value, True

    def add_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        self.put(key, value, ttl)
        return True

    def incr(self, key: str, ttl: float) -> int:
        self.incr_calls.append(key)
        current = self._live(key)
        if current is None:
            self.put(key, b"1", ttl)
            return 1
        value = int(current) + 1
        self.data[key] = (str(value).encode(), self.data[key][1])
        return value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def ping(self) -> bool:
        return True


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def state(clock: FrozenClock) -> CountingStateStore:
    return CountingStateStore(clock)


@pytest.fixture
def cache() -> OidcMetadataCache:
    return OidcMetadataCache()


@pytest.fixture
def op() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# --- the mocked OP ----------------------------------------------------------------------------


def discovery(issuer: str = ISSUER, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": AUTHZ,
        "token_endpoint": TOKEN,
        "jwks_uri": JWKS_URI,
        "userinfo_endpoint": USERINFO,
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def serve_discovery(
    op: responses.RequestsMock, doc: Mapping[str, Any] | None = None, issuer: str = ISSUER
) -> None:
    op.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration", json=dict(doc or discovery(issuer)))


def serve_jwks(op: responses.RequestsMock, *keys: RSAKey | ECKey) -> None:
    op.get(JWKS_URI, json={"keys": [k.as_dict(private=False) for k in keys]})


def serve_token(op: responses.RequestsMock, id_token: str, *, access_token: str | None = "at-123") -> None:
    body: dict[str, Any] = {"id_token": id_token, "token_type": "Bearer", "expires_in": 300}
    if access_token is not None:
        body["access_token"] = access_token
    op.post(TOKEN, json=body)


def sign(key: RSAKey | ECKey, claims: Mapping[str, Any], alg: str = "RS256", **header: Any) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, dict(claims), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signature)}"


def sign_escaped(key: RSAKey, claims: Mapping[str, Any]) -> str:
    """RS256 over JSON with \\u escapes (json.dumps' default): a token an OP may send with lone surrogates,
    which joserfc's encoder (UTF-8) cannot produce."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = {"alg": "RS256", "kid": key.kid, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(dict(claims)).encode())}"
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


# --- the connector and one login --------------------------------------------------------------


def connection(**settings: Any) -> Connection:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    raw: dict[str, Any] = {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    raw.update(settings)
    return Connection(
        id="conn-1",
        tenant_id="ten-1",
        tenant_slug="acme",
        slug="corp",
        protocol="oidc",
        domains=("example.com",),
        restrict_to_domains=False,
        mapping=MappingConfig(preset="generic-oidc"),
        settings={k: v for k, v in raw.items() if v is not None},
        enabled=True,
        version=1,
        created_at=when,
        updated_at=when,
    )


@pytest.fixture
def make(clock: FrozenClock, state: CountingStateStore, cache: OidcMetadataCache) -> Any:
    def build(private_key_jwt_key: bytes | None = None, **settings: Any) -> OidcConnector:
        return OidcConnector(
            connection(**settings),
            public_url=PUBLIC_URL,
            fetcher=make_fetcher(),
            state=state,
            clock=clock,
            private_key_jwt_key=private_key_jwt_key,
            cache=cache,
        )

    return build


def begin(
    connector: OidcConnector, txn_id: str = "txn-abc", **request: Any
) -> tuple[LoginTransaction, dict[str, str]]:
    result = connector.begin(BeginRequest(txn_id=txn_id, **request))
    assert isinstance(result.step, Redirect)
    query = {k: v[0] for k, v in parse_qs(urlsplit(result.step.url).query).items()}
    txn = LoginTransaction(
        id=txn_id,
        tenant_id="ten-1",
        tenant_slug="acme",
        connection_id="conn-1",
        connection_slug="corp",
        request=None,
        upstream=dict(result.remember),
        browser_binding="b",
        created_at=NOW,
        expires_at=NOW + 600,
    )
    return txn, query


def answer(txn: LoginTransaction, **params: str | None) -> CallbackInput:
    values: dict[str, str | None] = {"code": "code-1", "state": txn.id}
    values.update(params)
    clean = {k: v for k, v in values.items() if v is not None}
    return CallbackInput(method="GET", params=clean, url=REDIRECT_URI)


def claims_for(txn: LoginTransaction, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "user-42",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "nonce": txn.upstream["nonce"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def rejected(connector: OidcConnector, callback: CallbackInput, txn: LoginTransaction | None) -> LoginError:
    with pytest.raises(LoginError) as caught:
        connector.complete(callback, txn)
    return caught.value


def token_request(op: responses.RequestsMock) -> requests.PreparedRequest:
    calls = [c.request for c in op.calls if c.request.url == TOKEN]
    assert len(calls) == 1
    return calls[0]


def form(request: requests.PreparedRequest) -> dict[str, str]:
    body = request.body
    text = body.decode() if isinstance(body, bytes) else str(body or "")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


# --- settings ---------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = parse_oidc_settings({"issuer": ISSUER, "client_id": "c", "client_secret": "s"})
    assert s == OidcSettings(issuer=ISSUER, client_id="c", client_secret="s")
    assert s.scopes == ("openid", "email", "profile")
    assert s.token_endpoint_auth_method == "client_secret_basic"
    assert s.userinfo is None and s.timeout == 10.0 and s.clock_skew_seconds == 120
    secret = parse_oidc_settings({"issuer": ISSUER, "client_id": "c", "client_secret": "TOPSECRET-1"})
    assert "TOPSECRET-1" not in repr(secret)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"client_id": "c", "client_secret": "s"}, "oidc.issuer"),
        ({"issuer": "http://op.example.com", "client_id": "c", "client_secret": "s"}, "oidc.issuer"),
        ({"issuer": ISSUER, "client_secret": "s"}, "oidc.client_id"),
        ({"issuer": ISSUER, "client_id": "c"}, "oidc.client_secret"),
        ({"issuer": ISSUER, "client_id": "c", "client_secret": "s", "colour": "red"}, "oidc.colour"),
        (
            {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "token_endpoint_auth_method": "x"},
            "oidc.token_endpoint_auth_method",
        ),
        ({"issuer": ISSUER, "client_id": "c", "client_secret": "s", "scopes": ["email"]}, "oidc.scopes"),
        ({"issuer": ISSUER, "client_id": "c", "client_secret": "s", "scopes": "openid"}, "oidc.scopes"),
        (
            {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "allowed_algs": ["HS256"]},
            "oidc.allowed_algs",
        ),
        (
            {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "allowed_algs": ["none"]},
            "oidc.allowed_algs",
        ),
        ({"issuer": ISSUER, "client_id": "c", "client_secret": "s", "timeout": 0}, "oidc.timeout"),
        ({"issuer": ISSUER, "client_id": "c", "client_secret": "s", "userinfo": "yes"}, "oidc.userinfo"),
        (
            {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "clock_skew_seconds": True},
            "oidc.clock_skew_seconds",
        ),
        (
            {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "extra_auth_params": {"state": "x"}},
            "oidc.extra_auth_params",
        ),
    ],
)
def test_settings_refused(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_oidc_settings(raw)
    assert caught.value.details["field"] == field


def test_settings_allow_loopback_http_issuer() -> None:
    assert parse_oidc_settings({"issuer": "http://127.0.0.1:9000", "client_id": "c", "client_secret": "s"})


def test_private_key_jwt_needs_a_key(make: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make(client_secret=None, token_endpoint_auth_method="private_key_jwt")
    assert caught.value.details["field"] == "oidc.private_key_jwt"


# --- begin ------------------------------------------------------------------------------------


def test_begin_sends_fresh_state_nonce_and_pkce(op: responses.RequestsMock, make: Any) -> None:
    serve_discovery(op)
    connector = make(extra_auth_params={"domain_hint": "example.com"})
    txn, query = begin(connector, login_hint="alice@example.com", force_authn=True, max_age=300)
    assert connector.redirect_uri == REDIRECT_URI
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid email profile"
    assert query["state"] == "txn-abc"
    assert query["nonce"] == txn.upstream["nonce"] and len(query["nonce"]) >= 32
    verifier = txn.upstream["code_verifier"]
    assert 43 <= len(verifier) <= 128
    assert query["code_challenge"] == b64(hashlib.sha256(verifier.encode()).digest())
    assert query["code_challenge_method"] == "S256"
    assert query["login_hint"] == "alice@example.com"
    assert query["prompt"] == "login"
    assert query["max_age"] == "300"
    assert query["domain_hint"] == "example.com"
    txn2, query2 = begin(connector, txn_id="txn-2")
    assert query2["nonce"] != query["nonce"] and txn2.upstream["code_verifier"] != verifier
    assert "prompt" not in query2 and "login_hint" not in query2
    assert begin(connector, select_account=True)[1]["prompt"] == "select_account"
    assert begin(connector, select_account=True, force_authn=True)[1]["prompt"] == "login select_account"


def test_begin_keeps_the_endpoints_own_query(op: responses.RequestsMock, make: Any) -> None:
    serve_discovery(op, discovery(authorization_endpoint=f"{AUTHZ}?p=b2c_1_signin"))
    result = make().begin(BeginRequest(txn_id="t"))
    assert isinstance(result.step, Redirect)
    assert result.step.url.startswith(f"{AUTHZ}?p=b2c_1_signin&response_type=code&")


def test_transaction_id_is_the_state_parameter(make: Any) -> None:
    connector = make()
    assert (
        connector.transaction_id(CallbackInput("GET", {"state": "txn-9", "code": "c"}, REDIRECT_URI))
        == "txn-9"
    )
    assert connector.transaction_id(CallbackInput("GET", {"code": "c"}, REDIRECT_URI)) is None


# --- happy paths ------------------------------------------------------------------------------


def test_login_with_client_secret_basic(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(
        op,
        sign(
            op_key,
            claims_for(
                txn,
                email="alice@example.com",
                email_verified=True,
                groups=["eng", "admins"],
                age=42,
                score=1.5,
                address={"country": "NZ", "locality": "Auckland"},
                amr=["pwd", "mfa"],
                acr="urn:mace:incommon:iap:silver",
                auth_time=int(NOW) - 10,
            ),
        ),
    )
    identity = connector.complete(answer(txn), txn)

    request = token_request(op)
    assert request.headers["Authorization"] == basic_auth_header(CLIENT_ID, CLIENT_SECRET)
    encoded = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
    assert encoded == "broker+client%2B1:p%40ss%3Aw%2Frd%2B%25%26%3D"  # RFC 6749 §2.3.1
    user, _, secret = encoded.partition(":")
    assert (unquote_plus(user), unquote_plus(secret)) == (CLIENT_ID, CLIENT_SECRET)
    body = form(request)
    assert body == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": REDIRECT_URI,
        "code_verifier": txn.upstream["code_verifier"],
    }

    assert identity.protocol == "oidc"
    assert identity.issuer == ISSUER
    assert identity.subject == "user-42"
    assert identity.subject_format is None
    assert identity.attributes["email"] == ("alice@example.com",)
    assert identity.attributes["email_verified"] == ("true",)
    assert identity.attributes["groups"] == ("eng", "admins")
    assert identity.attributes["age"] == ("42",)
    assert identity.attributes["score"] == ("1.5",)
    assert json.loads(identity.attributes["address"][0]) == {"country": "NZ", "locality": "Auckland"}
    assert identity.attributes["sub"] == ("user-42",)
    assert identity.amr == ("pwd", "mfa")
    assert identity.authn_context == "urn:mace:incommon:iap:silver"
    assert identity.authn_instant == NOW - 10


def test_login_with_client_secret_post(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make(token_endpoint_auth_method="client_secret_post")
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    connector.complete(answer(txn), txn)
    request = token_request(op)
    assert "Authorization" not in request.headers
    body = form(request)
    assert body["client_id"] == CLIENT_ID and body["client_secret"] == CLIENT_SECRET
    assert body["code_verifier"] == txn.upstream["code_verifier"]


def test_release_gives_nothing_back(op: responses.RequestsMock, make: Any, op_key: RSAKey,
                                    state: CountingStateStore) -> None:
    """A login whose OP code was redeemed cannot be retried with the same answer: release() says so and
    leaves the state store as it is (LoginService then ends that login, as before)."""
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    identity = connector.complete(answer(txn), txn)
    before = dict(state.data)
    assert connector.release(identity) is False
    assert state.data == before


def test_login_with_private_key_jwt(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, client_key: RSAKey
) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make(
        private_key_jwt_key=client_key.as_pem(private=True),
        client_secret=None,
        token_endpoint_auth_method="private_key_jwt",
    )
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    assert connector.complete(answer(txn), txn).subject == "user-42"
    request = token_request(op)
    assert "Authorization" not in request.headers
    body = form(request)
    assert body["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in body
    assertion = jwt.decode(body["client_assertion"], client_key, algorithms=["RS256"])
    assert assertion.header["alg"] == "RS256"
    claims = assertion.claims
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] == int(NOW)
    assert len(claims["jti"]) >= 16


def test_private_key_jwt_assertions_are_unique(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, client_key: RSAKey
) -> None:
    connector = make(
        private_key_jwt_key=client_key.as_pem(private=True),
        client_secret=None,
        token_endpoint_auth_method="private_key_jwt",
    )
    a = jwt.decode(connector._client_assertion(TOKEN), client_key, algorithms=["RS256"]).claims
    b = jwt.decode(connector._client_assertion(TOKEN), client_key, algorithms=["RS256"]).claims
    assert a["jti"] != b["jti"]


def test_userinfo_is_merged(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn, name="From ID token")), access_token="at-xyz")
    op.get(
        USERINFO, json={"sub": "user-42", "email": "alice@example.com", "groups": ["g1"], "name": "Other"}
    )
    identity = connector.complete(answer(txn), txn)
    userinfo_calls = [c.request for c in op.calls if c.request.url == USERINFO]
    assert len(userinfo_calls) == 1
    assert userinfo_calls[0].method == "GET" and userinfo_calls[0].headers["Authorization"] == "Bearer at-xyz"
    assert identity.attributes["email"] == ("alice@example.com",)
    assert identity.attributes["groups"] == ("g1",)
    assert identity.attributes["name"] == ("From ID token",)  # the signed ID token wins


def test_userinfo_of_an_op_that_refuses_get_is_asked_with_post(op: responses.RequestsMock, make: Any,
                                                               op_key: RSAKey) -> None:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)), access_token="at-xyz")
    op.get(USERINFO, status=405, headers={"Allow": "POST"})
    op.post(USERINFO, json={"sub": "user-42", "email": "alice@example.com"})
    identity = connector.complete(answer(txn), txn)
    calls = [(c.request.method, c.request.headers["Authorization"]) for c in op.calls if c.request.url == USERINFO]
    assert calls == [("GET", "Bearer at-xyz"), ("POST", "Bearer at-xyz")]
    assert identity.attributes["email"] == ("alice@example.com",)


@pytest.mark.parametrize("status", [401, 404, 500])
def test_userinfo_errors_other_than_405_are_not_retried(op: responses.RequestsMock, make: Any, op_key: RSAKey,
                                                        status: int) -> None:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    op.get(USERINFO, status=status, json={"error": "invalid_token"})
    assert rejected(connector, answer(txn), txn).code == "oidc_provider_unavailable"
    assert [c.request.method for c in op.calls if c.request.url == USERINFO] == ["GET"]


def _without_userinfo(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> tuple[OidcConnector, LoginTransaction]:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make(userinfo=False)
    txn, _ = begin(connector)
    return connector, txn


def test_distributed_claims_are_named_in_a_warning_and_not_kept(
    op: responses.RequestsMock, make: Any, op_key: RSAKey
) -> None:
    # Entra ID's groups overage: no `groups`, a pointer to where they are (with, from some OPs, a token)
    connector, txn = _without_userinfo(op, make, op_key)
    serve_token(op, sign(op_key, claims_for(
        txn, _claim_names={"groups": "src1", "email": "src2"},
        _claim_sources={"src1": {"endpoint": "https://graph.example/getMemberObjects", "access_token": "tok-1"},
                        "src2": {"JWT": "e30.e30."}},
        email="alice@example.com")))
    identity = connector.complete(answer(txn), txn)
    assert "_claim_names" not in identity.attributes and "_claim_sources" not in identity.attributes
    assert "tok-1" not in repr(identity)
    (warning,) = identity.warnings
    assert warning.startswith("claims_not_fetched: ") and "groups" in warning and "Entra ID" in warning
    assert "email" not in warning.split("(")[0], "a claim that is present is not missing"
    assert identity.attributes["email"] == ("alice@example.com",)


def test_claims_that_could_not_be_stored_or_signed_are_left_out(
    op: responses.RequestsMock, make: Any, op_key: RSAKey
) -> None:
    connector, txn = _without_userinfo(op, make, op_key)
    serve_token(op, sign_escaped(op_key, claims_for(txn, name="bad\ud800", nickname="nul\x00", acr="\udfff",
                                            amr=["pwd", "\ud800"], groups=["ok", "\ud800x"], **{"k\ud800": "v"})))
    identity = connector.complete(answer(txn), txn)
    assert "name" not in identity.attributes and "nickname" not in identity.attributes
    assert identity.attributes["groups"] == ("ok",) and not any("\ud800" in k for k in identity.attributes)
    assert identity.authn_context is None and identity.amr == ("pwd",)


def test_a_subject_that_could_not_be_stored_is_refused(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    connector, txn = _without_userinfo(op, make, op_key)
    serve_token(op, sign_escaped(op_key, claims_for(txn, sub="user\ud800")))
    assert rejected(connector, answer(txn), txn).code == "oidc_invalid_response"


def test_no_warning_without_distributed_claims(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    connector, txn = _without_userinfo(op, make, op_key)
    serve_token(op, sign(op_key, claims_for(txn, _claim_names="not an object", groups=["g1"])))
    identity = connector.complete(answer(txn), txn)
    assert identity.warnings == () and identity.attributes["groups"] == ("g1",)


def test_userinfo_about_another_user_is_refused(
    op: responses.RequestsMock, make: Any, op_key: RSAKey
) -> None:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    op.get(USERINFO, json={"sub": "someone-else", "email": "mallory@example.com"})
    assert rejected(connector, answer(txn), txn).code == "oidc_userinfo_sub_mismatch"


def test_userinfo_off(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    connector, txn = _without_userinfo(op, make, op_key)
    serve_token(op, sign(op_key, claims_for(txn)))
    connector.complete(answer(txn), txn)
    assert not [c for c in op.calls if c.request.url == USERINFO]


def test_es256_id_token(op: responses.RequestsMock, make: Any, op_key: RSAKey, op_ec_key: ECKey) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key, op_ec_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_ec_key, claims_for(txn), alg="ES256"))
    assert connector.complete(answer(txn), txn).subject == "user-42"


def test_discovery_and_jwks_are_cached(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make()
    for i in range(2):
        txn, _ = begin(connector, txn_id=f"t{i}")
        serve_token(op, sign(op_key, claims_for(txn)))
        connector.complete(answer(txn), txn)
    urls = [c.request.url for c in op.calls]
    assert urls.count(f"{ISSUER}/.well-known/openid-configuration") == 1
    assert urls.count(JWKS_URI) == 1


def test_key_rotation_refetches_the_jwks(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, op_ec_key: ECKey
) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector, txn_id="t1")
    serve_token(op, sign(op_key, claims_for(txn)))
    connector.complete(answer(txn), txn)
    op.replace(
        responses.GET,
        JWKS_URI,
        json={"keys": [op_key.as_dict(private=False), op_ec_key.as_dict(private=False)]},
    )
    txn, _ = begin(connector, txn_id="t2")
    serve_token(op, sign(op_ec_key, claims_for(txn), alg="ES256"))
    assert connector.complete(answer(txn), txn).subject == "user-42"


# --- Entra ID multi-tenant --------------------------------------------------------------------


def entra_discovery() -> dict[str, Any]:
    return discovery(f"{ENTRA}/{{tenantid}}/v2.0", userinfo_endpoint=None)


@pytest.mark.parametrize("endpoint", ["common", "organizations"])
def test_entra_multi_tenant_issuer(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, endpoint: str
) -> None:
    configured = f"{ENTRA}/{endpoint}/v2.0"
    serve_discovery(op, entra_discovery(), issuer=configured)
    serve_jwks(op, op_key)
    connector = make(issuer=configured)
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn, iss=f"{ENTRA}/{TENANT}/v2.0", tid=TENANT)))
    identity = connector.complete(answer(txn), txn)
    assert identity.issuer == configured  # exactly as configured
    assert identity.attributes["tid"] == (TENANT,)


@pytest.mark.parametrize(
    "iss_tid",
    [
        (f"{ENTRA}/{TENANT}/v2.0", "11111111-2222-3333-4444-555555555555"),  # tid of another tenant
        (f"{ENTRA}/{TENANT}/v2.0", None),
        ("https://evil.example/{TENANT}/v2.0", TENANT),
        (f"{ENTRA}/{{tenantid}}/v2.0", "{tenantid}"),
    ],
)
def test_entra_multi_tenant_issuer_must_match_tid(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, iss_tid: tuple[str, str | None]
) -> None:
    configured = f"{ENTRA}/common/v2.0"
    serve_discovery(op, entra_discovery(), issuer=configured)
    serve_jwks(op, op_key)
    connector = make(issuer=configured)
    txn, _ = begin(connector)
    iss, tid = iss_tid
    serve_token(op, sign(op_key, claims_for(txn, iss=iss, tid=tid)))
    assert rejected(connector, answer(txn), txn).code == "oidc_issuer_mismatch"


def test_entra_allowed_tenants(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    configured = f"{ENTRA}/organizations/v2.0"
    serve_discovery(op, entra_discovery(), issuer=configured)
    serve_jwks(op, op_key)
    connector = make(issuer=configured, allowed_tenant_ids=["11111111-2222-3333-4444-555555555555"])
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn, iss=f"{ENTRA}/{TENANT}/v2.0", tid=TENANT)))
    assert rejected(connector, answer(txn), txn).code == "oidc_tenant_not_allowed"


def test_entra_template_is_not_accepted_for_a_tenant_issuer(op: responses.RequestsMock, make: Any) -> None:
    configured = f"{ENTRA}/{TENANT}/v2.0"
    serve_discovery(op, entra_discovery(), issuer=configured)
    with pytest.raises(LoginError) as caught:
        make(issuer=configured).begin(BeginRequest(txn_id="t"))
    assert caught.value.code == "oidc_discovery_invalid"


# --- every rejection --------------------------------------------------------------------------


@pytest.fixture
def ready(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> tuple[OidcConnector, LoginTransaction]:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    return connector, txn


def test_alg_none_is_refused(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    serve_token(op, forge({"alg": "none", "typ": "JWT"}, claims_for(txn)))
    assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"


def test_hs256_keyed_with_the_rsa_public_key_is_refused(
    op: responses.RequestsMock, ready: Any, op_key: RSAKey
) -> None:
    connector, txn = ready
    header = {"alg": "HS256", "typ": "JWT", "kid": "op-1"}
    unsigned = forge(header, claims_for(txn)).rsplit(".", 1)[0]
    for secret in (op_key.as_pem(private=False), json.dumps(op_key.as_dict(private=False)).encode()):
        token = f"{unsigned}.{b64(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())}"
        op.upsert(
            responses.POST, TOKEN, json={"id_token": token, "access_token": "a", "token_type": "Bearer"}
        )
        assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"


def test_alg_outside_the_allowed_list_is_refused(
    op: responses.RequestsMock, make: Any, op_key: RSAKey
) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    connector = make(allowed_algs=["ES256"])
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"


def test_tampered_payload_is_refused(op: responses.RequestsMock, ready: Any, op_key: RSAKey) -> None:
    connector, txn = ready
    header, _, signature = sign(op_key, claims_for(txn)).split(".")
    evil = b64(json.dumps(claims_for(txn, sub="admin")).encode())
    serve_token(op, f"{header}.{evil}.{signature}")
    assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"


def test_token_signed_by_another_key_with_a_known_kid_is_refused(
    op: responses.RequestsMock, ready: Any
) -> None:
    connector, txn = ready
    impostor = RSAKey.generate_key(2048, parameters={"kid": "op-1"})
    serve_token(op, sign(impostor, claims_for(txn)))
    assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"


def test_unknown_kid_refetches_once_then_refuses(
    op: responses.RequestsMock, ready: Any, state: CountingStateStore
) -> None:
    connector, txn = ready
    stranger = RSAKey.generate_key(2048, parameters={"kid": "nobody-knows"})
    serve_token(op, sign(stranger, claims_for(txn)))
    assert rejected(connector, answer(txn), txn).code == "oidc_unknown_key"
    jwks_fetches = [c for c in op.calls if c.request.url == JWKS_URI]
    assert len(jwks_fetches) == 2  # the first load, and exactly one refetch
    # A flood of such tokens within the window does not reach the OP again.
    for _ in range(5):
        assert rejected(connector, answer(txn), txn).code == "oidc_unknown_key"
    assert len([c for c in op.calls if c.request.url == JWKS_URI]) == 2


def test_after_the_op_rotates_its_key_every_workers_copy_is_renewed(
    op: responses.RequestsMock, make: Any, op_key: RSAKey, state: CountingStateStore, clock: FrozenClock
) -> None:
    """Two workers (each its own in-process cache) sharing one state store: an OP that rotates its key without
    publishing it ahead must not leave the second worker refusing good tokens until a fleet-wide window ends."""
    serve_discovery(op, discovery(userinfo_endpoint=None))
    serve_jwks(op, op_key)
    workers = [make(), OidcConnector(connection(), public_url=PUBLIC_URL, fetcher=make_fetcher(), state=state,
                                     clock=clock, cache=OidcMetadataCache())]
    txns = [begin(w, txn_id=f"txn-{i}")[0] for i, w in enumerate(workers)]
    new_key = RSAKey.generate_key(2048, parameters={"kid": "op-2"}, private=True)
    for worker, txn in zip(workers, txns, strict=True):  # each has the old set in its cache
        serve_token(op, sign(op_key, claims_for(txn)))
        worker.complete(answer(txn), txn)
    op.replace(responses.GET, JWKS_URI, json={"keys": [new_key.as_dict(private=False)]})
    txns = [begin(w, txn_id=f"txn-new-{i}")[0] for i, w in enumerate(workers)]
    for worker, txn in zip(workers, txns, strict=True):
        serve_token(op, sign(new_key, claims_for(txn)))
        assert worker.complete(answer(txn), txn).subject


def test_unknown_kid_refetch_window_reopens(
    op: responses.RequestsMock, ready: Any, clock: FrozenClock
) -> None:
    connector, txn = ready
    stranger = RSAKey.generate_key(2048, parameters={"kid": "nobody-knows"})
    serve_token(op, sign(stranger, claims_for(txn, exp=int(NOW) + 3600)))
    rejected(connector, answer(txn), txn)
    clock.advance(11)
    rejected(connector, answer(txn), txn)
    assert len([c for c in op.calls if c.request.url == JWKS_URI]) == 3


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"iss": "https://evil.example.com"}, "oidc_issuer_mismatch"),
        ({"iss": ISSUER + "/"}, "oidc_issuer_mismatch"),
        ({"iss": None}, "oidc_issuer_mismatch"),
        ({"aud": "someone-else"}, "oidc_audience_mismatch"),
        ({"aud": None}, "oidc_audience_mismatch"),
        ({"aud": [CLIENT_ID, "other"]}, "oidc_audience_mismatch"),  # several audiences, no azp
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "oidc_audience_mismatch"),
        ({"azp": "other"}, "oidc_audience_mismatch"),
        ({"exp": int(NOW) - 121}, "oidc_token_expired"),
        ({"exp": None}, "oidc_invalid_token"),
        ({"iat": int(NOW) + 121}, "oidc_token_not_yet_valid"),
        ({"nbf": int(NOW) + 121}, "oidc_token_not_yet_valid"),
        ({"iat": None}, "oidc_invalid_token"),
        ({"nonce": "another-nonce"}, "oidc_nonce_mismatch"),
        ({"nonce": None}, "oidc_nonce_mismatch"),
        ({"sub": None}, "oidc_invalid_token"),
        ({"exp": 10**400}, "oidc_invalid_token"),  # a JSON integer beyond a float (was a 500)
        ({"iat": -(10**400)}, "oidc_invalid_token"),
        ({"nbf": 10**400}, "oidc_invalid_token"),
        ({"nbf": str(int(NOW) + 3600)}, "oidc_invalid_token"),  # was ignored, unlike exp and iat
        ({"nbf": True}, "oidc_invalid_token"),
    ],
)
def test_id_token_claims_are_checked(
    op: responses.RequestsMock, ready: Any, op_key: RSAKey, overrides: dict[str, Any], code: str
) -> None:
    connector, txn = ready
    serve_token(op, sign(op_key, claims_for(txn, **overrides)))
    assert rejected(connector, answer(txn), txn).code == code


def test_clock_skew_is_tolerated(op: responses.RequestsMock, ready: Any, op_key: RSAKey) -> None:
    connector, txn = ready
    serve_token(op, sign(op_key, claims_for(txn, exp=int(NOW) - 100, iat=int(NOW) + 100, nbf=int(NOW) + 100)))
    assert connector.complete(answer(txn), txn).subject == "user-42"


def test_several_audiences_with_our_azp_are_accepted(
    op: responses.RequestsMock, ready: Any, op_key: RSAKey
) -> None:
    connector, txn = ready
    serve_token(op, sign(op_key, claims_for(txn, aud=[CLIENT_ID, "api"], azp=CLIENT_ID)))
    assert connector.complete(answer(txn), txn).subject == "user-42"


@pytest.mark.parametrize("state_value", [None, "", "txn-other"])
def test_state_missing_or_mismatched(op: responses.RequestsMock, ready: Any, state_value: str | None) -> None:
    connector, txn = ready
    assert rejected(connector, answer(txn, state=state_value), txn).code == "oidc_state_mismatch"
    assert not [c for c in op.calls if c.request.url == TOKEN]  # the code was never redeemed


def test_no_transaction(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    assert rejected(connector, answer(txn), None).code == "oidc_state_mismatch"


def test_transaction_of_another_connection(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    other = dataclasses.replace(txn, connection_id="conn-2")
    assert rejected(connector, answer(other), other).code == "oidc_state_mismatch"


def test_upstream_error_access_denied(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    error = rejected(
        connector,
        answer(txn, code=None, error="access_denied", error_description='User said "no"\n<b>thanks</b>\x00'),
        txn,
    )
    assert error.code == "oidc_upstream_error"
    assert "access_denied" in error.message
    assert "\n" not in error.message and "\x00" not in error.message and '"' not in error.message
    assert not [c for c in op.calls if c.request.url == TOKEN]


def test_missing_code(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    assert rejected(connector, answer(txn, code=None), txn).code == "oidc_invalid_response"


# --- RFC 9207 mix-up defence ------------------------------------------------------------------


@pytest.fixture
def ready_9207(
    op: responses.RequestsMock, make: Any, op_key: RSAKey
) -> tuple[OidcConnector, LoginTransaction]:
    serve_discovery(
        op, discovery(userinfo_endpoint=None, authorization_response_iss_parameter_supported=True)
    )
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    return connector, txn


@pytest.mark.parametrize("iss", [None, "https://attacker.example.com", ISSUER + "/"])
def test_mixup_iss_parameter_wrong_or_missing(
    op: responses.RequestsMock, ready_9207: Any, iss: str | None
) -> None:
    connector, txn = ready_9207
    assert rejected(connector, answer(txn, iss=iss), txn).code == "oidc_issuer_mismatch"
    assert not [c for c in op.calls if c.request.url == TOKEN]


def test_mixup_iss_parameter_correct(ready_9207: Any) -> None:
    connector, txn = ready_9207
    assert connector.complete(answer(txn, iss=ISSUER), txn).subject == "user-42"


@pytest.mark.parametrize("iss", [None, "https://attacker.example.com"])
def test_an_error_response_is_checked_for_iss_before_its_error_is_shown(
    op: responses.RequestsMock, ready_9207: Any, iss: str | None
) -> None:
    """RFC 9207 §2.4: error responses carry `iss` too; a mixed-up OP's error text never reaches the app."""
    connector, txn = ready_9207
    answer_ = answer(txn, code=None, iss=iss, error="access_denied", error_description="call +1-555-0100")
    error = rejected(connector, answer_, txn)
    assert error.code == "oidc_issuer_mismatch" and "555" not in error.message
    ours = rejected(connector, answer(txn, code=None, iss=ISSUER, error="access_denied"), txn)
    assert ours.code == "oidc_upstream_error"


def test_iss_parameter_checked_even_when_not_advertised(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    assert (
        rejected(connector, answer(txn, iss="https://attacker.example.com"), txn).code
        == "oidc_issuer_mismatch"
    )


# --- the OP unavailable -----------------------------------------------------------------------


def test_discovery_down(op: responses.RequestsMock, make: Any) -> None:
    op.get(f"{ISSUER}/.well-known/openid-configuration", body=requests.ConnectionError("refused"))
    with pytest.raises(LoginError) as caught:
        make().begin(BeginRequest(txn_id="t"))
    assert caught.value.code == "oidc_provider_unavailable"
    assert caught.value.status == 503
    assert "could not be reached" in caught.value.message


def test_discovery_http_error(op: responses.RequestsMock, make: Any) -> None:
    op.get(f"{ISSUER}/.well-known/openid-configuration", status=500, body="oops")
    with pytest.raises(LoginError) as caught:
        make().begin(BeginRequest(txn_id="t"))
    assert (caught.value.code, caught.value.status) == ("oidc_provider_unavailable", 502)
    assert "could not be used" in caught.value.message and "reached" not in caught.value.message


def test_discovery_keeps_the_last_good_copy(
    op: responses.RequestsMock, make: Any, clock: FrozenClock, cache: OidcMetadataCache
) -> None:
    serve_discovery(op)
    connector = make()
    begin(connector)
    clock.advance(cache.ttl + 1)
    op.replace(responses.GET, f"{ISSUER}/.well-known/openid-configuration", status=503)
    begin(connector, txn_id="t2")  # the last good copy
    begin(connector, txn_id="t3")  # ... without hammering the OP before retry_after
    urls = [c.request.url for c in op.calls]
    assert urls.count(f"{ISSUER}/.well-known/openid-configuration") == 2


def test_discovery_with_another_issuer_is_refused(op: responses.RequestsMock, make: Any) -> None:
    serve_discovery(op, discovery("https://other.example.com"))
    with pytest.raises(LoginError) as caught:
        make().begin(BeginRequest(txn_id="t"))
    assert caught.value.code == "oidc_discovery_invalid"


@pytest.mark.parametrize(
    "overrides",
    [
        {"token_endpoint": "http://op.example.com/token"},
        {"jwks_uri": None},
        {"authorization_endpoint": "javascript:alert(1)"},
    ],
)
def test_discovery_endpoints_are_validated(
    op: responses.RequestsMock, make: Any, overrides: dict[str, Any]
) -> None:
    serve_discovery(op, discovery(**overrides))
    with pytest.raises(LoginError) as caught:
        make().begin(BeginRequest(txn_id="t"))
    assert caught.value.code == "oidc_discovery_invalid"


@pytest.mark.parametrize("failure", [requests.ConnectionError("down"), 500])
def test_jwks_endpoint_down(op: responses.RequestsMock, make: Any, op_key: RSAKey, failure: Any) -> None:
    serve_discovery(op, discovery(userinfo_endpoint=None))
    if isinstance(failure, int):
        op.get(JWKS_URI, status=failure)
    else:
        op.get(JWKS_URI, body=failure)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    error = rejected(connector, answer(txn), txn)
    assert error.code == "oidc_provider_unavailable"
    assert error.status in (502, 503)


def test_token_endpoint_timeout(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    op.post(TOKEN, body=requests.Timeout("read timed out"))
    error = rejected(connector, answer(txn), txn)
    assert (error.code, error.status) == ("oidc_provider_unavailable", 503)


def test_a_token_answer_too_large_is_said_so_not_unreachable(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    op.post(TOKEN, body=b"{" + b" " * (2 * 1024 * 1024) + b"}", content_type="application/json")
    error = rejected(connector, answer(txn), txn)
    assert (error.code, error.status) == ("oidc_provider_unavailable", 503)
    assert "too large" in error.message and "could not be reached" not in error.message


@pytest.mark.parametrize(("id_token", "words"), [
    ("e30." + "A" * (64 * 1024) + ".sig", "too large"),
    ("eyJhbGciOiJSU0EtT0FFUCJ9.k.iv.ct.tag", "encrypted ID token"),
])
def test_unusable_id_tokens_say_why(op: responses.RequestsMock, ready: Any, id_token: str, words: str) -> None:
    connector, txn = ready
    op.post(TOKEN, json={"access_token": "a", "token_type": "Bearer", "id_token": id_token})
    error = rejected(connector, answer(txn), txn)
    assert error.code == "oidc_invalid_response" and words in error.message
    assert "signature" not in error.message


def test_token_endpoint_refuses_the_code(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    op.post(TOKEN, status=400, json={"error": "invalid_grant", "error_description": "code expired"})
    error = rejected(connector, answer(txn), txn)
    assert error.code == "oidc_token_exchange_failed"
    assert "invalid_grant" in error.message


def test_token_response_without_id_token(op: responses.RequestsMock, ready: Any) -> None:
    connector, txn = ready
    op.post(TOKEN, json={"access_token": "a", "token_type": "Bearer"})
    assert rejected(connector, answer(txn), txn).code == "oidc_token_exchange_failed"


def test_userinfo_down(op: responses.RequestsMock, make: Any, op_key: RSAKey) -> None:
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    serve_token(op, sign(op_key, claims_for(txn)))
    op.get(USERINFO, body=requests.Timeout("slow"))
    assert rejected(connector, answer(txn), txn).code == "oidc_provider_unavailable"


# --- real vendors' documents ------------------------------------------------------------------


def vendor_files(suffix: str) -> list[Path]:
    return sorted(VENDOR.glob(f"*-{suffix}.json")) if VENDOR.is_dir() else []


needs_vendor_samples = pytest.mark.skipif(
    not VENDOR.is_dir(), reason=f"vendor samples not present at {VENDOR} (shared test data, outside the repo)"
)

# The issuer a connection would be configured with for each vendor document (None: the document's own).
CONFIGURED_ISSUER = {
    "entra-id-common-discovery.json": f"{ENTRA}/common/v2.0",
    "google-discovery.json": "https://accounts.google.com",  # legacy document says "accounts.google.com"
}


@needs_vendor_samples
@pytest.mark.parametrize("path", vendor_files("discovery"), ids=lambda p: p.name)
def test_vendor_discovery_documents_parse(path: Path) -> None:
    body = path.read_bytes()
    doc = json.loads(body.decode("utf-8-sig"))
    configured = CONFIGURED_ISSUER.get(path.name, doc["issuer"])
    metadata = parse_provider_metadata(body, configured)
    assert metadata.issuer == configured
    assert metadata.token_endpoint == doc["token_endpoint"]
    assert metadata.jwks_uri == doc["jwks_uri"]
    if path.name == "entra-id-common-discovery.json":
        assert metadata.tenant_issuer(TENANT) == f"{ENTRA}/{TENANT}/v2.0"


@needs_vendor_samples
def test_vendor_documents_are_all_covered() -> None:
    assert len(vendor_files("discovery")) >= 8 and len(vendor_files("jwks")) >= 7
    assert vendor_files("discovery")[0].read_bytes()  # read in place


@needs_vendor_samples
def test_entra_tenant_document_with_a_bom() -> None:
    body = (VENDOR / "entra-id-tenant-discovery.json").read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")
    issuer = f"https://sts.windows.net/{TENANT}/"
    assert parse_provider_metadata(body, issuer).issuer == issuer


@needs_vendor_samples
@pytest.mark.parametrize("path", vendor_files("jwks"), ids=lambda p: p.name)
def test_vendor_jwks_parse(path: Path) -> None:
    jwks = parse_jwks(path.read_bytes(), path.name)
    raw = json.loads(path.read_bytes().decode("utf-8-sig"))["keys"]
    signing = [k for k in raw if k.get("use", "sig") == "sig"]
    assert len(jwks.keys) == len(signing) >= 1
    assert all(k.kid for k in jwks.keys)
    if path.name == "keycloak-jwks.json":
        assert any("use='enc'" in s for s in jwks.skipped)


# --- a hostile or broken OP's JWKS and documents -----------------------------------------------------------


def test_jwks_keys_that_cannot_be_used_are_skipped_not_fatal(op_key: RSAKey) -> None:
    good = op_key.as_dict(private=False)
    odd_curve = {"kty": "EC", "crv": "P-192", "kid": "zz", "x": "AAAA", "y": "AAAA"}
    odd_okp = {"kty": "OKP", "crv": "Foo", "kid": "zy", "x": "AAAA"}
    n = 2**3072 - 1  # odd, and larger than the exponent: cryptography takes it; verifying would cost seconds
    huge_e = {"kty": "RSA", "kid": "ze", "n": b64(n.to_bytes(384, "big")), "e": b64((2**3000 + 1).to_bytes(376, "big"))}
    huge_n = {"kty": "RSA", "kid": "zn", "n": b64((2**9000 - 1).to_bytes(1125, "big")), "e": "AQAB"}
    jwks = parse_jwks(json.dumps({"keys": [odd_curve, odd_okp, huge_e, huge_n, good]}).encode(), "test")
    assert [k.kid for k in jwks.keys] == [op_key.kid]
    assert len(jwks.skipped) == 4
    assert any("exponent out of range" in s for s in jwks.skipped)
    assert any("modulus of 9000 bits" in s for s in jwks.skipped)


def test_at_most_a_few_keys_per_kid_are_kept(op_key: RSAKey) -> None:
    same = [dict(op_key.as_dict(private=False)) for _ in range(50)]
    jwks = parse_jwks(json.dumps({"keys": same}).encode(), "test")
    assert len(jwks.by_kid(op_key.kid)) == 4 and len(jwks.skipped) == 46


def test_deeply_nested_json_from_the_op_is_a_clean_refusal(op: responses.RequestsMock, make: Any,
                                                           op_key: RSAKey) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    op.get(f"{ISSUER}/.well-known/openid-configuration", body=nested)
    with pytest.raises(LoginError) as exc:
        begin(make())
    assert exc.value.code == "oidc_discovery_invalid"
    op.reset()
    # in a signed ID token's payload
    serve_discovery(op)
    serve_jwks(op, op_key)
    connector = make()
    txn, _ = begin(connector)
    claims = "{" + '"a":' + "[" * 20_000 + "]" * 20_000 + "}"
    header = b64(json.dumps({"alg": "RS256", "kid": op_key.kid}).encode())
    signing_input = f"{header}.{b64(claims.encode())}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = op_key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{b64(signature)}"
    serve_token(op, token)
    assert rejected(connector, answer(txn), txn).code == "oidc_signature_invalid"

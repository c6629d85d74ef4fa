"""The token, introspection and revocation endpoints on authlib's framework-neutral OAuth 2.0 core.

authlib supplies the endpoint skeletons and their checklists: AuthorizationServer (grant dispatch,
client authentication registry), AuthorizationCodeGrant (RFC 6749 §4.1.3: client authenticated, code
issued to this client, redirect_uri identical), RefreshTokenGrant (§6: client, scope not widened),
CodeChallenge (RFC 7636 §4.6, RFC 9700 §4.8), IntrospectionEndpoint (RFC 7662) and RevocationEndpoint
(RFC 7009). This module supplies the storage hooks and replaces four pieces, each for a reason:

- the OAuth2Request: built from our HttpRequest; authlib's constructor refuses every non-https URL
  except loopback, but transport policy belongs to Settings (production refuses an http public URL);
- client_secret_basic: authlib decodes the credentials with `unquote`, RFC 6749 §2.3.1 requires
  form-urlencoding (`+` is a space): `unquote_plus`;
- the S256 comparison: constant time (authlib compares with ==), and only S256 exists;
- error responses: bodies never echo request values, invalid_client is 401 + WWW-Authenticate only
  when Basic was used (authlib uses 401 whenever Basic is merely allowed), and every RFC 7009/7662
  error is a 400 (authlib's unsupported_token_type is a 401).

Tokens are minted here (not by OpenIDCode): one signing path for the code and refresh grants, the
injected clock, per-app key selection and the broker's extra claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedGrantTypeError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from broker.issuer.keys import published_keys, select_signing_key
from broker.issuer.messages import Headers, HttpRequest, HttpResponse, SecretVerifier
from broker.issuer.records import TAGGED_SEPARATOR, CodeRecord, GrantRecord, Ledger, RefreshRecord
from broker.issuer.tokens import ACCESS_TOKEN_TYP, InvalidToken, TokenCodec, at_hash, profile_claims
from broker.model import App, Profile, Tenant
from broker.ports import Clock, ConfigReader

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JSON_HEADERS = {"Content-Type": "application/json", **NO_STORE}


@dataclass(frozen=True)
class IssuerContext:
    """What every per-request server needs: the Issuer's collaborators and the tenant in hand."""

    tenant: Tenant
    issuer: str
    config: ConfigReader
    ledger: Ledger
    codec: TokenCodec
    clock: Clock
    secrets: SecretVerifier


@dataclass
class Outcome:
    """What an endpoint call did, for the audit event (never token values)."""

    client_id: str | None = None
    connection: str | None = None
    grant_type: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# A revoked family's deny entry outlives its grant record and refresh tokens by this much more: those may be
# written by a rotation that was already past its checks when the revocation happened.
REVOCATION_MARGIN = 300


def grant_ttl(app: App, scope: tuple[str, ...]) -> int:
    """How long anything a grant issued can live: the horizon for its denylist entries."""
    ttl = max(app.access_token_ttl, app.id_token_ttl)
    if offers_refresh(app, scope):
        ttl = max(ttl, app.refresh_token_ttl)
    return ttl + 60


def offers_refresh(app: App, scope: tuple[str, ...]) -> bool:
    """Refresh tokens only when the grant's scope has offline_access and the app allows it."""
    return "offline_access" in scope and "offline_access" in app.allowed_scopes


SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
AUTH_FAILED = ("Client authentication failed: the client is unknown, its secret is wrong, or it authenticated in a "
               "way its registration does not allow (a secret for a public app, none for a confidential one).")


def registered_auth_method(app: App) -> str:
    return "none" if app.public else app.token_endpoint_auth_method


# --- authlib models ----------------------------------------------------------------------------


class Client(ClientMixin):  # type: ignore[misc]
    """authlib's ClientMixin over a frozen App."""

    def __init__(self, app: App, secrets_: SecretVerifier) -> None:
        self.app = app
        self.client_id = app.client_id
        self._secrets = secrets_

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required (checked at the authorization endpoint)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.app.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.app.public or not self.app.client_secret_hash:
            return False
        return self._secrets.verify(client_secret, self.app.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # A confidential app proves its secret in the Authorization header or in the body, whichever of the two it
        # registered (OIDC Registration §2 names the method an app *requests*): both carry the same secret, and
        # client code that posts it where the registration did not say is common. A public app has no secret:
        # `none` only, and a confidential one never `none`.
        registered = registered_auth_method(self.app)
        if registered in SECRET_AUTH_METHODS:
            return method in SECRET_AUTH_METHODS
        return method == registered

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "authorization_code":
            return True
        return grant_type == "refresh_token" and "offline_access" in self.app.allowed_scopes


@dataclass(frozen=True)
class Code:
    """A redeemed authorization code (authlib's AuthorizationCodeMixin)."""

    record: CodeRecord

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return " ".join(self.record.scope)


@dataclass(frozen=True)
class RefreshToken:
    """A presented, live refresh token (authlib's TokenMixin for the refresh grant and RFC 7009/7662)."""

    value: str
    record: RefreshRecord

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.record.client_id

    def get_scope(self) -> str:
        return " ".join(self.record.scope)

    def is_expired(self) -> bool:
        return False  # the StateStore drops it at expiry

    def is_revoked(self) -> bool:
        return False  # a revoked family's tokens are never found (Ledger.grant)


@dataclass(frozen=True)
class AccessToken:
    """A verified access token of this tenant (for RFC 7009/7662)."""

    claims: Mapping[str, Any]

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.claims.get("client_id")

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def is_expired(self) -> bool:
        return False  # verified against the clock when found

    def is_revoked(self) -> bool:
        return False  # checked against the denylist when found


@dataclass(frozen=True)
class SpentRefreshToken:
    """A refresh token already rotated away (its family still stands), presented for revocation: the client
    signing out while another of its tabs refreshed. Revoking it ends the family, as presenting it at the
    token endpoint would."""

    gid: str
    client_id: str

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id


AnyToken = AccessToken | RefreshToken


class Request(OAuth2Request):  # type: ignore[misc]
    """authlib's OAuth2Request over our HttpRequest (without authlib's transport check, see above)."""

    def __init__(self, req: HttpRequest) -> None:
        # Deliberately not calling OAuth2Request.__init__: it raises InsecureTransportError for http
        # URLs. These are the attributes it sets.
        self.method = req.method.upper()
        self.uri = req.url
        self.headers = Headers(req.headers)
        self._body = None
        self._form = {k: v for k, v in req.form.items() if v != ""}  # RFC 6749 §3.2: empty = omitted
        self._args = dict(req.query)
        self.payload = BasicOAuth2Payload(self._form)
        self.client: Client | None = None
        self.auth_method: str | None = None
        self.user: Profile | None = None
        self.authorization_code: Code | None = None
        self.refresh_token: RefreshToken | None = None
        self.credential: Any = None
        self._scope: str | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return self._args


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: base64 of form-urlencoded id ':' form-urlencoded secret. None if absent/bad."""
    auth = headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError):  # UnicodeEncodeError: a header value that is not even ASCII
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def uses_basic(headers: Mapping[str, str]) -> bool:
    return headers.get("authorization", "").strip().lower().startswith("basic")


def _client_secret_basic(query_client: Any, request: Request) -> Client | None:
    creds = basic_credentials(request.headers)
    if creds is None or not creds[0] or not creds[1]:
        return None
    client: Client | None = query_client(creds[0])
    if client is None or not client.check_client_secret(creds[1]):
        # a failed Basic authentication is final: authlib would otherwise go on to the next method and let a
        # public app in on the client_id of the body, whatever the header said
        raise InvalidClientError(status_code=401, description=AUTH_FAILED)
    return client


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _compare_s256(code_verifier: str, code_challenge: str) -> bool:
    return hmac.compare_digest(s256(code_verifier).encode("ascii"), code_challenge.encode("ascii"))


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 at the token endpoint: S256 only, compared in constant time; required for public apps."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": _compare_s256}

    def get_authorization_code_challenge(self, authorization_code: Code) -> str | None:
        return authorization_code.record.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: Code) -> str | None:
        return authorization_code.record.code_challenge_method


# --- grants ------------------------------------------------------------------------------------

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: TenantServer

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        return self.server.redeem_code(code, client)

    def delete_authorization_code(self, authorization_code: Code) -> None:
        """Nothing to do: the code was consumed atomically (StateStore.take) when it was found."""

    def authenticate_user(self, authorization_code: Code) -> Profile:
        return authorization_code.record.profile

    def generate_token(self, **_: Any) -> dict[str, Any]:
        request: Request = self.request
        assert request.client is not None and request.authorization_code is not None
        return self.server.issue_for_code(request.client.app, request.authorization_code.record)


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: TenantServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        return self.server.find_refresh(refresh_token, detect_reuse=True)

    def authenticate_user(self, refresh_token: RefreshToken) -> GrantRecord:
        # Rotation: consume the presented token atomically; losing a race is a reuse.
        return self.server.rotate_refresh(refresh_token)

    def issue_token(self, user: GrantRecord, refresh_token: RefreshToken) -> dict[str, Any]:
        request: Request = self.request
        assert request.client is not None
        scope = request.payload.scope
        narrowed = tuple(scope.split()) if scope else user.scope
        return self.server.issue_for_refresh(request.client.app, user, narrowed)

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        """Nothing to do: rotate_refresh consumed it."""


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 for confidential apps, about their own tokens; anything else is {"active": false}."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    server: TenantServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> AnyToken | None:
        return self.server.find_token(token_string, token_type_hint)

    def check_params(self, request: Request, client: Client) -> None:
        _check_token_param(request)

    def check_permission(self, token: AccessToken | RefreshToken, client: Client, request: Request) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: AccessToken | RefreshToken) -> dict[str, Any]:
        return self.server.introspection_payload(token)


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: every app may revoke its own tokens; unknown or foreign-tenant tokens are a 200."""

    CLIENT_AUTH_METHODS = AUTH_METHODS
    server: TenantServer

    def query_token(self, token_string: str,
                    token_type_hint: str | None) -> AnyToken | SpentRefreshToken | None:
        found = self.server.find_token(token_string, token_type_hint)
        return found if found is not None else self.server.find_spent_refresh(token_string)

    def check_params(self, request: Request, client: Client) -> None:
        _check_token_param(request)

    def revoke_token(self, token: AccessToken | RefreshToken | SpentRefreshToken, request: Request) -> None:
        self.server.revoke(token)


def _check_token_param(request: Request) -> None:
    """`token` is required; `token_type_hint` only orders the search, so a value we do not know is ignored
    rather than refused (RFC 7662 §2.1, RFC 7009 §2.1: the search extends to every supported type)."""
    if not request.form.get("token"):
        raise InvalidRequestError(description="The token parameter is required.")


# --- the per-tenant server ---------------------------------------------------------------------


class TenantServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's AuthorizationServer for one tenant and one request (cheap to build; holds no state)."""

    def __init__(self, ctx: IssuerContext) -> None:
        super().__init__(scopes_supported=None)
        self.ctx = ctx
        self.outcome = Outcome()
        self.register_client_auth_method("client_secret_basic", _client_secret_basic)
        self.register_grant(CodeGrant, [S256Challenge(required=True)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Introspection)
        self.register_endpoint(Revocation)

    # authlib hooks ------------------------------------------------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        app = self.ctx.config.app(self.ctx.tenant.id, client_id)
        if app is None or app.tenant_id != self.ctx.tenant.id:
            return None
        return Client(app, self.ctx.secrets)

    def save_token(self, token: dict[str, Any], request: Request) -> None:
        """Nothing to do: issue_for_* stored what needs storing before returning the token."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "after_authenticate_client":
            client: Client = kwargs["client"]
            grant = kwargs["grant"]
            self.outcome.client_id = client.client_id
            # RFC 6749 §3.2.1: a client_id in the body must name the authenticated client.
            form_id = grant.request.form.get("client_id")
            if form_id is not None and form_id != client.client_id:
                raise InvalidClientError(description="client_id does not match the authenticated client.")

    def create_oauth2_request(self, request: HttpRequest) -> Request:
        return Request(request)

    def handle_response(self, status: int, body: Any, headers: Any) -> HttpResponse:
        return HttpResponse(status=status, headers=dict(JSON_HEADERS), body=dict(body))

    def handle_error_response(self, request: Request, error: Any) -> HttpResponse:
        return self.error_response(request.headers, error.error, _safe_description(error))

    def error_response(self, headers: Mapping[str, str], code: str, description: str) -> HttpResponse:
        """RFC 6749 §5.2."""
        self.outcome.error = code
        out = dict(JSON_HEADERS)
        status = 500 if code == "server_error" else 400
        if code == "invalid_client" and uses_basic(headers):
            status = 401
            out["WWW-Authenticate"] = f'Basic realm="{self.ctx.issuer}", error="invalid_client"'
        body = {"error": code, "error_description": description}
        return HttpResponse(status=status, headers=out, body=body)

    # codes --------------------------------------------------------------------------------------

    def redeem_code(self, code: str, client: Client) -> Code | None:
        """Consume the code (one winner); a second redemption revokes the grant the first one made."""
        ledger = self.ctx.ledger
        tenant_id = self.ctx.tenant.id
        record = ledger.take_code(tenant_id, code)
        if record is None:
            gid = ledger.code_grant(tenant_id, code)
            if gid is not None and self._grant_is_ours(gid):
                # RFC 6749 §4.1.2: used twice (or presented after expiry): revoke what it issued.
                ledger.revoke_grant(gid, grant_ttl(client.app, ("offline_access",)))
                self.outcome.details["code_reuse"] = True
            return None
        self.outcome.details["grant"] = record.gid
        if record.tenant_id != self.ctx.tenant.id or record.client_id != client.client_id:
            self.outcome.details["code_client_mismatch"] = True
            return None
        if record.expires_at <= self.ctx.clock.now():
            self.outcome.details["code_expired"] = True
            return None
        if not self._stands(record.client_id, record.app_id, record.profile.connection, record.connection_id):
            return None
        return Code(record)

    def _stands(self, client_id: str, app_id: str | None, connection: str, connection_id: str | None) -> bool:
        """Whether what a grant was issued through still stands: its app (the same app, not one re-created
        under its client_id) and its connection, still enabled. Deleting an app, or deleting or disabling a
        connection, ends every code, refresh token and access token issued through it."""
        tenant_id = self.ctx.tenant.id
        app = self.ctx.config.app(tenant_id, client_id)
        if app is None or (app_id is not None and app.id != app_id):
            self.outcome.details["grant_ended"] = "app_removed"
            return False
        conn = self.ctx.config.connection(tenant_id, connection)
        if conn is None or not conn.enabled or (connection_id is not None and conn.id != connection_id):
            self.outcome.details["grant_ended"] = "connection_removed_or_disabled"
            return False
        return True

    def _standing_grant(self, gid: str) -> GrantRecord | None:
        """The grant `gid` of this tenant, if it still stands (see _stands)."""
        grant = self.ctx.ledger.grant(gid)
        if grant is None or grant.tenant_id != self.ctx.tenant.id:
            return None
        if not self._stands(grant.client_id, grant.app_id, grant.profile.connection, grant.connection_id):
            return None
        return grant

    def issue_for_code(self, app: App, record: CodeRecord) -> dict[str, Any]:
        grant = GrantRecord(
            gid=record.gid,
            tenant_id=record.tenant_id,
            client_id=record.client_id,
            scope=record.scope,
            profile=record.profile,
            auth_time=record.auth_time,
            sid=record.sid,
            app_id=record.app_id,
            connection_id=record.connection_id,
        )
        return self._issue(app, grant, record.scope, nonce=record.nonce)

    # refresh tokens -----------------------------------------------------------------------------

    def find_refresh(self, value: str, *, detect_reuse: bool) -> RefreshToken | None:
        ledger = self.ctx.ledger
        record = ledger.peek_refresh(value)
        if record is None:
            gid = self._family_of(value) if detect_reuse else None
            if gid is not None:
                self._revoke_family(gid)
            return None
        if record.tenant_id != self.ctx.tenant.id or self._standing_grant(record.gid) is None:
            return None
        return RefreshToken(value, record)

    def rotate_refresh(self, token: RefreshToken) -> GrantRecord:
        ledger = self.ctx.ledger
        taken = ledger.take_refresh(token.value)
        grant = self._standing_grant(token.record.gid)
        if taken is None or grant is None:
            self._revoke_family(token.record.gid)
            raise InvalidGrantError(description="The refresh token is invalid.")
        self.outcome.details["grant"] = grant.gid
        return grant

    def issue_for_refresh(self, app: App, grant: GrantRecord, scope: tuple[str, ...]) -> dict[str, Any]:
        return self._issue(app, grant, scope, nonce=None, refresh_scope=grant.scope)

    def _family_of(self, value: str) -> str | None:
        """The grant id of a refresh token that could still have been live (rotated away, or revoked): read
        from a tagged token itself, or from the store for an untagged one. None if the broker never issued
        it, or its time is over."""
        if TAGGED_SEPARATOR in value:
            return tagged_refresh_family(self.ctx.secrets, value, self.ctx.clock.now())
        return self.ctx.ledger.refresh_family(value)

    def _grant_is_ours(self, gid: str) -> bool:
        """Whether revoking grant `gid` is this tenant's business: its record is this tenant's, or gone (then
        the revocation only denies a redemption still in flight). Another tenant's endpoint never ends it."""
        grant = self.ctx.ledger.grant(gid)
        return grant is None or grant.tenant_id == self.ctx.tenant.id

    def _revoke_family(self, gid: str) -> None:
        app = None
        ledger = self.ctx.ledger
        if ledger.grant_revoked(gid):
            # Already revoked (by a concurrent reuse, say): its deny entry lasts as long as the family could.
            # Writing it again with a shorter time would let a token still in flight outlive it.
            self.outcome.details["refresh_reuse"] = True
            return
        grant = ledger.grant(gid)
        if grant is not None and grant.tenant_id != self.ctx.tenant.id:
            return  # another tenant's refresh token, presented here: unknown here, and left alone
        if grant is not None:
            app = self.ctx.config.app(self.ctx.tenant.id, grant.client_id)
        # No grant record and no deny entry: it has expired, and so have its tokens; a short deny entry
        # only covers a redemption still in flight.
        ttl = grant_ttl(app, ("offline_access",)) + REVOCATION_MARGIN if app else 3600
        ledger.revoke_grant(gid, ttl)
        self.outcome.details["refresh_reuse"] = True

    # minting ------------------------------------------------------------------------------------

    def _issue(
        self,
        app: App,
        grant: GrantRecord,
        scope: tuple[str, ...],
        *,
        nonce: str | None,
        refresh_scope: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        ctx = self.ctx
        now = ctx.clock.now()
        iat = int(now)
        key = select_signing_key(ctx.config.signing_keys(ctx.tenant.id), app.id_token_signed_response_alg, now)
        profile = grant.profile
        jti = secrets.token_urlsafe(16)
        access_claims: dict[str, Any] = {
            "iss": ctx.issuer,
            "sub": profile.sub,
            "aud": app.client_id,
            "client_id": app.client_id,
            "scope": " ".join(scope),
            "iat": iat,
            "exp": iat + app.access_token_ttl,
            "jti": jti,
            "sid": grant.sid,
            "gid": grant.gid,
            "auth_time": int(grant.auth_time),
        }
        access_token = ctx.codec.sign(key, access_claims, typ=ACCESS_TOKEN_TYP)
        token: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": app.access_token_ttl,
            "scope": " ".join(scope),
        }
        if "openid" in scope:
            id_claims = profile_claims(profile, scope)
            id_claims.update(
                {
                    "iss": ctx.issuer,
                    "aud": app.client_id,
                    "azp": app.client_id,
                    "iat": iat,
                    "exp": iat + app.id_token_ttl,
                    "auth_time": int(grant.auth_time),
                    "sid": grant.sid,
                    "at_hash": at_hash(access_token, key.alg),
                }
            )
            if nonce is not None:
                id_claims["nonce"] = nonce
            if profile.amr:
                id_claims["amr"] = list(profile.amr)
            if profile.acr:
                id_claims["acr"] = profile.acr
            token["id_token"] = ctx.codec.sign(key, id_claims, typ="JWT")

        family_scope = refresh_scope if refresh_scope is not None else scope
        ttl = grant_ttl(app, family_scope)
        refresh: tuple[str, RefreshRecord, float] | None = None
        if offers_refresh(app, family_scope):
            record = RefreshRecord(
                gid=grant.gid,
                tenant_id=grant.tenant_id,
                client_id=app.client_id,
                scope=family_scope,
                issued_at=now,
                expires_at=now + app.refresh_token_ttl,
            )
            refresh = (tagged_refresh_token(ctx.secrets, grant.gid, record.expires_at), record,
                       app.refresh_token_ttl)
        # the grant and its refresh token: one write, and none when the grant was revoked while this request
        # was being answered (a concurrent reuse of the refresh token, or of the code)
        if not ctx.ledger.put_grant_unless_revoked(grant, ttl, refresh):
            raise InvalidGrantError(description="The grant has been revoked.")
        if refresh is not None:
            token["refresh_token"] = refresh[0]
        self.outcome.connection = profile.connection
        self.outcome.details.update({"grant": grant.gid, "jti": jti, "kid": key.kid, "scope": token["scope"]})
        return token

    # introspection / revocation -----------------------------------------------------------------

    def verify_access_token(self, value: str) -> Mapping[str, Any]:
        """The claims of a live access token of this tenant (see verify_access)."""
        return self.verify_access(value)[0]

    def verify_access(self, value: str) -> tuple[Mapping[str, Any], GrantRecord]:
        """A live access token of this tenant, and its grant: signature, typ, iss, exp, the denylist, then
        the grant, which must still stand (its app and connection)."""
        ctx = self.ctx
        now = ctx.clock.now()
        verified = ctx.codec.verify(
            value,
            published_keys(ctx.config.signing_keys(ctx.tenant.id), now),
            issuer=ctx.issuer,
            now=now,
            typ=ACCESS_TOKEN_TYP,
        )
        claims = verified.claims
        jti, gid = claims.get("jti"), claims.get("gid")
        if not (isinstance(jti, str) and isinstance(gid, str) and isinstance(claims.get("client_id"), str)):
            raise InvalidToken("missing_claims")
        if ctx.ledger.jti_revoked(jti) or ctx.ledger.grant_revoked(gid):
            raise InvalidToken("revoked")
        grant = self._standing_grant(gid)
        if grant is None or grant.profile.sub != claims.get("sub") or grant.client_id != claims.get("client_id"):
            raise InvalidToken("grant_ended")
        return claims, grant

    def find_token(self, value: str, hint: str | None) -> AccessToken | RefreshToken | None:
        # RFC 7009 §2.1 / RFC 7662 §2.1: the hint only orders the search.
        if value.count(".") == 2:
            try:
                return AccessToken(self.verify_access_token(value))
            except InvalidToken as exc:
                self.outcome.details["token_rejected"] = exc.reason
                return None
        return self.find_refresh(value, detect_reuse=False)

    def introspection_payload(self, token: AccessToken | RefreshToken) -> dict[str, Any]:
        if isinstance(token, AccessToken):
            c = token.claims
            keep = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "sid", "auth_time")
            out = {k: c[k] for k in keep if k in c}
            out.update({"active": True, "token_type": "Bearer"})
            return out
        grant = self.ctx.ledger.grant(token.record.gid)
        if grant is None:
            return {"active": False}
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": token.get_scope(),
            "client_id": token.record.client_id,
            "sub": grant.profile.sub,
            "iss": self.ctx.issuer,
            "iat": int(token.record.issued_at),
            "exp": int(token.record.expires_at),
            "sid": grant.sid,
        }

    def find_spent_refresh(self, value: str) -> SpentRefreshToken | None:
        """A refresh token of this tenant that was rotated away while its family still stands."""
        if value.count(".") == 2:
            return None
        gid = self._family_of(value)
        grant = self.ctx.ledger.grant(gid) if gid is not None else None
        if grant is None or grant.tenant_id != self.ctx.tenant.id:
            return None
        return SpentRefreshToken(gid=grant.gid, client_id=grant.client_id)

    def revoke(self, token: AccessToken | RefreshToken | SpentRefreshToken) -> None:
        now = self.ctx.clock.now()
        if isinstance(token, SpentRefreshToken):
            self._revoke_family(token.gid)
            self.outcome.details.pop("refresh_reuse", None)
            self.outcome.details["revoked"] = "refresh_token_family"
            return
        if isinstance(token, AccessToken):
            exp = token.claims.get("exp")
            ttl = max(float(exp) - now, 0) + 60 if isinstance(exp, int | float) else 24 * 3600
            self.ctx.ledger.revoke_jti(str(token.claims["jti"]), ttl)
            self.outcome.details["revoked"] = "access_token"
        else:
            # RFC 7009 §2.1: revoking a refresh token revokes its grant's access tokens as well.
            self.ctx.ledger.take_refresh(token.value)
            self._revoke_family(token.record.gid)
            self.outcome.details.pop("refresh_reuse", None)
            self.outcome.details["revoked"] = "refresh_token"


_TAG_PURPOSE = "refresh-token:"


def tagged_refresh_token(secrets_: SecretVerifier, gid: str, expires_at: float) -> str:
    """`<random>~<gid>~<exp>~<tag>`: 256 random bits, the grant the token belongs to and the second it expires,
    under an HMAC tag only this broker can make (BROKER_SECRET_KEY). A token presented after its rotation is
    known for what it is from its own text: a rotation stores nothing for reuse detection."""
    body = TAGGED_SEPARATOR.join((secrets.token_urlsafe(32), gid, str(math.ceil(expires_at))))
    return f"{body}{TAGGED_SEPARATOR}{secrets_.tag(_TAG_PURPOSE + body)}"


def tagged_refresh_family(secrets_: SecretVerifier, value: str, now: float) -> str | None:
    """The grant id of a tagged refresh token this broker issued, if it could still be live at `now`: a
    forged or altered one names no family (so knowing a grant id cannot revoke it), an expired one neither."""
    parts = value.split(TAGGED_SEPARATOR)
    if len(value) > 400 or len(parts) != 4:
        return None
    _, gid, exp, tag = parts
    if not gid or not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
        return None
    if not secrets_.tag_ok(_TAG_PURPOSE + TAGGED_SEPARATOR.join(parts[:3]), tag):
        return None
    return gid if now < int(exp) else None


def _safe_description(error: Any) -> str:
    """authlib's description for an error, without anything taken from the request."""
    if isinstance(error, UnsupportedGrantTypeError):
        return "The grant_type is not supported."
    description = getattr(error, "description", None)
    if isinstance(description, str) and description.startswith("The client cannot authenticate with methods"):
        # authlib's sentence lists every method the endpoint knows, whatever went wrong: say what can have
        return AUTH_FAILED
    if isinstance(description, str) and description:
        return description
    return {
        "invalid_request": "The request is invalid.",
        "invalid_client": "Client authentication failed.",
        "invalid_grant": "The grant is invalid.",
        "invalid_scope": "The requested scope is invalid.",
        "unsupported_token_type": "The token type is not supported.",
        "unauthorized_client": "The client is not authorized for this grant.",
    }.get(str(getattr(error, "error", "")), "The request was refused.")

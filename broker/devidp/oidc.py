"""The development IdP's OpenID Provider: discovery, JWKS, authorization checks, codes, tokens, userinfo.

Authorization code flow only (OIDC Core §3.1), PKCE S256 required (RFC 7636), client authentication
client_secret_basic (RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic) or client_secret_post.
Its clients are exactly this broker's OIDC connections whose `issuer` is this OP: the redirect_uri must be
such a connection's callback URL, and client_id / client_secret must be that connection's. Codes are
single-use (StateStore.take) and live 60 s; ID tokens are RS256 JWTs signed with joserfc under the OP's own
key; the authorization response carries `iss` (RFC 9207).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.devidp.keys import DevIdpKeys
from broker.devidp.users import DevUser
from broker.ports import Clock, ConfigReader, StateStore

CODE_PREFIX = "devidp:code:"
TOKEN_PREFIX = "devidp:at:"
CODE_TTL = 60
TOKEN_TTL = 300
ID_TOKEN_TTL = 300
SCOPES = ("openid", "email", "profile", "groups")
_SLUG = r"[a-z0-9][a-z0-9-]{0,62}"


def issuer_url(public_url: str) -> str:
    return f"{public_url}/dev/idp/oidc"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class AuthorizeRefused(Exception):
    """An authorization request refused before its client and redirect_uri are trusted: show, never redirect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthorizeOutcome:
    """Either a request to show the login page for (`pending`), or an error redirect (`redirect`)."""

    pending: dict[str, Any] | None = None
    redirect: str | None = None


class DevOp:
    def __init__(self, keys: DevIdpKeys, *, public_url: str, state: StateStore, config: ConfigReader,
                 clock: Clock) -> None:
        self.public_url = public_url
        self.issuer = issuer_url(public_url)
        self.key = RSAKey.import_key(keys.oidc_key_pem)
        self.kid = self.key.thumbprint()
        self.state = state
        self.config = config
        self.clock = clock

    # --- documents ----------------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        i = self.issuer
        return {
            "issuer": i,
            "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token",
            "userinfo_endpoint": f"{i}/userinfo",
            "jwks_uri": f"{i}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "email",
                                 "email_verified", "name", "given_name", "family_name", "groups"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    # --- clients: this broker's OIDC connections that point at this OP --------------------------------

    def _client(self, redirect_uri: str, client_id: str) -> dict[str, Any] | None:
        m = re.fullmatch(re.escape(self.public_url) + rf"/t/({_SLUG})/connections/({_SLUG})/oidc/callback",
                         redirect_uri)
        if m is None:
            return None
        tenant = self.config.tenant_by_slug(m.group(1))
        c = self.config.connection(tenant.id, m.group(2)) if tenant is not None else None
        if c is None or c.protocol != "oidc" or not c.enabled:
            return None
        if str(c.settings.get("issuer", "")).rstrip("/") != self.issuer:
            return None
        if not hmac.compare_digest(str(c.settings.get("client_id", "")).encode(), client_id.encode()):
            return None
        return {"tenant": m.group(1), "connection": m.group(2), "client_id": client_id,
                "redirect_uri": redirect_uri, "secret": str(c.settings.get("client_secret") or "")}

    # --- authorization endpoint (OIDC Core §3.1.2) ---------------------------------------------------------

    def authorize(self, params: Mapping[str, str]) -> AuthorizeOutcome:
        """Check an authorization request as a checklist; errors after the redirect_uri is trusted redirect."""
        client_id = params.get("client_id") or ""
        redirect_uri = params.get("redirect_uri") or ""
        if not client_id or not redirect_uri:
            raise AuthorizeRefused("client_id and redirect_uri are required.")
        client = self._client(redirect_uri, client_id)
        if client is None:
            raise AuthorizeRefused("The development IdP knows no such client: it answers only this broker's OIDC "
                                   "connections whose issuer is the development IdP, at their callback URL.")
        state = params.get("state")

        def error(code: str, description: str) -> AuthorizeOutcome:
            return AuthorizeOutcome(redirect=self._redirect(redirect_uri, {
                "error": code, "error_description": description, "state": state}))

        if params.get("response_type") != "code":
            return error("unsupported_response_type", "Only response_type=code is supported.")
        scopes = [s for s in (params.get("scope") or "").split() if s]
        if "openid" not in scopes:
            return error("invalid_scope", "The openid scope is required.")
        challenge = params.get("code_challenge") or ""
        if params.get("code_challenge_method") != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43,128}", challenge):
            return error("invalid_request", "PKCE with code_challenge_method=S256 is required.")
        nonce = params.get("nonce")
        if nonce is not None and len(nonce) > 512:
            return error("invalid_request", "The nonce is too long.")
        return AuthorizeOutcome(pending={
            "tenant": client["tenant"], "connection": client["connection"], "client_id": client_id,
            "redirect_uri": redirect_uri, "state": state, "nonce": nonce, "code_challenge": challenge,
            "scope": [s for s in scopes if s in SCOPES],
        })

    def _redirect(self, redirect_uri: str, params: Mapping[str, str | None]) -> str:
        query = {k: v for k, v in params.items() if v is not None}
        query["iss"] = self.issuer  # RFC 9207
        sep = "&" if "?" in redirect_uri else "?"
        return f"{redirect_uri}{sep}{urlencode(query)}"

    def issue_code(self, pending: Mapping[str, Any], user: DevUser) -> str:
        """The authorization response (§3.1.2.5): the redirect URL with a fresh single-use code."""
        code = secrets.token_urlsafe(32)
        record = {**pending, "user": {"email": user.email, "name": user.name, "groups": list(user.groups)},
                  "auth_time": int(self.clock.now())}
        self.state.put(CODE_PREFIX + _digest(code), json.dumps(record).encode(), ttl=CODE_TTL)
        return self._redirect(str(pending["redirect_uri"]), {"code": code, "state": pending.get("state")})

    # --- token endpoint (OIDC Core §3.1.3) -----------------------------------------------------------------

    @staticmethod
    def _client_credentials(form: Mapping[str, str], authorization: str | None) -> tuple[str, str] | None:
        basic = authorization or ""
        if basic:
            if form.get("client_secret"):
                return None  # RFC 6749 §2.3: one method per request
            scheme, _, value = basic.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return None
            cid, sep, secret = decoded.partition(":")
            if not sep:
                return None
            return unquote_plus(cid), unquote_plus(secret)
        post_id, post_secret = form.get("client_id"), form.get("client_secret")
        return (post_id, post_secret) if post_id and post_secret else None

    def token(self, form: Mapping[str, str], authorization: str | None) -> TokenAnswer:
        def fail(code: str, description: str, status: int = 400) -> TokenAnswer:
            headers = {"WWW-Authenticate": 'Basic realm="dev-idp"'} if status == 401 else {}
            return TokenAnswer(status, {"error": code, "error_description": description}, headers)

        if form.get("grant_type") != "authorization_code":
            return fail("unsupported_grant_type", "Only authorization_code is supported.")
        creds = self._client_credentials(form, authorization)
        if creds is None:
            return fail("invalid_client", "Client authentication failed.", 401)
        code = form.get("code") or ""
        raw = self.state.take(CODE_PREFIX + _digest(code)) if 0 < len(code) <= 200 else None
        if raw is None:
            return fail("invalid_grant", "The code is invalid, expired or already used.")
        record: dict[str, Any] = json.loads(raw)
        client = self._client(str(record["redirect_uri"]), creds[0])
        if client is None or client["client_id"] != record["client_id"] or not client["secret"] or not \
                hmac.compare_digest(client["secret"].encode(), creds[1].encode()):
            return fail("invalid_client", "Client authentication failed.", 401)
        if form.get("redirect_uri") != record["redirect_uri"]:
            return fail("invalid_grant", "redirect_uri differs from the authorization request's.")
        verifier = form.get("code_verifier") or ""
        if not re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", verifier) or not hmac.compare_digest(
                _b64url(hashlib.sha256(verifier.encode("ascii")).digest()), str(record["code_challenge"])):
            return fail("invalid_grant", "PKCE verification failed.")
        user = record["user"]
        dev_user = DevUser(email=user["email"], name=user["name"], groups=tuple(user["groups"]))
        claims = self._user_claims(dev_user, record.get("scope") or ["openid"])
        now = int(self.clock.now())
        id_claims: dict[str, Any] = {**claims, "iss": self.issuer, "aud": record["client_id"], "iat": now,
                                     "exp": now + ID_TOKEN_TTL, "auth_time": record["auth_time"]}
        if record.get("nonce"):
            id_claims["nonce"] = record["nonce"]
        id_token = jwt.encode({"alg": "RS256", "kid": self.kid, "typ": "JWT"}, id_claims, self.key)
        access_token = secrets.token_urlsafe(32)
        self.state.put(TOKEN_PREFIX + _digest(access_token), json.dumps(claims).encode(), ttl=TOKEN_TTL)
        return TokenAnswer(200, {"access_token": access_token, "token_type": "Bearer", "expires_in": TOKEN_TTL,
                                 "id_token": id_token, "scope": " ".join(record.get("scope") or ["openid"])},
                           {"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _user_claims(user: DevUser, scopes: list[str]) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": user.subject}
        if "email" in scopes:
            claims.update({"email": user.email, "email_verified": True})
        if "profile" in scopes:
            claims["name"] = user.name
            claims["given_name"] = user.given_name
            if user.family_name:
                claims["family_name"] = user.family_name
        if "groups" in scopes:
            claims["groups"] = list(user.groups)
        return claims

    # --- userinfo (OIDC Core §5.3) --------------------------------------------------------------------------

    def userinfo(self, authorization: str | None) -> TokenAnswer:
        scheme, _, token = (authorization or "").partition(" ")
        raw = None
        if scheme.lower() == "bearer" and 0 < len(token.strip()) <= 200:
            raw = self.state.get(TOKEN_PREFIX + _digest(token.strip()))
        if raw is None:
            return TokenAnswer(401, {"error": "invalid_token", "error_description": "Unknown or expired token."},
                               {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return TokenAnswer(200, json.loads(raw), {"Cache-Control": "no-store"})

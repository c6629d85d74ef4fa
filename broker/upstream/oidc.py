"""The OpenID Connect upstream connector: the broker as Relying Party of one connection's OpenID Provider.

Authorization code flow with PKCE (RFC 7636, S256) and a fresh `state` (the broker's transaction handle)
and `nonce` per login. `complete()` runs its checks as a named checklist, in this order:

1. error response (RFC 6749 §4.1.2.1)           -> oidc_upstream_error
2. state == the stored transaction's id            -> oidc_state_mismatch
3. RFC 9207 `iss` response parameter (mix-up)      -> oidc_issuer_mismatch
4. code exchange at the token endpoint (§3.1.3)    -> oidc_token_exchange_failed / oidc_provider_unavailable
5. ID token signature (§3.1.3.7 items 6-8): an allowed asymmetric `alg` only, the key from the OP's
   JWKS by `kid` (one rate-limited refetch on an unknown kid) -> oidc_signature_invalid / oidc_unknown_key
6. iss (item 2), aud/azp (items 3-5), exp/iat/nbf with skew (items 9-10), nonce (item 11)
7. userinfo (§5.3.2: its `sub` must equal the ID token's) -> oidc_userinfo_sub_mismatch

Only claims of the verified ID token (and of the userinfo response fetched with its access token) become
the UpstreamIdentity. Every network call has the connection's timeout; a failure is a LoginError with
code oidc_provider_unavailable, never a hang or a bare exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from broker.errors import LoginError, ValidationFailed
from broker.model import Connection, LoginTransaction, UpstreamIdentity, unstorable
from broker.ports import Clock, Fetcher, StateStore
from broker.upstream.base import BeginRequest, BeginResult, CallbackInput, Redirect
from broker.upstream.oidc_discovery import (
    DEFAULT_CACHE,
    FETCH_ERRORS,
    MAX_DOCUMENT_BYTES,
    Jwks,
    OidcMetadataCache,
    ProviderMetadata,
    check_endpoint_url,
    issuer_aliases,
    provider_unavailable,
)

__all__ = [
    "AUTH_METHODS",
    "OidcConnector",
    "OidcSettings",
    "SUPPORTED_ALGS",
    "parse_oidc_settings",
]

# token_endpoint_auth_method values (names of methods, not secrets)
CLIENT_SECRET_BASIC: Final = "client_secret_basic"  # noqa: S105
CLIENT_SECRET_POST: Final = "client_secret_post"  # noqa: S105
PRIVATE_KEY_JWT: Final = "private_key_jwt"
AUTH_METHODS: Final = (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, PRIVATE_KEY_JWT)
SUPPORTED_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
# Parameters begin() owns; extra_auth_params may not set them.
_RESERVED_AUTH_PARAMS: Final = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
        "response_mode",
        "client_secret",
    }
)
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")  # RFC 6749 §3.3
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,80}\Z")  # RFC 6749 §4.1.2.1 charset
_TENANT_ID = re.compile(r"^[0-9A-Za-z-]{1,64}\Z")
_MAX_TOKEN_BYTES: Final = 64 * 1024
_CLIENT_ASSERTION_TTL: Final = 60


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """A connection's validated `oidc` settings (see SPEC.md, "oidc settings")."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    token_endpoint_auth_method: str = CLIENT_SECRET_BASIC
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    userinfo: bool | None = None  # None: merge userinfo when the OP has the endpoint
    timeout: float = 10.0
    allowed_algs: tuple[str, ...] = SUPPORTED_ALGS
    clock_skew_seconds: int = 120
    extra_auth_params: dict[str, str] = field(default_factory=dict)
    allowed_tenant_ids: tuple[str, ...] = ()  # Entra ID multi-tenant only: accept only these `tid`s
    private_key_jwt: str | None = field(default=None, repr=False)  # PEM; the constructor argument wins


_SETTING_KEYS: Final = frozenset(f.name for f in fields(OidcSettings))


def _invalid(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"oidc.{field_name}: {message}", details={"field": f"oidc.{field_name}"})


def _str_list(raw: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise _invalid(name, "must be a list of non-empty strings")
    return tuple(dict.fromkeys(value))


def parse_oidc_settings(raw: Mapping[str, Any]) -> OidcSettings:
    """Validate a connection's raw `oidc` JSON settings. Raises ValidationFailed(details={"field": ...})."""
    if not isinstance(raw, Mapping):
        raise _invalid("settings", "must be an object")
    for key in raw:
        if key not in _SETTING_KEYS:
            raise _invalid(str(key), "unknown setting")

    issuer = raw.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise _invalid("issuer", "is required")
    problem = check_endpoint_url(issuer)
    if problem is not None or urlsplit(issuer).query:
        raise _invalid("issuer", problem or "must not have a query")

    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise _invalid("client_id", "is required")

    def optional_str(name: str) -> str | None:
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise _invalid(name, "must be a non-empty string")
        return value

    client_secret = optional_str("client_secret")
    private_key_jwt = optional_str("private_key_jwt")
    method = raw.get("token_endpoint_auth_method", CLIENT_SECRET_BASIC)
    if method not in AUTH_METHODS:
        raise _invalid("token_endpoint_auth_method", f"must be one of {', '.join(AUTH_METHODS)}")
    if method != PRIVATE_KEY_JWT and client_secret is None:
        raise _invalid("client_secret", f"is required with {method}")

    scopes = _str_list(raw, "scopes", ("openid", "email", "profile"))
    if "openid" not in scopes:
        raise _invalid("scopes", "must include openid")
    if not all(_SCOPE_TOKEN.match(s) for s in scopes):
        raise _invalid("scopes", "contains a character not allowed in a scope")

    userinfo = raw.get("userinfo")
    if userinfo is not None and not isinstance(userinfo, bool):
        raise _invalid("userinfo", "must be true, false or null")

    timeout = raw.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise _invalid("timeout", "must be a number of seconds in (0, 60]")

    allowed_algs = _str_list(raw, "allowed_algs", SUPPORTED_ALGS)
    bad = [a for a in allowed_algs if a not in SUPPORTED_ALGS]
    if bad or not allowed_algs:
        raise _invalid("allowed_algs", f"must be a non-empty subset of {', '.join(SUPPORTED_ALGS)}")

    skew = raw.get("clock_skew_seconds", 120)
    if isinstance(skew, bool) or not isinstance(skew, int) or not 0 <= skew <= 600:
        raise _invalid("clock_skew_seconds", "must be an integer in [0, 600]")

    extra = raw.get("extra_auth_params") or {}
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in extra.items()
    ):
        raise _invalid("extra_auth_params", "must be an object of string values")
    reserved = sorted(set(extra) & _RESERVED_AUTH_PARAMS)
    if reserved:
        raise _invalid("extra_auth_params", f"may not set {', '.join(reserved)}")

    tenants = _str_list(raw, "allowed_tenant_ids", ())
    if not all(_TENANT_ID.match(t) for t in tenants):
        raise _invalid("allowed_tenant_ids", "must be tenant ids (GUIDs)")

    return OidcSettings(
        issuer=issuer,
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method=method,
        scopes=scopes,
        userinfo=userinfo,
        timeout=float(timeout),
        allowed_algs=allowed_algs,
        clock_skew_seconds=skew,
        extra_auth_params=dict(extra),
        allowed_tenant_ids=tenants,
        private_key_jwt=private_key_jwt,
    )


# --- helpers ----------------------------------------------------------------------------------


def load_assertion_key(pem: bytes) -> RSAKey | ECKey:
    """The private key a private_key_jwt connection signs its client assertions with (RSA or EC, PEM)."""
    for key_cls in (RSAKey, ECKey):
        try:
            key = key_cls.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            return key
    raise _invalid("private_key_jwt", "must be an RSA or EC private key in PEM")


def _assertion_alg(key: RSAKey | ECKey) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    return {"P-256": "ES256", "P-384": "ES384"}.get(str(key.get("crv")), "ES512")


def assertion_public_jwk(pem: bytes) -> dict[str, Any]:
    """The public JWK to register at the OP for a private_key_jwt connection, with the `kid` its client
    assertions carry (the RFC 7638 thumbprint) and the `alg` they use."""
    key = load_assertion_key(pem)
    jwk = key.as_dict(private=False)
    jwk.update({"kid": key.thumbprint(), "use": "sig", "alg": _assertion_alg(key)})
    return jwk


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _form_encode(value: str) -> str:
    """application/x-www-form-urlencoded, as RFC 6749 §2.3.1 wants for HTTP Basic client credentials."""
    return quote(value, safe="").replace("%20", "+")


def basic_auth_header(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, then base64 `id:secret`."""
    pair = f"{_form_encode(client_id)}:{_form_encode(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _safe_text(value: str | None, limit: int = 200) -> str | None:
    """An OP-supplied string made safe to show: RFC 6749 error charset only, truncated."""
    if not value:
        return None
    cleaned = "".join(c for c in value if c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\'))
    cleaned = cleaned.strip()[:limit]
    return cleaned or None


_CLAIM_POINTERS = frozenset({"_claim_names", "_claim_sources"})


def _elsewhere_warning(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """A warning naming the claims the OP sent as aggregated or distributed claims (OIDC Core §5.6.2), which
    the broker does not fetch. Entra ID does this with `groups` when a user is in more groups than fit in a
    token (the groups overage): the profile's groups would silently be empty."""
    names = claims.get("_claim_names")
    if not isinstance(names, Mapping):
        return ()
    missing = sorted(str(k) for k in names if isinstance(k, str) and claims.get(k) is None)[:20]
    if not missing:
        return ()
    message = (f"claims_not_fetched: the identity provider sent {', '.join(missing)} as aggregated or "
               "distributed claims, which are not fetched, so they are missing from the profile")
    if "groups" in missing:
        message += (" (Entra ID does this when a user is in more groups than fit in a token: limit the groups "
                    "in the app registration's token configuration, e.g. to groups assigned to the application)")
    return (message + ".",)


def _claim_strings(value: Any) -> tuple[str, ...]:
    """A claim as the multi-valued strings UpstreamIdentity carries."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(s for v in value for s in _claim_strings(v))
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else repr(value),)
    if isinstance(value, str):
        # a NUL or a lone surrogate (JSON \\u escapes allow both) could be neither stored, nor signed into a
        # token (UTF-8): such a value is left out, as a claim the OP did not send
        return () if unstorable(value) else (value,)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return () if unstorable(text) else (text,)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2) as seconds, or None when absent or not a finite number (a JSON
    integer too large for a float, like 1 followed by 400 zeros, included)."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _key_fits(key: Key, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    if alg.startswith("ES"):
        crv = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}.get(alg)
        return isinstance(key, ECKey) and key.get("crv") == crv
    return isinstance(key, OKPKey)


# --- the connector ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TokenResponse:
    id_token: str
    access_token: str | None


class OidcConnector:
    """One connection's OpenID Provider. Keeps no per-login state: that travels in the LoginTransaction."""

    protocol = "oidc"

    def __init__(
        self,
        connection: Connection,
        *,
        public_url: str,
        fetcher: Fetcher,
        state: StateStore,
        clock: Clock,
        private_key_jwt_key: bytes | None = None,
        cache: OidcMetadataCache | None = None,
    ) -> None:
        self.connection = connection
        self.settings = parse_oidc_settings(connection.settings)
        self.redirect_uri = (
            f"{public_url.rstrip('/')}/t/{connection.tenant_slug}/connections/{connection.slug}/oidc/callback"
        )
        self._fetcher = fetcher
        self._state = state
        self._clock = clock
        self._cache = cache if cache is not None else DEFAULT_CACHE
        self._assertion_key: RSAKey | ECKey | None = None
        if self.settings.token_endpoint_auth_method == PRIVATE_KEY_JWT:
            pem = private_key_jwt_key
            if pem is None and self.settings.private_key_jwt is not None:
                pem = self.settings.private_key_jwt.encode("utf-8")
            if pem is None:
                raise _invalid("private_key_jwt", "a private key is required with private_key_jwt")
            self._assertion_key = load_assertion_key(pem)

    # --- Connector ----------------------------------------------------------------------------

    def begin(self, request: BeginRequest) -> BeginResult:
        """Redirect to the OP's authorization endpoint (OIDC Core §3.1.2.1) with state, nonce and PKCE."""
        metadata = self._metadata()
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters: RFC 7636 §4.1 allows 43-128
        s = self.settings
        params: dict[str, str] = dict(s.extra_auth_params)
        params.update(
            {
                "response_type": "code",
                "client_id": s.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(s.scopes),
                "state": request.txn_id,
                "nonce": nonce,
                "code_challenge": _pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        if request.login_hint:
            params["login_hint"] = request.login_hint
        prompt = (["login"] if request.force_authn else []) + (["select_account"] if request.select_account else [])
        if prompt:  # OIDC Core §3.1.2.1; consent is between the app and the broker, not forwarded
            params["prompt"] = " ".join(prompt)
        if request.max_age is not None:
            params["max_age"] = str(request.max_age)
        parts = urlsplit(metadata.authorization_endpoint)
        query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return BeginResult(step=Redirect(url), remember={"nonce": nonce, "code_verifier": verifier})

    def transaction_id(self, callback: CallbackInput) -> str | None:
        state = callback.params.get("state")
        return state if state else None

    def release(self, identity: UpstreamIdentity) -> bool:
        """Nothing to give back: the OP's code was redeemed, and the OP refuses it a second time (RFC 6749
        §4.1.2). The user starts the sign-in again."""
        return False

    def complete(self, callback: CallbackInput, txn: LoginTransaction | None) -> UpstreamIdentity:
        """Verify the OP's authorization response for `txn` and return who signed in."""
        params = callback.params
        nonce, verifier = self._check_state(params, txn)
        metadata = self._metadata()
        # RFC 9207 §2.4: every authorization response, error responses included, is checked for `iss` first,
        # so that a mixed-up OP's error (and its text) never reaches the app as our OP's answer
        self._check_iss_parameter(params, metadata)
        self._check_error_response(params)
        code = params.get("code")
        if not code:
            raise LoginError(
                "The identity provider's answer carried no authorization code.",
                code="oidc_invalid_response",
            )
        tokens = self._exchange_code(metadata, code, verifier)
        header, claims = self._verify_signature(metadata, tokens.id_token)
        issuer = self._check_issuer(metadata, claims)
        if metadata.tenant_issuer_template is not None and params.get("iss") not in (None, issuer):
            raise LoginError(
                "The sign-in answer came from a different identity provider.",
                code="oidc_issuer_mismatch",
                detail=f"iss parameter {params.get('iss')!r} != ID token iss {issuer!r}",
            )
        self._check_audience(claims)
        self._check_times(claims)
        self._check_nonce(claims, nonce)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise LoginError(
                "The identity provider's ID token has no valid subject.", code="oidc_invalid_token"
            )
        merged: dict[str, Any] = {}
        if self._wants_userinfo(metadata) and tokens.access_token:
            assert metadata.userinfo_endpoint is not None
            merged.update(self._userinfo(metadata.userinfo_endpoint, tokens.access_token, subject))
        merged.update(claims)  # the signed ID token wins where both say something
        return self._identity(subject, merged, claims)

    # --- checks, in order ---------------------------------------------------------------------

    def _check_error_response(self, params: Mapping[str, str]) -> None:
        """RFC 6749 §4.1.2.1: the OP refused (e.g. access_denied); show only a sanitized code/description."""
        error = params.get("error")
        if error is None:
            return
        code = error if _ERROR_CODE.match(error) else "invalid_error_code"
        description = _safe_text(params.get("error_description"))
        message = f"The identity provider refused the sign-in ({code})"
        message += f": {description}" if description else "."
        raise LoginError(
            message, code="oidc_upstream_error", detail=f"error={error!r}", details={"error": code}
        )

    def _check_state(self, params: Mapping[str, str], txn: LoginTransaction | None) -> tuple[str, str]:
        """The `state` must name the transaction this browser started, for this connection."""
        state = params.get("state")
        if txn is None or not state or not _equal(state, txn.id):
            raise LoginError(
                "This sign-in answer does not belong to a sign-in started here. Please start again.",
                code="oidc_state_mismatch",
                detail="no transaction" if txn is None else "state missing or different from the transaction",
            )
        nonce = txn.upstream.get("nonce")
        verifier = txn.upstream.get("code_verifier")
        if txn.connection_id != self.connection.id or not nonce or not verifier:
            raise LoginError(
                "This sign-in answer does not belong to a sign-in started here. Please start again.",
                code="oidc_state_mismatch",
                detail="transaction of another connection or without nonce/verifier",
            )
        return nonce, verifier

    def _check_iss_parameter(self, params: Mapping[str, str], metadata: ProviderMetadata) -> None:
        """RFC 9207 §2.4: when advertised, `iss` is required; whenever present, it must name our OP."""
        iss = params.get("iss")
        if iss is None:
            if metadata.iss_parameter_supported:
                raise self._mixup("the OP advertises RFC 9207 but sent no iss parameter")
            return
        if metadata.tenant_issuer_template is not None:
            return  # compared with the verified ID token's tenant issuer in complete()
        if iss not in issuer_aliases(self.settings.issuer):
            raise self._mixup(f"iss parameter {iss!r} != {self.settings.issuer!r}")

    @staticmethod
    def _mixup(detail: str) -> LoginError:
        return LoginError(
            "The sign-in answer came from a different identity provider.",
            code="oidc_issuer_mismatch",
            detail=detail,
        )

    def _exchange_code(self, metadata: ProviderMetadata, code: str, verifier: str) -> _TokenResponse:
        """OIDC Core §3.1.3.1: redeem the code with the PKCE verifier and the client's authentication."""
        s = self.settings
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if s.token_endpoint_auth_method == CLIENT_SECRET_BASIC:
            assert s.client_secret is not None
            headers["Authorization"] = basic_auth_header(s.client_id, s.client_secret)
        elif s.token_endpoint_auth_method == CLIENT_SECRET_POST:
            assert s.client_secret is not None
            data["client_id"] = s.client_id
            data["client_secret"] = s.client_secret
        else:
            data["client_id"] = s.client_id
            data["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            data["client_assertion"] = self._client_assertion(metadata.token_endpoint)
        try:
            result = self._fetcher.post_form(
                metadata.token_endpoint,
                data,
                timeout=s.timeout,
                max_bytes=MAX_DOCUMENT_BYTES,
                headers=headers,
            )
        except FETCH_ERRORS as exc:
            raise provider_unavailable(
                "token endpoint",
                s.issuer,
                f"POST {metadata.token_endpoint}: {type(exc).__name__}: {exc}",
                status=503,
                cause=exc,
            ) from exc
        body = _json_object(result.body)
        if result.status != 200:
            error = body.get("error") if body else None
            safe = _safe_text(error if isinstance(error, str) else None, 80)
            raise LoginError(
                "The identity provider did not accept the sign-in code" + (f" ({safe})." if safe else "."),
                code="oidc_token_exchange_failed",
                detail=f"HTTP {result.status}: {_safe_text(result.body[:300].decode('utf-8', 'replace'))}",
                details={"status": result.status, "error": safe},
            )
        id_token = body.get("id_token") if body else None
        if not isinstance(id_token, str) or not id_token:
            raise LoginError(
                "The identity provider's token response carried no ID token.",
                code="oidc_token_exchange_failed",
                detail="token response without id_token (was the openid scope granted?)",
            )
        access_token = body.get("access_token") if body else None
        return _TokenResponse(id_token, access_token if isinstance(access_token, str) else None)

    def _client_assertion(self, audience: str) -> str:
        """RFC 7523 §3 / OIDC Core §9 private_key_jwt: iss = sub = client_id, aud = token endpoint."""
        key = self._assertion_key
        assert key is not None
        now = int(self._clock.now())
        alg = _assertion_alg(key)
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + _CLIENT_ASSERTION_TTL,
        }
        return jwt.encode({"alg": alg, "kid": key.thumbprint()}, claims, key, algorithms=[alg])

    def _verify_signature(
        self, metadata: ProviderMetadata, token: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """OIDC Core §3.1.3.7 items 6-8, with joserfc: allowed alg, JWKS key by kid, valid signature."""
        if len(token) > _MAX_TOKEN_BYTES:
            raise LoginError("The identity provider's ID token is too large to be used (over 64 KB).",
                             code="oidc_invalid_response", detail=f"ID token of {len(token)} characters")
        if token.count(".") == 4:  # JWE compact serialization (RFC 7516 §7.1)
            raise LoginError("The identity provider sent an encrypted ID token, which this connection cannot "
                             "read; turn off ID token encryption for this client at the identity provider.",
                             code="oidc_invalid_response", detail="ID token is a JWE")
        if token.count(".") != 2:
            raise self._bad_signature("not a JWS compact serialization")
        try:
            obj = jws.extract_compact(token.encode("ascii"))
        except (JoseError, ValueError, UnicodeError, RecursionError) as exc:
            raise self._bad_signature(f"unparseable: {type(exc).__name__}") from exc
        header = obj.headers()
        alg = header.get("alg")
        # Checked here, before any key is chosen: "none" and HMAC (a public key used as a shared secret)
        # never reach a verifier.
        if not isinstance(alg, str) or alg not in self.settings.allowed_algs:
            raise self._bad_signature(f"alg {alg!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._bad_signature("kid is not a string")
        keys = self._candidate_keys(metadata, kid, alg)
        for key in keys:
            try:
                if jws.validate_compact(obj, key, algorithms=[alg]):
                    break
            except JoseError:
                continue
        else:
            raise self._bad_signature(f"signature does not verify with the OP's key(s) for kid {kid!r}")
        try:
            claims = json.loads(obj.payload)
        except (TypeError, ValueError, RecursionError) as exc:
            raise self._bad_signature("payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise self._bad_signature("payload is not a JSON object")
        return header, claims

    def _candidate_keys(self, metadata: ProviderMetadata, kid: str | None, alg: str) -> tuple[Key, ...]:
        """The OP's keys for this token; on an unknown kid, one JWKS refetch (rate-limited per jwks_uri)."""

        def matching(jwks: Jwks) -> tuple[Key, ...]:
            found = tuple(k for k in jwks.by_kid(kid) if _key_fits(k, alg))
            # Without a kid, only an unambiguous single key is used (OIDC Core §10.1).
            return found if kid is not None or len(found) == 1 else ()

        jwks = self._jwks(metadata)
        keys = matching(jwks)
        if keys:
            return keys
        keys = matching(self._jwks(metadata, force=True))  # rate-limited by the cache, per process
        if not keys:
            raise LoginError(
                "The identity provider's ID token is signed with a key it does not publish.",
                code="oidc_unknown_key",
                detail=f"no {alg} key with kid {kid!r} in {metadata.jwks_uri}",
            )
        return keys

    @staticmethod
    def _bad_signature(detail: str) -> LoginError:
        return LoginError(
            "The identity provider's ID token signature is not valid.",
            code="oidc_signature_invalid",
            detail=detail,
        )

    def _check_issuer(self, metadata: ProviderMetadata, claims: Mapping[str, Any]) -> str:
        """§3.1.3.7 item 2: iss is exactly the configured issuer (Entra multi-tenant: its tenant's issuer)."""
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise self._issuer_mismatch("ID token without iss")
        if metadata.tenant_issuer_template is None:
            if iss not in issuer_aliases(self.settings.issuer):
                raise self._issuer_mismatch(f"iss {iss!r} != {self.settings.issuer!r}")
            return iss
        tid = claims.get("tid")
        if not isinstance(tid, str) or not _TENANT_ID.match(tid) or iss != metadata.tenant_issuer(tid):
            raise self._issuer_mismatch(f"iss {iss!r} is not the issuer of tenant {tid!r}")
        if self.settings.allowed_tenant_ids and tid not in self.settings.allowed_tenant_ids:
            raise LoginError(
                "Accounts of this organization cannot sign in through this connection.",
                code="oidc_tenant_not_allowed",
                detail=f"tid {tid!r} is not in allowed_tenant_ids",
            )
        return iss

    @staticmethod
    def _issuer_mismatch(detail: str) -> LoginError:
        return LoginError(
            "The ID token was not issued by this connection's identity provider.",
            code="oidc_issuer_mismatch",
            detail=detail,
        )

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """§3.1.3.7 items 3-5: aud has client_id; azp (required with several audiences) == client_id."""
        client_id = self.settings.client_id
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        azp = claims.get("azp")
        problem = None
        if client_id not in audiences:
            problem = f"aud {aud!r} does not contain the client_id"
        elif len(audiences) > 1 and azp != client_id:
            problem = f"several audiences and azp {azp!r} is not the client_id"
        elif azp is not None and azp != client_id:
            problem = f"azp {azp!r} is not the client_id"
        if problem:
            raise LoginError(
                "The ID token was issued for a different application.",
                code="oidc_audience_mismatch",
                detail=problem,
            )

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """§3.1.3.7 items 9-10 (RFC 7519 §4.1.4-6): exp and iat required, nbf optional, with clock skew."""
        now = self._clock.now()
        skew = self.settings.clock_skew_seconds
        exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
        if exp is None or iat is None or (nbf is None and claims.get("nbf") is not None):
            raise LoginError(
                "The identity provider's ID token has no valid lifetime.",
                code="oidc_invalid_token",
                detail="exp or iat missing or not a number, or nbf not a number",
            )
        if now > exp + skew:
            raise LoginError(
                "The identity provider's ID token has expired. Please sign in again.",
                code="oidc_token_expired",
                detail=f"exp {exp} + skew {skew} < now {now}",
            )
        for name, value in (("iat", iat), ("nbf", nbf)):
            if value is not None and value > now + skew:
                raise LoginError(
                    "The identity provider's ID token is not valid yet (check the clocks).",
                    code="oidc_token_not_yet_valid",
                    detail=f"{name} {value} > now {now} + skew {skew}",
                )

    def _check_nonce(self, claims: Mapping[str, Any], expected: str) -> None:
        """§3.1.3.7 item 11: the nonce we sent for this login, exactly (replay defence)."""
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not _equal(nonce, expected):
            raise LoginError(
                "The ID token does not belong to this sign-in. Please start again.",
                code="oidc_nonce_mismatch",
                detail="nonce missing" if nonce is None else "nonce differs",
            )

    # --- userinfo, network, result ------------------------------------------------------------

    def _wants_userinfo(self, metadata: ProviderMetadata) -> bool:
        if self.settings.userinfo is False:
            return False
        return metadata.userinfo_endpoint is not None

    def _userinfo(self, endpoint: str, access_token: str, subject: str) -> dict[str, Any]:
        """OIDC Core §5.3: the Bearer access token in the Authorization header, with GET (what OPs and clients
        use most); an OP that answers 405 to GET is asked again with POST (§5.3.1 allows either). sub must
        match the ID token's."""
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        method = "GET"
        try:
            result = self._fetcher.get(endpoint, timeout=self.settings.timeout, max_bytes=MAX_DOCUMENT_BYTES,
                                       headers=headers)
            if result.status == 405:
                method = "POST"
                result = self._fetcher.post_form(endpoint, {}, timeout=self.settings.timeout,
                                                 max_bytes=MAX_DOCUMENT_BYTES, headers=headers)
        except FETCH_ERRORS as exc:
            raise provider_unavailable(
                "userinfo", self.settings.issuer, f"{method} {endpoint}: {type(exc).__name__}: {exc}", status=503,
                cause=exc,
            ) from exc
        body = _json_object(result.body)
        if result.status != 200 or body is None:
            raise provider_unavailable(
                "userinfo",
                self.settings.issuer,
                f"{method} {endpoint}: HTTP {result.status}, JSON={body is not None}",
                status=502,
            )
        if body.get("sub") != subject:
            raise LoginError(
                "The identity provider's user information is about a different user.",
                code="oidc_userinfo_sub_mismatch",
                detail="userinfo sub differs from the ID token sub",
            )
        return body

    def _metadata(self) -> ProviderMetadata:
        return self._cache.provider(
            self.settings.issuer, fetcher=self._fetcher, clock=self._clock, timeout=self.settings.timeout
        )

    def _jwks(self, metadata: ProviderMetadata, *, force: bool = False) -> Jwks:
        return self._cache.jwks(
            metadata.jwks_uri,
            issuer=self.settings.issuer,
            fetcher=self._fetcher,
            clock=self._clock,
            timeout=self.settings.timeout,
            force=force,
        )

    def _identity(
        self, subject: str, merged: Mapping[str, Any], id_claims: Mapping[str, Any]
    ) -> UpstreamIdentity:
        # _claim_names/_claim_sources (OIDC Core §5.6.2) point at claims held elsewhere, perhaps with a bearer
        # token for them: not attributes; the claims they name are missing, and the login says so.
        if unstorable(subject):
            raise LoginError("The identity provider's answer could not be used.", code="oidc_invalid_response",
                             detail="the sub claim holds a NUL character or a lone surrogate")
        attributes = {name: _claim_strings(value) for name, value in merged.items()
                      if name not in _CLAIM_POINTERS and not unstorable(name)}
        amr = id_claims.get("amr")
        acr = id_claims.get("acr")
        return UpstreamIdentity(
            protocol="oidc",
            issuer=self.settings.issuer,
            subject=subject,
            subject_format=None,
            attributes={k: v for k, v in attributes.items() if v},
            authn_context=acr if isinstance(acr, str) and not unstorable(acr) else None,
            amr=tuple(a for a in amr if isinstance(a, str) and not unstorable(a))
            if isinstance(amr, list) else (),
            authn_instant=_number(id_claims, "auth_time"),
            warnings=_elsewhere_warning(merged),
        )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None

"""The downstream OpenID Provider of every tenant, framework-free: web/ calls these methods.

Endpoints (SPEC "Public endpoints"): discovery, JWKS, authorization (parse the request, later issue
the code or an error redirect), token, userinfo, introspection, revocation, RP-initiated logout. The
token, introspection and revocation endpoints run on authlib's core (see grants.py); authorization
request validation is written here (see parse_authorization_request for why).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from broker.issuer.grants import (
    AUTH_FAILED,
    JSON_HEADERS,
    NO_STORE,
    IssuerContext,
    Outcome,
    TenantServer,
    basic_credentials,
    grant_ttl,
    uses_basic,
)
from broker.issuer.keys import KeyRing, NoSigningKey, jwks_document, published_keys, unrevoked_keys
from broker.issuer.messages import (
    AppAnswer,
    AuthorizeError,
    EndSession,
    Headers,
    HttpRequest,
    HttpResponse,
    RevokedHint,
    SecretVerifier,
    add_query,
)
from broker.issuer.records import CodeRecord, Ledger
from broker.issuer.tokens import InvalidToken, TokenCodec, profile_claims
from broker.model import App, AuditEvent, AuthorizationRequest, Profile, Tenant
from broker.ports import AuditSink, Clock, ConfigReader, StateStore

__all__ = [
    "AuthorizeError",
    "EndSession",
    "HttpRequest",
    "HttpResponse",
    "Issuer",
    "SecretVerifier",
]

CODE_TTL = 60
SCOPES_SUPPORTED = ("openid", "profile", "email", "groups", "offline_access")
PROMPTS = frozenset({"none", "login", "consent", "select_account"})
CLAIMS_SUPPORTED = (
    "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "at_hash", "sid",
    "name", "given_name", "family_name", "email", "email_verified", "groups", "roles",
    "tenant", "connection", "idp",
)
# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is exactly 43 characters.
S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
MAX_PARAM = 2048


# RFC 6749's set, less < and >: many apps show error_description as it came, and a request value in it (a
# connection name, say) must not become markup there
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]")
DESCRIPTION_MAX = 200


def safe_description(text: str) -> str:
    """An error_description as RFC 6749 §4.1.2.1 allows it (%x20-21 / %x23-5B / %x5D-7E) without < and >, and
    short: what a request put into a message (a connection name, say) reaches the app neither raw, nor as
    markup, nor at length."""
    cleaned = _DESCRIPTION_UNSAFE.sub("?", text)
    return cleaned if len(cleaned) <= DESCRIPTION_MAX else cleaned[: DESCRIPTION_MAX - 3] + "..."


class Issuer:
    """The OpenID Provider. Holds no per-tenant state: config and keys are read per call."""

    def __init__(
        self,
        *,
        config: ConfigReader,
        state: StateStore,
        clock: Clock,
        secrets: SecretVerifier,
        public_url: str,
        audit: AuditSink,
    ) -> None:
        self._config = config
        self._ledger = Ledger(state)
        self._clock = clock
        self._secrets = secrets
        self._public_url = public_url.rstrip("/")
        self._audit = audit
        self._codec = TokenCodec(KeyRing())

    # --- metadata ---------------------------------------------------------------------------------

    def issuer_url(self, tenant: Tenant) -> str:
        return f"{self._public_url}/t/{tenant.slug}"

    def discovery(self, tenant: Tenant) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 §3 and RFC 8414 §2."""
        t = self.issuer_url(tenant)
        return {
            "issuer": t,
            "authorization_endpoint": f"{t}/authorize",
            "token_endpoint": f"{t}/token",
            "userinfo_endpoint": f"{t}/userinfo",
            "jwks_uri": f"{t}/jwks",
            "introspection_endpoint": f"{t}/introspect",
            "revocation_endpoint": f"{t}/revoke",
            "end_session_endpoint": f"{t}/logout",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "none",
            ],
            "scopes_supported": list(SCOPES_SUPPORTED),
            "claims_supported": list(CLAIMS_SUPPORTED),
            "code_challenge_methods_supported": ["S256"],
            "prompt_values_supported": sorted(PROMPTS),
            "authorization_response_iss_parameter_supported": True,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "claims_parameter_supported": False,
        }

    def jwks(self, tenant: Tenant) -> dict[str, Any]:
        return jwks_document(published_keys(self._config.signing_keys(tenant.id), self._clock.now()))

    # --- authorization endpoint -------------------------------------------------------------------

    def parse_authorization_request(self, tenant: Tenant, query: Mapping[str, str]) -> AuthorizationRequest:
        """RFC 6749 §4.1.1 / OIDC Core §3.1.2.1-2, as a checklist. Errors before the client and its
        redirect_uri are known are never redirected (§4.1.2.1).

        Written here rather than with authlib's AuthorizationCodeGrant: authlib falls back to a default
        redirect_uri, accepts a challenge without a method (= plain), does not require PKCE from public
        clients at this step, builds error descriptions from request values (which raise ValueError on
        a '"' in them), and ties `prompt` to an already signed-in user; our request is also carried
        across an upstream login as a frozen AuthorizationRequest before any code is issued.
        """
        state = _param(query, "state")

        def fail(code: str, message: str, redirect_uri: str | None = None) -> AuthorizeError:
            return AuthorizeError(message, code=code, redirect_uri=redirect_uri, state=state)

        # 1. client_id names an app of this tenant.
        client_id = _param(query, "client_id")
        if not client_id:
            raise fail("invalid_request", "The client_id parameter is missing.")
        app = self._app(tenant, client_id)
        if app is None:
            raise fail("invalid_client", "Unknown client.")
        # 2. redirect_uri is required and equals a registered one, character for character (§3.1.2.3).
        redirect_uri = _param(query, "redirect_uri")
        if not redirect_uri:
            raise fail("invalid_request", "The redirect_uri parameter is missing.")
        if redirect_uri not in app.redirect_uris:
            raise fail("invalid_request", "The redirect_uri is not registered for this client.")

        # A state too long to carry is not echoed back either (a redirect whose Location would be that long
        # breaks clients and proxies): like the two checks above, an error page.
        if state is not None and len(state) > MAX_PARAM:
            raise fail("invalid_request", "The state parameter is too long.")
        # Nor one with control characters (RFC 6749 A.5: state is visible characters): a browser rewrites them in
        # a form_post (NUL, bare CR or LF), and in a URL they are a header-injection risk for the app.
        if state is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in state):
            raise fail("invalid_request", "The state parameter contains control characters.")

        # From here on the error goes back to the app, the way it asked for: form_post (OAuth 2.0 Form Post
        # Response Mode) needs a web redirect_uri, a browser cannot POST to an app's custom scheme.
        response_mode = _param(query, "response_mode")
        form_post = response_mode == "form_post" and urlsplit(redirect_uri).scheme in ("https", "http")

        def refuse(code: str, message: str) -> AuthorizeError:
            return AuthorizeError(message, code=code, redirect_uri=redirect_uri, state=state, form_post=form_post)

        # 3. Request objects are not supported (OIDC Core §6.1, §6.2).
        if "request" in query:
            raise refuse("request_not_supported", "Request objects are not supported.")
        if "request_uri" in query:
            raise refuse("request_uri_not_supported", "request_uri is not supported.")
        # 4. response_type=code; response_mode query (the default) or form_post.
        response_type = _param(query, "response_type")
        if not response_type:  # RFC 6749 §4.1.2.1: a missing required parameter is invalid_request
            raise refuse("invalid_request", "The response_type parameter is missing.")
        if response_type != "code":
            raise refuse("unsupported_response_type", "Only response_type=code is supported.")
        if response_mode not in (None, "query", "form_post"):
            raise refuse("invalid_request", "Only response_mode query and form_post are supported.")
        if response_mode == "form_post" and not form_post:
            raise refuse("invalid_request", "response_mode=form_post needs an https or http redirect_uri.")
        # 5. scope: known, allowed for this app (§3.3).
        scope = _scopes(_param(query, "scope"))
        if not scope:
            raise refuse("invalid_scope", "The scope parameter is missing.")
        if any(s not in SCOPES_SUPPORTED or s not in app.allowed_scopes for s in scope):
            raise refuse("invalid_scope", "The requested scope is not allowed for this client.")
        # 6. PKCE (RFC 7636 §4.3): S256 only; a challenge without a method would mean plain.
        challenge = _param(query, "code_challenge")
        method = _param(query, "code_challenge_method")
        if method is not None and challenge is None:
            raise refuse("invalid_request", "code_challenge_method was sent without a code_challenge.")
        if challenge is not None:
            if method is None:
                raise refuse("invalid_request", "code_challenge_method is required and must be S256.")
            if method != "S256":
                raise refuse("invalid_request", "Only the S256 code_challenge_method is supported.")
            if not S256_CHALLENGE.match(challenge):
                raise refuse("invalid_request", "The code_challenge is malformed.")
        elif app.public:
            raise refuse("invalid_request", "Public clients must use PKCE (S256).")
        # 7. prompt (OIDC Core §3.1.2.1): known values; none excludes the others.
        prompt = tuple(_scopes(_param(query, "prompt")))
        if any(p not in PROMPTS for p in prompt):
            raise refuse("invalid_request", "Unknown prompt value.")
        if "none" in prompt and len(prompt) > 1:
            raise refuse("invalid_request", "prompt=none cannot be combined with other values.")
        # 8. max_age: a non-negative integer.
        max_age_raw = _param(query, "max_age")
        max_age: int | None = None
        if max_age_raw is not None:
            if not max_age_raw.isascii() or not max_age_raw.isdigit() or len(max_age_raw) > 10:
                raise refuse("invalid_request", "max_age must be a non-negative integer.")
            max_age = int(max_age_raw)
        # 9. sizes of the values we carry.
        nonce = _param(query, "nonce")
        login_hint = _param(query, "login_hint")
        for value in (state, nonce, login_hint):
            if value is not None and len(value) > MAX_PARAM:
                raise refuse("invalid_request", "A parameter is too long.")
        return AuthorizationRequest(
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            code_challenge_method=method if challenge is not None else None,
            prompt=prompt,
            max_age=max_age,
            login_hint=login_hint,
            response_mode="form_post" if form_post else None,
        )

    def authorization_response(
        self,
        tenant: Tenant,
        request: AuthorizationRequest,
        profile: Profile,
        *,
        auth_time: float,
        session_id: str,
    ) -> AppAnswer:
        """Issue a one-time code (RFC 6749 §4.1.2) and return the answer for the app, with `iss` (RFC 9207)."""
        app = self._checked_app(tenant, request)
        code = secrets.token_urlsafe(32)
        now = self._clock.now()
        connection = self._config.connection(tenant.id, profile.connection)
        record = CodeRecord(
            tenant_id=tenant.id,
            client_id=app.client_id,
            redirect_uri=request.redirect_uri,
            scope=request.scope,
            nonce=request.nonce,
            code_challenge=request.code_challenge,
            code_challenge_method=request.code_challenge_method,
            profile=profile,
            auth_time=auth_time,
            sid=session_id,
            gid=secrets.token_urlsafe(16),
            expires_at=now + CODE_TTL,
            app_id=app.id,
            connection_id=connection.id if connection is not None else None,
        )
        self._ledger.put_code(code, record, ttl=CODE_TTL, grant_ttl=CODE_TTL + grant_ttl(app, request.scope))
        return self._answer(tenant, request, [("code", code)])

    def error_answer(
        self, tenant: Tenant, request: AuthorizationRequest, error: str, description: str
    ) -> AppAnswer:
        """RFC 6749 §4.1.2.1 error response, with `iss` (RFC 9207)."""
        self._checked_app(tenant, request)
        return self._answer(tenant, request, [("error", error), ("error_description", safe_description(description))])

    def _answer(self, tenant: Tenant, request: AuthorizationRequest, params: list[tuple[str, str]]) -> AppAnswer:
        if request.state is not None:
            params.append(("state", request.state))
        params.append(("iss", self.issuer_url(tenant)))
        return AppAnswer(request.redirect_uri, tuple(params), form_post=request.response_mode == "form_post")

    # --- token, introspection, revocation (authlib) -----------------------------------------------

    def token(self, tenant: Tenant, req: HttpRequest) -> HttpResponse:
        """RFC 6749 §3.2 token endpoint: authorization_code and refresh_token grants."""
        server = self._server(tenant)
        grant_type = req.form.get("grant_type")
        if grant_type in ("authorization_code", "refresh_token"):
            server.outcome.grant_type = grant_type
        response = self._precheck(server, req)
        if response is None and not grant_type:  # missing is a malformed request, not an unsupported grant
            response = server.error_response(Headers(req.headers), "invalid_request",
                                             "The grant_type parameter is missing.")
        if response is None:
            try:
                response = server.create_token_response(req)
            except NoSigningKey as exc:
                server.outcome.details["detail"] = exc.detail
                response = server.error_response(Headers(req.headers), "server_error", exc.message)
        assert isinstance(response, HttpResponse)
        self._record(tenant, req, server.outcome, "token")
        return response

    def introspect(self, tenant: Tenant, req: HttpRequest) -> HttpResponse:
        """RFC 7662: client-authenticated; anything not live and not the caller's is {"active": false}."""
        server = self._server(tenant)
        response = self._precheck(server, req) or server.create_endpoint_response("introspection", req)
        assert isinstance(response, HttpResponse)
        if response.status != 200:
            self._record(tenant, req, server.outcome, "introspect")
        return response

    def revoke(self, tenant: Tenant, req: HttpRequest) -> HttpResponse:
        """RFC 7009: client-authenticated; 200 for unknown tokens."""
        server = self._server(tenant)
        response = self._precheck(server, req) or server.create_endpoint_response("revocation", req)
        assert isinstance(response, HttpResponse)
        self._record(tenant, req, server.outcome, "revoke")
        return response

    # --- userinfo --------------------------------------------------------------------------------

    def userinfo(self, tenant: Tenant, req: HttpRequest) -> HttpResponse:
        """OIDC Core §5.3 with RFC 6750 bearer tokens (header; form body for POST)."""
        headers = Headers(req.headers)
        realm = self.issuer_url(tenant)
        auth = headers.get("authorization", "").strip()
        body_token = req.form.get("access_token") if req.method.upper() == "POST" else None
        token: str | None = None
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return _bearer_error(realm, 401, "invalid_request", "Use the Bearer scheme.")
            token = value.strip()
            if body_token:
                return _bearer_error(realm, 400, "invalid_request", "More than one access token.")
        elif body_token:
            token = body_token
        if token is None:
            return HttpResponse(401, {"WWW-Authenticate": f'Bearer realm="{realm}"', **NO_STORE}, {
                "error": "invalid_request", "error_description": "An access token is required."})
        server = self._server(tenant)
        try:
            claims, grant = server.verify_access(token)
        except InvalidToken:
            return _bearer_error(realm, 401, "invalid_token", "The access token is invalid.")
        scope = _scopes(str(claims.get("scope", "")))
        if "openid" not in scope:
            return _bearer_error(realm, 403, "insufficient_scope", "The openid scope is required.")
        return HttpResponse(200, dict(JSON_HEADERS), profile_claims(grant.profile, scope))

    # --- RP-initiated logout ----------------------------------------------------------------------

    def end_session(self, tenant: Tenant, query: Mapping[str, str]) -> EndSession:
        """OIDC RP-Initiated Logout 1.0 §2-3: checks the request; says where to send the browser afterwards
        (None: our page) and which broker session the id_token_hint was issued in (its `sid`), so the caller
        can tell whether the End-User must be asked first (§2: no hint, or a hint of another session)."""
        hint = _param(query, "id_token_hint")
        sid: str | None = None
        client_id = _param(query, "client_id")
        target = _param(query, "post_logout_redirect_uri")
        state = _param(query, "state")
        revoked = False
        if hint is not None:
            try:
                claims, audiences = self._id_token_hint(tenant, hint)
            except RevokedHint:
                # read as no hint: the user is asked, and sent on only where a client_id sent along allows
                revoked = True
            else:
                if client_id is None:
                    client_id = str(claims.get("azp") or audiences[0])
                elif client_id not in audiences:
                    raise AuthorizeError("client_id does not match the id_token_hint.")
                hint_sid = claims.get("sid")
                sid = hint_sid if isinstance(hint_sid, str) else None
        if target is None or (revoked and client_id is None):
            return EndSession(None, sid, hint_revoked=revoked)
        if client_id is None:
            raise AuthorizeError("post_logout_redirect_uri needs an id_token_hint or a client_id.")
        app = self._app(tenant, client_id)
        if app is None or target not in app.post_logout_redirect_uris:
            raise AuthorizeError("The post_logout_redirect_uri is not registered for this client.")
        return EndSession(add_query(target, [("state", state)] if state is not None else []), sid,
                          hint_revoked=revoked)

    def hinted_user(self, tenant: Tenant, hint: str) -> tuple[str, str]:
        """An /authorize id_token_hint (OIDC Core §3.1.2.1): the `sub` it names and the client it was issued
        to (whose `sub` that is: a pairwise app's own). AuthorizeError when it is not an ID token of ours."""
        claims, audiences = self._id_token_hint(tenant, hint)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthorizeError("The id_token_hint is not an ID token.")
        return sub, str(claims.get("azp") or audiences[0])

    # --- internals -------------------------------------------------------------------------------

    def _id_token_hint(self, tenant: Tenant, hint: str) -> tuple[Mapping[str, Any], list[str]]:
        """The claims and audiences of an ID token this tenant issued, expired or not (a hint may have expired:
        OIDC Core §3.1.2.1, RP-Initiated Logout §2), signed with any key the tenant has, unpublished ones too:
        an RP may keep an ID token for longer than a rotated-out key stays in the JWKS. One of a revoked key's is
        RevokedHint."""
        keys = self._config.signing_keys(tenant.id)
        try:
            verified = self._codec.verify(
                hint,
                unrevoked_keys(keys),
                issuer=self.issuer_url(tenant),
                now=self._clock.now(),
                typ=None,
                check_exp=False,
                revoked=frozenset(k.kid for k in keys if k.revoked_at is not None),
            )
        except InvalidToken as exc:
            if exc.reason == "revoked_kid":
                raise RevokedHint("The id_token_hint was signed with a revoked key.", detail=exc.reason) from exc
            raise AuthorizeError("The id_token_hint is invalid.", detail=exc.reason) from exc
        aud = verified.claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        if verified.header.get("typ", "JWT").lower() == "at+jwt" or not audiences:
            raise AuthorizeError("The id_token_hint is not an ID token.")
        return verified.claims, [str(a) for a in audiences]

    def _app(self, tenant: Tenant, client_id: str) -> App | None:
        app = self._config.app(tenant.id, client_id)
        return app if app is not None and app.tenant_id == tenant.id else None

    def _checked_app(self, tenant: Tenant, request: AuthorizationRequest) -> App:
        """The app of a carried request, re-checked: it may have changed during the upstream login."""
        app = self._app(tenant, request.client_id)
        if app is None or request.redirect_uri not in app.redirect_uris:
            raise AuthorizeError(
                "The client or its redirect_uri is no longer registered.", state=request.state
            )
        return app

    def _server(self, tenant: Tenant) -> TenantServer:
        return TenantServer(
            IssuerContext(
                tenant=tenant,
                issuer=self.issuer_url(tenant),
                config=self._config,
                ledger=self._ledger,
                codec=self._codec,
                clock=self._clock,
                secrets=self._secrets,
            )
        )

    def _precheck(self, server: TenantServer, req: HttpRequest) -> HttpResponse | None:
        """Checks authlib leaves out: POST only; one client authentication mechanism (RFC 6749 §2.3)."""
        headers = Headers(req.headers)
        if req.method.upper() != "POST":
            return server.error_response(headers, "invalid_request", "Use POST.")
        if uses_basic(headers) and basic_credentials(headers) is None:
            # credentials that cannot be read are failed credentials: never a fall-back to another method
            return server.error_response(headers, "invalid_client", AUTH_FAILED)
        if headers.get("authorization") is not None and req.form.get("client_secret"):
            return server.error_response(headers, "invalid_request", "Use one client authentication method.")
        return None

    def _record(self, tenant: Tenant, req: HttpRequest, outcome: Outcome, endpoint: str) -> None:
        client_id = outcome.client_id
        if client_id is None:  # claimed, not authenticated: for the audit trail only
            creds = basic_credentials(Headers(req.headers))
            client_id = creds[0] if creds else req.form.get("client_id")
            if client_id is not None:
                client_id = client_id[:200]
        details: dict[str, Any] = {"endpoint": endpoint, **outcome.details}
        if outcome.grant_type:
            details["grant_type"] = outcome.grant_type
        result: Literal["success", "failure"] = "failure" if outcome.error else "success"
        self._audit.record(
            AuditEvent(
                id=str(uuid.uuid4()),
                time=datetime.fromtimestamp(self._clock.now(), UTC),
                type="token",
                tenant=tenant.slug,
                connection=outcome.connection,
                app=client_id,
                outcome=result,
                reason=outcome.error,
                details=details,
            )
        )


def _param(query: Mapping[str, str], name: str) -> str | None:
    """A parameter's value; an empty value counts as absent (RFC 6749 §3.1)."""
    value = query.get(name)
    return value if value else None


def _scopes(raw: str | None) -> tuple[str, ...]:
    """RFC 6749 §3.3: space-delimited, case-sensitive; duplicates dropped, order kept."""
    if not raw:
        return ()
    return tuple(dict.fromkeys(s for s in raw.split(" ") if s))


def _bearer_error(realm: str, status: int, code: str, description: str) -> HttpResponse:
    """RFC 6750 §3."""
    challenge = f'Bearer realm="{realm}", error="{code}", error_description="{description}"'
    return HttpResponse(
        status, {"WWW-Authenticate": challenge, "Content-Type": "application/json", **NO_STORE},
        {"error": code, "error_description": description},
    )

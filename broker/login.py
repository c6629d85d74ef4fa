"""The login state machine: home-realm discovery, begin() an upstream login, finish() it, broker sessions.

begin() saves a LoginTransaction in the StateStore under a fresh random handle (sent upstream as RelayState
or OIDC state) and binds it to the browser through a digest of a cookie value. finish() takes the
transaction exactly once, and only when it belongs to this connection and this browser (otherwise it stays
for its owner), lets the connector verify the upstream answer, maps claims, and returns the Profile with the
app request to answer.
Nothing here knows HTTP: the web layer passes cookie values and parameters in, and renders what comes out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, fields, replace
from typing import Any

from broker import logs
from broker.audit import Auditor
from broker.claims.pipeline import apply, compile_mapping
from broker.claims.subject import pairwise_sub
from broker.errors import BrokerError, LoginError, NotFound, ServiceUnavailable, StateStoreError
from broker.metrics import Metrics
from broker.model import (
    AuthorizationRequest,
    Connection,
    LoginTransaction,
    Profile,
    Tenant,
    UpstreamIdentity,
    email_domain,
    profile_from_json,
    profile_to_json,
)
from broker.ports import Clock, ConfigReader, StateStore
from broker.upstream.base import BeginRequest, CallbackInput, Connector, Step
from broker.upstream.registry import ConnectorRegistry

log = logs.get("broker.login")

TXN_PREFIX = "txn:"
SESSION_PREFIX = "sess:"
RESULT_PREFIX = "login-result:"
# In LoginTransaction.upstream beside what the connector remembers (replicas of earlier versions ignore it):
# this login already asked the upstream for a fresh authentication (prompt=login, max_age=0, or a restart).
FORCED_KEY = "broker_forced_authn"


def _too_old(authn_instant: float | None, max_age: int | None, now: float, connection: Connection) -> bool:
    """True when the upstream's authentication instant is older than the app's max_age, allowing the
    connection's clock skew (the IdP's clock is not ours)."""
    if max_age is None or authn_instant is None:
        return False
    skew = connection.settings.get("clock_skew_seconds")
    leeway = skew if isinstance(skew, int) and not isinstance(skew, bool) and skew >= 0 else 120
    return now - authn_instant > max_age + leeway


_TXN_ID = re.compile(r"[A-Za-z0-9_-]{32}\.([0-9a-f]{1,12})\Z")


def new_txn_id(expires_at: float) -> str:
    """A login transaction's handle (the SAML RelayState, the OIDC state): 32 random characters and, after
    a dot, when the transaction expires (hex seconds; 41 characters in all, within RelayState's 80 bytes).
    The time is not a secret and not trusted: it only lets an answer that finds no transaction say that the
    sign-in took too long rather than that it does not belong here (txn_id_expired)."""
    return f"{secrets.token_urlsafe(24)}.{int(expires_at):x}"


def txn_id_expired(txn_id: str, now: float) -> bool:
    """True when `txn_id` has new_txn_id's form and its expiry time has passed."""
    m = _TXN_ID.match(txn_id)
    return m is not None and int(m.group(1), 16) < now


def _login_expired(ttl: int) -> LoginError:
    minutes = max(1, ttl // 60)
    return LoginError(f"This sign-in took too long (more than {minutes} minute{'s' if minutes > 1 else ''}). "
                      "Go back to the application and sign in again.", code="login_expired")


def binding_digest(cookie_value: str) -> str:
    return hashlib.sha256(b"broker-browser-binding\x00" + cookie_value.encode()).hexdigest()


def public_sid(session_id: str) -> str:
    """The `sid` claim for a broker session: derived one-way, so an ID token never carries the cookie value
    that would let its holder take over the session."""
    return hashlib.sha256(b"broker-sid\x00" + session_id.encode()).hexdigest()[:32]


def _owner_fields(tenant_id: str, connection_id: str, browser_binding: str | None) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "connection_id": connection_id, "browser_binding": browser_binding}


def txn_owner_prefix(tenant_id: str, connection_id: str, browser_binding: str | None) -> bytes:
    """The first bytes of a stored transaction that only its owner can name: tenant, connection (the ACS or
    callback it must come back to) and browser binding. finish() takes a transaction only when they match
    (StateStore.take_if_prefixed), so an answer posted from another browser or to another connection is
    refused without consuming the login of the browser that started it."""
    head = json.dumps(_owner_fields(tenant_id, connection_id, browser_binding), separators=(",", ":"))
    return head[:-1].encode() + b","


_REQUEST_ORDER = tuple(f.name for f in fields(AuthorizationRequest))
_REQUEST_FIELDS = frozenset(_REQUEST_ORDER)
_TXN_FIELDS = tuple(f.name for f in fields(LoginTransaction))
_LATER_FIELDS = ("response_mode", "hint_sub", "hint_client")


def txn_to_json(txn: LoginTransaction) -> bytes:
    """JSON with the owner fields first, in a fixed order (txn_owner_prefix); the rest as asdict() has it.
    A request's fields newer than the others (_LATER_FIELDS) are written only when set, so a replica of the
    release before, in a rolling upgrade, can read every login that does not use them."""
    head = _owner_fields(txn.tenant_id, txn.connection_id, txn.browser_binding)
    data: dict[str, Any] = {**head}
    for name in _TXN_FIELDS:
        if name not in head:
            data[name] = getattr(txn, name)
    data["upstream"] = dict(txn.upstream)
    if txn.request is not None:  # what asdict() would give, without its deep copies (a login's hot path)
        req = {name: getattr(txn.request, name) for name in _REQUEST_ORDER}
        for name in _LATER_FIELDS:
            if req[name] is None:
                del req[name]
        data["request"] = req
    return json.dumps(data, separators=(",", ":")).encode()


def txn_from_json(raw: bytes) -> LoginTransaction:
    data = json.loads(raw)
    req = data.get("request")
    request = None
    if req is not None:
        # fields a later release added are dropped (a rolling upgrade's newer replica began this login)
        known = {k: v for k, v in req.items() if k in _REQUEST_FIELDS}
        request = AuthorizationRequest(**{**known, "scope": tuple(req["scope"]),
                                          "prompt": tuple(req.get("prompt", ()))})
    data["request"] = request
    return LoginTransaction(**data)


@dataclass(frozen=True, slots=True)
class Started:
    step: Step
    txn_id: str


@dataclass(frozen=True, slots=True)
class Finished:
    profile: Profile
    request: AuthorizationRequest | None  # None only for a connection test (purpose == "test")
    connection: Connection
    auth_time: float
    session_id: str
    identity: UpstreamIdentity
    purpose: str = "login"
    txn_id: str | None = None


@dataclass(frozen=True, slots=True)
class Restarted:
    """The upstream answered with an authentication older than the app's max_age: the login was started
    again (a new transaction, forced re-authentication) and the browser goes back upstream with `step`."""

    step: Step
    txn_id: str


@dataclass(frozen=True, slots=True)
class BrokerSession:
    id: str
    tenant_id: str
    connection_slug: str
    profile: Profile
    auth_time: float
    connection_id: str | None = None  # None: saved by an earlier version, which did not record it


class LoginFailed(Exception):
    """A refused login. `request` is set when the app's request is known and valid (redirect with error)."""

    def __init__(self, error: BrokerError, request: AuthorizationRequest | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request = request


class LoginService:
    def __init__(
        self,
        *,
        config: ConfigReader,
        state: StateStore,
        clock: Clock,
        registry: ConnectorRegistry,
        auditor: Auditor,
        metrics: Metrics,
        login_ttl: int = 600,
        session_ttl: int = 8 * 3600,
        on_success: Any = None,
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self.registry = registry
        self.auditor = auditor
        self.metrics = metrics
        self.login_ttl = login_ttl
        self.session_ttl = session_ttl
        self.on_success = on_success

    # -- home-realm discovery --------------------------------------------------------------------

    def discover(self, tenant: Tenant, *, connection: str | None, login_hint: str | None) -> Connection | None:
        """SPEC: `connection=` first, else the login_hint's email domain, else None (ask for the email)."""
        if connection:
            found = self.config.connection(tenant.id, connection)
            if found is None:
                raise NotFound(f"This tenant has no connection {connection!r}.", code="unknown_connection")
            if not found.enabled:
                raise NotFound(f"The connection {connection!r} is disabled.", code="connection_disabled")
            return found
        domain = email_domain(login_hint)
        if domain is None:
            return None
        for c in self.config.connections(tenant.id):
            if c.enabled and domain in c.domains:
                return c
        return None

    # -- begin -----------------------------------------------------------------------------------

    def begin(
        self, tenant: Tenant, connection: Connection, request: AuthorizationRequest | None, *, browser_binding: str,
        purpose: str = "login", reauth: bool = False,
    ) -> Started:
        now = self.clock.now()
        txn_id = new_txn_id(now + self.login_ttl)
        force = reauth or bool(request and ("login" in request.prompt or request.max_age == 0))
        connector = self.registry.open(connection)
        result = connector.begin(
            BeginRequest(
                txn_id=txn_id,
                login_hint=request.login_hint if request else None,
                force_authn=force,
                max_age=request.max_age if request else None,
                select_account=bool(request and "select_account" in request.prompt),
            )
        )
        txn = LoginTransaction(
            id=txn_id,
            tenant_id=tenant.id,
            tenant_slug=tenant.slug,
            connection_id=connection.id,
            connection_slug=connection.slug,
            request=request,
            upstream={**result.remember, **({FORCED_KEY: "1"} if force else {})},
            browser_binding=browser_binding,
            created_at=now,
            expires_at=now + self.login_ttl,
            purpose=purpose,
        )
        self.state.put(TXN_PREFIX + txn_id, txn_to_json(txn), ttl=self.login_ttl)
        self.metrics.logins_started.labels(tenant=tenant.slug, connection=connection.slug).inc()
        return Started(step=result.step, txn_id=txn_id)

    # -- finish ----------------------------------------------------------------------------------

    def _take_txn(
        self, txn_id: str | None, tenant: Tenant, connection: Connection, browser_binding: str | None
    ) -> LoginTransaction | None:
        """The pending transaction named by the upstream answer, consumed only when it belongs here: this
        tenant, this connection and the browser that started it. Anything else raises without consuming it,
        so a forged or misrouted answer cannot end someone else's login."""
        if not txn_id or len(txn_id) > 200:
            return None
        key = TXN_PREFIX + txn_id
        raw, taken = self.state.take_if_prefixed(
            key, txn_owner_prefix(tenant.id, connection.id, browser_binding or None)
        )
        if raw is None:
            if txn_id_expired(txn_id, self.clock.now()):
                raise _login_expired(self.login_ttl)
            return None
        txn = txn_from_json(raw)
        if not taken:
            if txn.tenant_id != tenant.id or txn.connection_id != connection.id:
                raise LoginError("This sign-in response arrived at the wrong connection.",
                                 code="login_transaction_mismatch")
            if browser_binding is None or not hmac.compare_digest(txn.browser_binding, browser_binding):
                raise LoginError(
                    "This sign-in was started in another browser (or its cookie was lost). Please start again.",
                    code="login_browser_mismatch",
                )
            # Its owner, stored with the fields in another order (by an earlier version): take it plainly.
            if self.state.take(key) is None:
                return None
        if txn.expires_at < self.clock.now():
            raise _login_expired(self.login_ttl)
        return txn

    def finish(
        self, tenant: Tenant, connection: Connection, callback: CallbackInput, *, browser_binding: str | None
    ) -> Finished | Restarted:
        request: AuthorizationRequest | None = None
        purpose = "login"
        txn: LoginTransaction | None = None
        try:
            connector = self.registry.open(connection)
            txn = self._take_txn(connector.transaction_id(callback), tenant, connection, browser_binding)
            if txn is not None:
                request = txn.request
                purpose = txn.purpose
            if not connection.enabled:  # disabled while this login was at the IdP: it ends here, refused
                raise LoginError("This sign-in connection has been disabled.", code="connection_disabled")
            if callback.repeated:  # which copy is meant? (the one a proxy or WAF inspected?) neither
                raise LoginError("The sign-in response repeats a parameter that may appear only once.",
                                 code="saml_response_malformed" if connection.protocol == "saml"
                                 else "oidc_invalid_response", detail=f"repeated: {', '.join(callback.repeated)}")
            unsolicited: AuthorizationRequest | None = None
            if txn is None and connection.settings.get("allow_idp_initiated"):
                # Before the response is verified: a connection whose IdP-initiated app is missing refuses
                # without consuming the assertion, which its IdP can post again once the app is fixed.
                unsolicited = self._idp_initiated_request(tenant, connection)
            identity = connector.complete(callback, txn)
            if request is None and purpose != "test":
                request = unsolicited or self._idp_initiated_request(tenant, connection)
            mapping = compile_mapping(connection.mapping)
            profile = apply(mapping, identity, tenant=tenant.slug, tenant_id=tenant.id,
                            connection=connection.slug, connection_id=connection.id,
                            domains=connection.domains)
            if connection.restrict_to_domains:
                domain = email_domain(profile.email)  # as stored: xn-- or not
                if domain is None or domain not in connection.domains:
                    raise LoginError("Your email address is not in a domain this connection accepts.",
                                     code="login_domain_not_allowed", detail=f"domain={domain}")
            if txn is not None and request is not None and not self.is_hinted_user(tenant, profile, request):
                # OIDC Core §3.1.2.1: the app named another user (id_token_hint) than the one who signed in
                raise LoginError("You signed in as a different user than the application expected.",
                                 code="login_hint_other_user")
            now = self.clock.now()
            instant = identity.authn_instant
            if instant is not None and not 0 <= instant <= now:
                # No one signed in in the future (an upstream clock ahead of ours, or nonsense): that sign-in is
                # now, not a later time that would pass every max_age check until it came. Before 1970: unknown.
                identity = replace(identity, authn_instant=now if instant > now else None)
            if txn is not None and request is not None and purpose == "login" and request.max_age is not None:
                # OIDC Core §3.1.2.1: past max_age the OP must re-authenticate. An upstream that reused an older
                # sign-in, or did not say when the user signed in (no auth_time, no AuthnStatement), is asked
                # once more, this time forcing a fresh sign-in (SAML ForceAuthn, OIDC prompt=login).
                unknown = identity.authn_instant is None
                if unknown or _too_old(identity.authn_instant, request.max_age, now, connection):
                    if txn.upstream.get(FORCED_KEY) != "1":
                        started = self.begin(tenant, connection, request, browser_binding=txn.browser_binding,
                                             reauth=True)
                        log.info("login_reauth_for_max_age", extra={"max_age": request.max_age,
                                                                     "authn_instant_missing": unknown})
                        return Restarted(step=started.step, txn_id=started.txn_id)
                    # asked to force a fresh sign-in: an unknown instant is taken as now, and the audit says so
                    warning = "max_age_unverified" if unknown else "max_age_not_honored"
                    identity = replace(identity, warnings=(*identity.warnings, warning))
        except StateStoreError:
            raise
        except BrokerError as err:
            self._failed(tenant, connection, request, err)
            raise LoginFailed(err, request) from None
        auth_time = identity.authn_instant if identity.authn_instant is not None else now
        session_id = secrets.token_urlsafe(24)
        details: dict[str, Any] = {"sub": profile.sub, "idp": profile.idp}
        if identity.warnings:
            details["warnings"] = list(identity.warnings)
        if profile.warnings:
            details["mapping_warnings"] = list(profile.warnings)
        if purpose == "test":
            details["test"] = True
        try:
            self.auditor.emit("login", "success", tenant=tenant.slug, connection=connection.slug,
                              app=request.client_id if request else None, details=details, required=True)
        except ServiceUnavailable:
            # not recorded, so it did not happen (no code, no session): what it used up is given back, so that
            # the browser's retry of the same answer succeeds once the database is back
            self._give_back(connector, identity, txn)
            raise
        self.metrics.logins_succeeded.labels(tenant=tenant.slug, connection=connection.slug).inc()
        if self.on_success is not None and purpose == "login":
            self.on_success(connection, now)
        return Finished(profile=profile, request=request, connection=connection, auth_time=auth_time,
                        session_id=session_id, identity=identity, purpose=purpose,
                        txn_id=txn.id if txn is not None else None)

    def _give_back(self, connector: Connector, identity: UpstreamIdentity, txn: LoginTransaction | None) -> None:
        """The transaction goes back (as it was, for the time it had left), then the connector gives back what
        the answer used up (SAML: the assertion leaves the replay cache), so that a retry of the same answer
        finds both. Where the connector cannot (OIDC: the OP's code is spent, and the OP would refuse it), the
        transaction is taken out again: that login is over, as before. Nothing is given back once the
        transaction has expired, nor the answer when the transaction could not be put back."""
        try:
            if txn is not None:
                left = txn.expires_at - self.clock.now()
                if left <= 0:
                    return
                self.state.put(TXN_PREFIX + txn.id, txn_to_json(txn), ttl=left)
            given_back = connector.release(identity)
            if not given_back and txn is not None:
                self.state.delete(TXN_PREFIX + txn.id)
        except StateStoreError as exc:
            log.warning("login_not_given_back", extra={"cause": exc.detail or exc.message})
            return
        log.info("login_given_back" if given_back else "login_not_given_back", extra={"transaction": txn is not None})

    def is_hinted_user(self, tenant: Tenant, profile: Profile, request: AuthorizationRequest) -> bool:
        """Whether `profile` is the user the request's id_token_hint names (True without a hint), compared as
        the hint's own client sees subjects: a pairwise app's hint holds that app's `sub`."""
        if request.hint_sub is None or request.hint_client is None:
            return True
        app = self.config.app(tenant.id, request.hint_client)
        mine = profile.sub
        if app is not None and app.tenant_id == tenant.id and app.subject_type == "pairwise":
            mine = pairwise_sub(profile.sub, app.client_id)
        return hmac.compare_digest(mine.encode(), request.hint_sub.encode())

    def _idp_initiated_request(self, tenant: Tenant, connection: Connection) -> AuthorizationRequest:
        app_id = connection.settings.get("idp_initiated_app")
        redirect_uri = connection.settings.get("idp_initiated_redirect_uri")
        app = self.config.app(tenant.id, str(app_id)) if app_id else None
        if app is None or not redirect_uri or redirect_uri not in app.redirect_uris:
            raise LoginError("IdP-initiated sign-in is not configured for an app on this connection.",
                             code="saml_idp_initiated_not_configured")
        # no request to say which claims the app wants: the standard ones it may have, groups included
        scope = tuple(s for s in ("openid", "profile", "email", "groups") if s == "openid" or s in app.allowed_scopes)
        return AuthorizationRequest(
            client_id=app.client_id, redirect_uri=str(redirect_uri), scope=scope,
            state=None, nonce=None, code_challenge=None, code_challenge_method=None,
        )

    def _failed(self, tenant: Tenant, connection: Connection, request: AuthorizationRequest | None,
                err: BrokerError) -> None:
        self.metrics.logins_failed.labels(tenant=tenant.slug, connection=connection.slug, reason=err.code).inc()
        details: dict[str, Any] = {"message": err.message}
        if err.detail:
            details["detail"] = err.detail[:500]
        self.auditor.emit("login", "failure", tenant=tenant.slug, connection=connection.slug,
                          app=request.client_id if request else None, reason=err.code, details=details)
        log.info("login_failed", extra={"code": err.code})

    def record_begin_failure(self, tenant: Tenant, connection: Connection | None,
                             request: AuthorizationRequest | None, err: BrokerError) -> None:
        if connection is not None:
            self._failed(tenant, connection, request, err)
        else:
            self.auditor.emit("login", "failure", tenant=tenant.slug, app=request.client_id if request else None,
                              reason=err.code, details={"message": err.message, **err.details})

    # -- broker sessions (single sign-on across apps of one tenant) ----------------------------------

    def save_session(self, tenant: Tenant, finished: Finished) -> str:
        payload = {
            "id": finished.session_id,
            "tenant_id": tenant.id,
            "connection_slug": finished.connection.slug,
            "connection_id": finished.connection.id,
            "profile": profile_to_json(finished.profile),
            "auth_time": finished.auth_time,
        }
        ttl = self.session_ttl
        ends = finished.identity.session_ends_at
        if ends is not None:  # single sign-on lasts no longer than the upstream's own session (SAML 2.0 core §2.7.2)
            ttl = min(ttl, int(ends - self.clock.now()))
            if ttl <= 0:
                return finished.session_id  # already over: this login answers its app, and no other
        self.state.put(SESSION_PREFIX + finished.session_id, json.dumps(payload).encode(), ttl=ttl)
        return finished.session_id

    def session(self, tenant: Tenant, session_id: str | None) -> BrokerSession | None:
        if not session_id or len(session_id) > 200:
            return None
        raw = self.state.get(SESSION_PREFIX + session_id)
        if raw is None:
            return None
        data = json.loads(raw)
        if data.get("tenant_id") != tenant.id:
            return None
        return BrokerSession(id=data["id"], tenant_id=data["tenant_id"], connection_slug=data["connection_slug"],
                             profile=profile_from_json(data["profile"]), auth_time=float(data["auth_time"]),
                             connection_id=data.get("connection_id"))

    # -- connection tests and the demo: what the upstream really sent --------------------------------

    def save_result(self, key: str, finished: Finished, ttl: int = 600) -> None:
        """Keep the raw upstream identity and the mapped profile of one login (connection tests, demo page)."""
        ident = finished.identity
        payload = {
            "tenant": finished.connection.tenant_slug,
            "connection": finished.connection.slug,
            "protocol": ident.protocol,
            "issuer": ident.issuer,
            "subject": ident.subject,
            "subject_format": ident.subject_format,
            "attributes": {k: list(v) for k, v in ident.attributes.items()},
            "authn_context": ident.authn_context,
            "warnings": list(ident.warnings),
            "profile": profile_to_json(finished.profile),
        }
        self.state.put(RESULT_PREFIX + key, json.dumps(payload).encode(), ttl=ttl)

    def result(self, key: str) -> dict[str, Any] | None:
        if not key or len(key) > 200:
            return None
        raw = self.state.get(RESULT_PREFIX + key)
        if raw is None:
            return None
        out: dict[str, Any] = json.loads(raw)
        return out

    def end_session(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 200:
            self.state.delete(SESSION_PREFIX + session_id)

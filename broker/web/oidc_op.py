"""The downstream OpenID Provider's HTTP surface at /t/<tenant>/...: discovery, JWKS, authorize, token,
userinfo, introspection, revocation, logout. Protocol work is in broker/issuer and broker/login."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.datastructures import MultiDict

from broker import logs
from broker.claims.subject import pairwise_sub
from broker.errors import BrokerError, LoginError, NotFound, OAuthError
from broker.issuer.messages import AppAnswer, RevokedHint
from broker.issuer.server import AuthorizeError, HttpRequest, HttpResponse
from broker.login import LoginFailed, Restarted, public_sid
from broker.model import AuthorizationRequest, Connection, Profile, Tenant, email_domain
from broker.upstream.base import AutoPost, CallbackInput
from broker.web.context import current_request, services
from broker.web.cookies import browser_binding, clear_session_cookie, session_id_of, set_session_cookie
from broker.web.errors import html_error, html_page, oauth_error, redirect_to
from broker.web.steps import render_step

bp = Blueprint("oidc_op", __name__, url_prefix="/t/<tenant>")
log = logs.get("broker.web.oidc_op")


def load_tenant(slug: str) -> Tenant:
    tenant = services().config.tenant_by_slug(slug)
    if tenant is None:
        raise NotFound("No such tenant.", code="tenant_not_found")
    logs.tenant.set(tenant.slug)
    return tenant


def http_request() -> HttpRequest:
    req = current_request()
    form: dict[str, str] = {}
    if req.method == "POST" and req.mimetype == "application/x-www-form-urlencoded":
        form = {k: v for k, v in req.form.items()}
    return HttpRequest(
        method=req.method,
        url=req.url,
        headers={k: v for k, v in req.headers.items()},
        query={k: v for k, v in req.args.items()},
        form=form,
    )


def to_flask(resp: HttpResponse) -> Response:
    if isinstance(resp.body, dict):
        out = jsonify(resp.body)
    else:
        out = Response(resp.body)
    out.status_code = resp.status
    for k, v in resp.headers.items():
        out.headers[k] = v
    return out


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


# RFC 6749 §3.1/§3.2: "Request and response parameters MUST NOT be included more than once." Which value a
# repeated one means is anyone's guess (the first? the last? the one a proxy or WAF looked at?), so such a
# request is refused rather than read with the first value.
SINGLE_VALUED = (
    "client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method", "prompt", "max_age", "login_hint", "connection", "response_mode", "grant_type",
    "code", "code_verifier", "refresh_token", "client_secret", "client_assertion", "client_assertion_type",
    "token", "token_type_hint", "id_token_hint",
)


_SINGLE_VALUED = frozenset(SINGLE_VALUED)


def repeated_params(values: MultiDict[str, str]) -> list[str]:
    """The single-valued parameters that `values` (a query or a form) carries more than once, in
    SINGLE_VALUED's order."""
    found = [name for name, given in values.lists() if len(given) > 1 and name in _SINGLE_VALUED]
    return sorted(found, key=SINGLE_VALUED.index) if found else found


def _repeated_message(names: list[str]) -> str:
    return f"Parameters must not be repeated (RFC 6749 §3.1): {', '.join(names)}."


def _repeated_in_form(tenant: Tenant, endpoint: str) -> Response | None:
    """The RFC 6749 §5.2 answer for a token, introspection or revocation request with a repeated parameter
    (the form is read only when it is one, as http_request() does), audited like the issuer's own refusals;
    else None."""
    if request.method != "POST" or request.mimetype != "application/x-www-form-urlencoded":
        return None
    names = repeated_params(request.form)
    if not names:
        return None
    services().auditor.emit("token", "failure", tenant=tenant.slug, reason="invalid_request",
                            details={"endpoint": endpoint, "repeated": names})
    return oauth_error(OAuthError(_repeated_message(names), code="invalid_request"))


# Browser-based public clients (SPAs with PKCE) redeem codes and revoke tokens from another origin: the token
# and revocation endpoints answer CORS, like discovery, JWKS and userinfo. They take no cookies (the client
# authenticates with the request itself), so `*` is right and credentials are never allowed.
CORS_ENDPOINTS = frozenset({"oidc_op.token", "oidc_op.revoke", "oidc_op.userinfo"})
CORS_MAX_AGE = "7200"  # seconds a browser may cache the preflight (Chromium caps it at 2 hours)


@bp.after_request
def _cors(resp: Response) -> Response:
    """Access-Control-Allow-Origin on every answer of the CORS endpoints, errors included (an SPA must be able
    to read `invalid_grant`)."""
    if request.endpoint in CORS_ENDPOINTS:
        resp.headers["Access-Control-Allow-Origin"] = "*"
        if request.endpoint == "oidc_op.userinfo":  # RFC 6750 §3: why a bearer token was refused
            resp.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
    return resp


def _preflight(methods: str = "POST") -> Response:
    """The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method): `methods` with the headers
    a client sends (Authorization for client_secret_basic or a bearer token, Content-Type for the form)."""
    resp = Response(status=204)
    resp.headers["Allow"] = f"OPTIONS, {methods}"
    resp.headers["Access-Control-Allow-Methods"] = methods
    resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    resp.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    return resp


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery(tenant: str) -> Response:
    t = load_tenant(tenant)
    resp = jsonify(services().extras["issuer"].discovery(t))
    resp.headers["Cache-Control"] = "public, max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.get("/jwks")
def jwks(tenant: str) -> Response:
    t = load_tenant(tenant)
    resp = jsonify(services().extras["issuer"].jwks(t))
    # a rotation signs with the new key at once: a cache must not keep the set without it for long
    resp.headers["Cache-Control"] = "public, max-age=60"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


EMAIL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:5rem auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}}
.err{{color:#a00}}</style></head>
<body><h1>Sign in</h1><p>Enter your work email address; we will send you to your company's sign-in page.</p>
{error}<form method="get" action="">{hidden}
<label for="login_hint">Work email</label>
<input id="login_hint" name="login_hint" type="email" autocomplete="email" required autofocus value="{value}">
<button type="submit">Continue</button></form></body></html>"""


def email_page(params: dict[str, str], error: str | None = None) -> Response:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items() if k != "login_hint"
    )
    body = EMAIL_PAGE.format(
        hidden=hidden,
        value=html.escape(params.get("login_hint", "")),
        error=f'<p class="err">{html.escape(error)}</p>' if error else "",
    )
    resp = Response(body, status=200, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    # its URL carries the app's state and nonce, and the address typed so far: never in a Referer. No
    # form-action: the form's answer is a redirect to whichever IdP the address leads to.
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
    return resp


def _request_params() -> MultiDict[str, str]:
    """The parameters of a GET (query) or POST (form) request: OIDC Core §3.1.2.1 and RP-Initiated Logout §2
    have the OP accept both. A POST's body must be form-encoded; its query string is not read."""
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded" and (request.content_length or 0) > 0:
            raise BrokerError("Send the parameters as application/x-www-form-urlencoded.",
                              code="invalid_request", status=400)
        return request.form
    return request.args


@bp.route("/authorize", methods=["GET", "POST"])
def authorize(tenant: str) -> Response:
    # every answer may carry a code (single sign-on) or the app's state: never kept by a cache
    return _no_store(_authorize(tenant))


def _authorize(tenant: str) -> Response:
    started = time.perf_counter()
    svc = services()
    t = load_tenant(tenant)
    issuer = svc.extras["issuer"]
    login = svc.extras["login"]
    source = _request_params()
    params = {k: v for k, v in source.items()}
    repeated = repeated_params(source)
    if "client_id" in repeated or "redirect_uri" in repeated:  # no verified place to send the error to
        _audit_refused(t, params, "invalid_request", _repeated_message(repeated))
        return html_error(OAuthError(_repeated_message(repeated), code="invalid_request"))
    try:
        req: AuthorizationRequest = issuer.parse_authorization_request(t, params)
    except AuthorizeError as err:
        if not repeated:
            _audit_refused(t, params, err.code, err.message)
        if err.redirect_uri is None:
            return html_error(err)
        if not repeated:
            return _error_answer(t, params, err.redirect_uri, err.state, err.code, err.message,
                                 form_post=err.form_post)
        verified_uri, state, form_post = err.redirect_uri, err.state, err.form_post
    else:
        verified_uri, state, form_post = req.redirect_uri, req.state, req.response_mode == "form_post"
    if repeated:
        # The client and its redirect_uri are unambiguous and verified, so the app is told; this error wins over
        # any other (those checks read only the first value). A repeated state has no one value to echo, a
        # repeated response_mode no one way to answer: the default.
        _audit_refused(t, params, "invalid_request", _repeated_message(repeated))
        return _error_answer(t, params, verified_uri, None if "state" in repeated else state, "invalid_request",
                             _repeated_message(repeated), form_post=form_post and "response_mode" not in repeated)

    if params.get("id_token_hint"):  # empty: absent (RFC 6749 §3.1)
        try:
            hint_sub, hint_client = issuer.hinted_user(t, params["id_token_hint"])
        except RevokedHint:
            # signed with a revoked key: genuine from before the revocation, or forged with the leaked key; read
            # as no hint, which asks nothing of the session or the upstream sign-in
            log.warning("id_token_hint_of_revoked_key", extra={"endpoint": "authorize"})
        except AuthorizeError as err:
            _audit_refused(t, params, "invalid_request", err.message)
            return _error_answer(t, params, req.redirect_uri, req.state, "invalid_request", err.message,
                                 form_post=form_post)
        else:
            # carried through an upstream login, whose user must be this one too (LoginService.finish)
            req = replace(req, hint_sub=hint_sub, hint_client=hint_client)

    # Single sign-on: an existing broker session answers without going upstream (unless prompt=login).
    session = login.session(t, session_id_of(request.cookies, t.slug))
    other_user = session is not None and not login.is_hinted_user(t, session.profile, req)
    if other_user:
        # OIDC Core §3.1.2.1: the signed-in user is not the one the app named; the app learns it rather than
        # getting a code for someone else (a silent renew after the user changed), or the user signs in again,
        # afresh at the IdP too, whose own session is likely the other user's
        log.info("authorize_hint_other_user")
        if "none" in req.prompt:
            message = "The signed-in user is not the one id_token_hint names."
            _audit_refused(t, params, "login_required", message, prompt_none=True)
            return to_app(issuer.error_answer(t, req, "login_required", message))
        session = None
    if session is not None and "login" not in req.prompt:
        # max_age=0 always asks the upstream again (OIDC Core §3.1.2.1: a sign-in of this very second is still
        # not a re-authentication); a session stamped a moment ahead by another replica's clock counts as now
        fresh = req.max_age is None or (
            req.max_age > 0 and max(0.0, svc.clock.now() - session.auth_time) <= req.max_age)
        hinted = email_domain(req.login_hint)
        same_realm = hinted is None or hinted == email_domain(session.profile.email)
        wanted = params.get("connection")
        origin = svc.config.connection(t.id, session.connection_slug)
        # a deleted or disabled connection ends its sessions; one created again under the same slug is another
        # connection (another IdP, perhaps) that never signed this user in
        usable = origin is not None and origin.enabled and origin.id == session.connection_id
        if usable and fresh and same_realm and (not wanted or wanted == session.connection_slug):
            answer = issuer.authorization_response(t, req, for_app(t, req, session.profile),
                                                   auth_time=session.auth_time,
                                                   session_id=public_sid(session.id))
            return to_app(answer)
    if "none" in req.prompt:  # a failed silent sign-in (Auth0's "fsa" event): audited as a refused login
        message = "The user is not signed in."
        _audit_refused(t, params, "login_required", message, prompt_none=True)
        return to_app(issuer.error_answer(t, req, "login_required", message))

    try:
        connection = login.discover(t, connection=params.get("connection"), login_hint=req.login_hint)
    except BrokerError as err:
        login.record_begin_failure(t, None, req, err)
        return to_app(issuer.error_answer(t, req, "invalid_request", err.message))
    if connection is None:
        error = None
        if req.login_hint:
            error = "No single sign-on is set up for that email domain. Check the address or ask your administrator."
        return email_page(params, error)
    logs.connection.set(connection.slug)
    binding_value, resp_cookie = browser_binding(request.cookies)
    try:
        result = login.begin(t, connection, req, browser_binding=binding_value, reauth=other_user)
    except LoginError as err:
        login.record_begin_failure(t, connection, req, err)
        code = "temporarily_unavailable" if err.status >= 500 else "access_denied"
        return to_app(issuer.error_answer(t, req, code, err.message))
    resp = render_step(result.step)
    resp_cookie(resp)
    svc.metrics.step_seconds.labels(step="authorize").observe(time.perf_counter() - started)
    return resp  # no-store: authorize() sets it on every answer


def _audit_refused(t: Tenant, params: dict[str, str], code: str, message: str, *, prompt_none: bool = False) -> None:
    """SPEC: every rejected login gets an audit event with the reason; an authorization request refused
    before any upstream login is one (the client_id as sent, which may name no app), and so is a silent
    sign-in (prompt=none) that no session can answer."""
    client_id = params.get("client_id")
    details: dict[str, Any] = {"message": message[:500]}
    if prompt_none:
        details["prompt"] = "none"
    services().auditor.emit("login", "failure", tenant=t.slug, app=client_id[:100] if client_id else None,
                            reason=code, details=details)


def _error_answer(t: Tenant, params: dict[str, str], redirect_uri: str, state: str | None, code: str,
                    message: str, *, form_post: bool = False) -> Response:
    """An RFC 6749 §4.1.2.1 error response to a redirect_uri the issuer has verified for the client."""
    bare = AuthorizationRequest(client_id=params.get("client_id", ""), redirect_uri=redirect_uri, scope=(),
                                state=state, nonce=None, code_challenge=None, code_challenge_method=None,
                                response_mode="form_post" if form_post else None)
    return to_app(services().extras["issuer"].error_answer(t, bare, code, message))


@bp.route("/token", methods=["POST", "OPTIONS"])
def token(tenant: str) -> Response:
    if request.method == "OPTIONS":
        return _preflight()
    started = time.perf_counter()
    svc = services()
    t = load_tenant(tenant)
    refused = _repeated_in_form(t, "token")
    if refused is not None:
        return refused
    resp = to_flask(svc.extras["issuer"].token(t, http_request()))
    svc.metrics.step_seconds.labels(step="token").observe(time.perf_counter() - started)
    if resp.status_code == 200:
        svc.metrics.tokens_issued.labels(tenant=t.slug, grant_type=request.form.get("grant_type", "")).inc()
    return resp


@bp.route("/userinfo", methods=["GET", "POST", "OPTIONS"])
def userinfo(tenant: str) -> Response:
    if request.method == "OPTIONS":  # a browser app sends the token in Authorization: it preflights
        return _preflight("GET, POST")
    t = load_tenant(tenant)
    return to_flask(services().extras["issuer"].userinfo(t, http_request()))


@bp.post("/introspect")
def introspect(tenant: str) -> Response:
    t = load_tenant(tenant)
    refused = _repeated_in_form(t, "introspect")
    if refused is not None:
        return refused
    return to_flask(services().extras["issuer"].introspect(t, http_request()))


@bp.route("/revoke", methods=["POST", "OPTIONS"])
def revoke(tenant: str) -> Response:
    if request.method == "OPTIONS":
        return _preflight()
    t = load_tenant(tenant)
    refused = _repeated_in_form(t, "revoke")
    if refused is not None:
        return refused
    return to_flask(services().extras["issuer"].revoke(t, http_request()))


# RP-Initiated Logout 1.0 §2: the OP MUST ask the End-User before ending a session when the request carries no
# id_token_hint, or one that was not issued in the browser's current session; otherwise any site could sign
# users out with a link. The question is a form posted back here with a value derived from the session cookie,
# which another site cannot read. Asked: a hint of another session, always; no hint, when the browser says the
# request comes from another site (Sec-Fetch-Site other than same-origin or none: every current browser sends
# it), so that scripts and the broker's own pages sign out in one step. Without a live session there is nothing
# to end, and nothing to ask.
LOGOUT_FORWARDED = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state", "ui_locales")

CONFIRM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign out?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.5rem 1.2rem}}</style></head>
<body><h1>Sign out of {tenant}?</h1><p>An application asked to sign you out of {tenant}.</p>
<form method="post" action="{action}">{fields}<button type="submit">Sign out</button></form></body></html>"""


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced or bogus IPv6 bracket
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _fetch_site(public_url: str) -> str:
    """Where the request comes from, as Sec-Fetch-Site says it. A browser too old to send it (before 2020-23)
    still sends Origin or Referer when they could tell another site: those stand in ("cross-site" when their
    origin is not ours); with neither, "none" (typed, bookmarked, or not a browser)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site.strip().lower()
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return "none"
    return "same-origin" if _origin(source) == _origin(public_url) else "cross-site"


def _logout_confirmation(session_id: str) -> str:
    return hashlib.sha256(b"broker-logout\x00" + session_id.encode()).hexdigest()


_CSP_HOST_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*://[a-z0-9.:\[\]-]+")  # RFC 3986 scheme and host, port
_CSP_SCHEME_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:")


def _form_action_source(target: str | None) -> str:
    """The CSP source that lets the confirmation form's redirect reach `target` (a registered
    post_logout_redirect_uri): browsers apply form-action to the redirects that follow a form's submission,
    so 'self' alone would stop the browser on this page. A native app's private-use scheme becomes a
    scheme source; anything that would not be one exact source is left out (the sign-out still happens)."""
    if not target:
        return ""
    origin = _origin(target)
    if origin is not None and _CSP_HOST_SOURCE.fullmatch(origin):
        return " " + origin
    scheme = target.split(":", 1)[0].lower() + ":" if ":" in target else ""
    if _CSP_SCHEME_SOURCE.fullmatch(scheme) and scheme not in ("http:", "https:", "javascript:", "data:"):
        return " " + scheme
    return ""


def _confirm_logout_page(tenant: Tenant, params: MultiDict[str, str], session_id: str,
                         target: str | None) -> Response:
    fields = [(name, params[name]) for name in LOGOUT_FORWARDED if params.get(name) is not None]
    fields.append(("confirm", _logout_confirmation(session_id)))
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields)
    action = services().extras["issuer"].issuer_url(tenant) + "/logout"
    body = CONFIRM_PAGE.format(tenant=html.escape(tenant.name or tenant.slug), action=html.escape(action),
                               fields=hidden)
    resp = Response(body, status=200, mimetype="text/html")
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                                               f"form-action 'self'{_form_action_source(target)}")
    return resp


@bp.route("/logout", methods=["GET", "POST"])
def logout(tenant: str) -> Response:
    svc = services()
    t = load_tenant(tenant)
    params = _request_params()
    repeated = [name for name in (*LOGOUT_FORWARDED, "confirm") if len(params.getlist(name)) > 1]
    if repeated:  # which one is meant? (RFC 6749 §3.1, as at the other endpoints)
        return _no_store(html_error(BrokerError(_repeated_message(repeated), code="invalid_request"),
                                    title="Sign-out failed"))
    try:
        ending = svc.extras["issuer"].end_session(t, {k: v for k, v in params.items()})
    except AuthorizeError as err:
        return _no_store(html_error(err, title="Sign-out failed"))
    if ending.hint_revoked:  # genuine from before the revocation, or forged with the leaked key: read as none
        log.warning("id_token_hint_of_revoked_key", extra={"endpoint": "logout"})
    login = svc.extras["login"]
    session_id = session_id_of(request.cookies, t.slug)
    live = login.session(t, session_id) if session_id else None
    fetch_site = _fetch_site(svc.settings.public_url)
    foreign_hint = ending.hint_sid is not None or params.get("id_token_hint") is not None
    if (live is not None and session_id is not None and ending.hint_sid != public_sid(session_id)
            and (foreign_hint or fetch_site not in ("same-origin", "none"))):
        confirmed = request.method == "POST" and hmac.compare_digest(
            params.get("confirm", "").encode(), _logout_confirmation(session_id).encode())
        if not confirmed:
            return _no_store(_confirm_logout_page(t, params, session_id, ending.target))
    if live is not None:  # another tenant's session (its cookie sent here by hand) is not this tenant's to end
        login.end_session(session_id)
    target = ending.target
    resp = redirect_to(target) if target else html_page(200, "Signed out", "You have been signed out.")
    clear_session_cookie(resp, t.slug)
    return _no_store(resp)


def to_app(answer: AppAnswer) -> Response:
    """The browser's way back to the app: a 302 (response_mode=query), or a page that POSTs the parameters to
    the redirect_uri (form_post), which keeps the code out of the app's URL, logs and Referer."""
    if answer.form_post:  # the app's own origin may frame it: a silent sign-in (prompt=none) in a hidden iframe
        return render_step(AutoPost(url=answer.redirect_uri, fields=dict(answer.params)), framed_by=answer.redirect_uri)
    return redirect_to(answer.url)


def for_app(tenant: Tenant, request: AuthorizationRequest, profile: Profile) -> Profile:
    """The profile as this app sees it: a pairwise app gets its own `sub` (OIDC Core 1.0 §8.1)."""
    app = services().config.app(tenant.id, request.client_id)
    if app is not None and app.subject_type == "pairwise":
        return replace(profile, sub=pairwise_sub(profile.sub, app.client_id))
    return profile


def callback_input(tenant: Tenant, connection: Connection, params: MultiDict[str, str], *, handle: str,
                   single: tuple[str, ...], code: str) -> CallbackInput | Response:
    """Shared by the SAML ACS and the OIDC callback. A single-valued parameter sent twice (which copy is meant?
    the one a proxy or WAF inspected?) is never read: when it is the transaction handle (RelayState, state),
    the answer cannot be tied to a login and gets an error page (audited; no transaction touched); any other
    is named in `repeated`, and the login it belongs to fails as any refused answer does."""
    if len(params.getlist(handle)) > 1:
        err = LoginError("The sign-in response repeats a parameter that may appear only once.", code=code,
                         detail=f"repeated: {handle}")
        services().extras["login"].record_begin_failure(tenant, connection, None, err)
        return html_error(err)
    repeated = tuple(sorted({name for name in single if len(params.getlist(name)) > 1}))
    return CallbackInput(method=request.method, params={k: v for k, v in params.items()}, url=request.url,
                         repeated=repeated)


def unknown_connection(tenant: Tenant, slug: str, protocol: str) -> NotFound:
    """A sign-in answer for a connection this tenant does not have (or not of this protocol): 404, audited
    as a refused login of the tenant (SPEC: every rejected login)."""
    err = NotFound(f"No such {protocol.upper() if protocol == 'saml' else 'OIDC'} connection.",
                   code="connection_not_found", details={"connection": slug[:100]})
    services().extras["login"].record_begin_failure(tenant, None, None, err)
    return err


def finish_login(tenant: Tenant, finished_or_failed: Any) -> Response:
    """Shared by the SAML ACS and the OIDC callback: answer the app after login.finish()."""
    svc = services()
    issuer = svc.extras["issuer"]
    login = svc.extras["login"]
    if isinstance(finished_or_failed, LoginFailed):
        failed = finished_or_failed
        if failed.request is not None:
            return _no_store(to_app(issuer.error_answer(tenant, failed.request, "access_denied",
                                                        failed.error.message)))
        return html_error(failed.error)
    if isinstance(finished_or_failed, Restarted):  # back upstream for a fresh sign-in (max_age)
        return _no_store(render_step(finished_or_failed.step))
    finished = finished_or_failed
    if finished.purpose == "test" or finished.request is None:
        # an admin's connection test: show what came back instead of answering an app
        key = finished.txn_id or finished.session_id
        login.save_result(key, finished)
        return _no_store(redirect_to(
            f"{svc.settings.public_url}/admin/ui/tenants/{tenant.slug}/connections/{finished.connection.slug}"
            f"/test/{key}"))
    # An IdP-initiated answer (no transaction: no login of this browser asked for it) may have been posted
    # into this browser by another site, with the poster's own account. It answers its one configured app,
    # and opens no single sign-on session: otherwise every later login to any app of the tenant in this
    # browser would silently be the poster's, and a session the browser already had would be replaced.
    unsolicited = finished.txn_id is None
    with svc.state.batch():  # the broker session and the code: one write, or none if issuing fails
        session_id = finished.session_id if unsolicited else login.save_session(tenant, finished)
        replaced = None if unsolicited else session_id_of(request.cookies, tenant.slug)
        if replaced is not None and replaced != session_id:
            login.end_session(replaced)  # its cookie is overwritten below: nothing could reach it again
        if svc.settings.dev_idp and not unsolicited:  # the demo page shows what the development IdP sent
            login.save_result("session:" + public_sid(session_id), finished)
        answer = issuer.authorization_response(tenant, finished.request,
                                               for_app(tenant, finished.request, finished.profile),
                                               auth_time=finished.auth_time, session_id=public_sid(session_id))
    resp = to_app(answer)
    if not unsolicited:
        set_session_cookie(resp, session_id, tenant.slug)
    g.login_done = True
    return _no_store(resp)

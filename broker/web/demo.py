"""The demo app at /demo (dev only): a tiny OIDC client of the `demo` tenant that shows what a login yields.

It is an ordinary app of the broker (client `demo-app`, public, PKCE S256): it starts a login at the tenant's
authorize endpoint with `connection=`, keeps state, nonce and the PKCE verifier server-side in the StateStore
bound to a browser cookie, redeems the code at the token endpoint (in-process, through the same Issuer code
the /token route runs), validates the ID token against the tenant's JWKS, and renders the normalized
profile, the decoded ID token and the raw upstream attributes (LoginService.result("session:" + sid), kept
in dev only). Nothing secret is shown: no tokens, no codes, and the `sid` claim is masked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from broker.errors import NotFound, ValidationFailed
from broker.issuer.server import HttpRequest
from broker.model import Tenant
from broker.web.context import services
from broker.web.errors import redirect_to

bp = Blueprint("demo", __name__, url_prefix="/demo")

TENANT = "demo"
CLIENT_ID = "demo-app"
COOKIE = "broker_demo"
SCOPE = "openid profile email groups"
TXN_PREFIX = "demo:txn:"
RESULT_PREFIX = "demo:result:"
TTL = 600
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
_HANDLE = re.compile(r"^[A-Za-z0-9_-]{20,64}\Z")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem;color:#222}}
code,pre{{background:#f5f5f5;border-radius:4px}} code{{padding:.1rem .3rem}}
pre{{padding:.8rem;overflow-x:auto;font-size:.85rem}} table{{border-collapse:collapse;width:100%}}
td,th{{text-align:left;vertical-align:top;border-bottom:1px solid #e5e5e5;padding:.35rem .5rem;font-size:.92rem}}
th{{width:14rem;font-weight:600}} .btn{{display:inline-block;margin:.3rem .6rem .3rem 0;padding:.6rem 1.2rem;
border-radius:6px;background:#1d4ed8;color:#fff;text-decoration:none}} .btn.alt{{background:#0f766e}}
.err{{background:#fdecec;border:1px solid #e99;padding:.6rem .8rem;border-radius:6px}}
.ok{{background:#eaf7ee;border:1px solid #8c8;padding:.6rem .8rem;border-radius:6px}}
.muted{{color:#666}} h2{{margin-top:2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> Response:
    resp = Response(PAGE.format(title=html.escape(title), body=body), status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def _tenant() -> Tenant | None:
    return services().config.tenant_by_slug(TENANT)


def _binding(value: str) -> str:
    return hashlib.sha256(b"broker-demo-browser\x00" + value.encode()).hexdigest()


def _buttons() -> str:
    public = html.escape(services().settings.public_url)
    return (f'<p><a class="btn" id="signin-saml" href="{public}/demo/login/dev-saml">Sign in with SAML</a>'
            f'<a class="btn alt" id="signin-oidc" href="{public}/demo/login/dev-oidc">Sign in with OIDC</a></p>')


def _intro() -> str:
    public = services().settings.public_url
    e = html.escape
    return (
        f"<p>This page is an app of the tenant <code>{TENANT}</code> (client <code>{CLIENT_ID}</code>). Each button "
        f"sends you through the broker (<code>{e(public)}/t/{TENANT}/authorize</code>) to the built-in "
        "development IdP, over SAML (connection <code>dev-saml</code>) or OpenID Connect (connection "
        "<code>dev-oidc</code>). The broker verifies the answer, maps the claims, and issues an ID token to this "
        "page.</p>"
    )


@bp.get("")
@bp.get("/")
def home() -> Response:
    if _tenant() is None:
        return _page("Federation broker demo", "<p class=\"err\">The <code>demo</code> tenant does not exist. "
                     "Start the demo with <code>broker demo</code>, which applies <code>config/demo.yaml</code>."
                     "</p>", 503)
    return _page("Federation broker demo", _intro() + _buttons())


@bp.get("/login/<connection>")
def login(connection: str) -> Response:
    svc = services()
    t = _tenant()
    if t is None or not _SLUG.match(connection) or svc.config.connection(t.id, connection) is None:
        raise NotFound("The demo tenant has no such connection.", code="demo_unknown_connection")
    cookie = request.cookies.get(COOKIE)
    fresh = not cookie or not _HANDLE.match(cookie)
    if fresh:
        cookie = secrets.token_urlsafe(24)
    assert cookie is not None
    state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    txn = {"binding": _binding(cookie), "nonce": nonce, "verifier": verifier, "connection": connection}
    svc.state.put(TXN_PREFIX + state, json.dumps(txn).encode(), ttl=TTL)
    public = svc.settings.public_url
    query = urlencode({
        "client_id": CLIENT_ID, "redirect_uri": f"{public}/demo/callback", "response_type": "code",
        "scope": SCOPE, "state": state, "nonce": nonce, "code_challenge": challenge,
        "code_challenge_method": "S256", "connection": connection, "prompt": "login",
    })
    resp = redirect_to(f"{public}/t/{TENANT}/authorize?{query}")
    if fresh:
        resp.set_cookie(COOKIE, cookie, httponly=True, secure=svc.settings.secure_cookies, samesite="Lax",
                        path="/demo", max_age=3600)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _failed(message: str, status: int = 400) -> Response:
    body = f'<p class="err">{html.escape(message)}</p>' + _buttons()
    return _page("Sign-in did not complete", body, status)


@bp.get("/callback")
def callback() -> Response:
    svc = services()
    t = _tenant()
    if t is None:
        raise NotFound("The demo tenant does not exist.", code="tenant_not_found")
    state = request.args.get("state", "")
    cookie = request.cookies.get(COOKIE, "")
    raw = svc.state.take(TXN_PREFIX + state) if _HANDLE.match(state) else None
    txn: dict[str, Any] | None = json.loads(raw) if raw is not None else None
    if txn is None or not cookie or not hmac.compare_digest(txn["binding"], _binding(cookie)):
        return _failed("This sign-in was not started in this browser, or it expired. Start again.")
    issuer = svc.extras["issuer"]
    issuer_url = f"{svc.settings.public_url}/t/{TENANT}"
    if request.args.get("iss") not in (None, issuer_url):  # RFC 9207
        return _failed("The answer came from an unexpected issuer.")
    if request.args.get("error"):
        return _failed(f"The broker answered {request.args.get('error')}: "
                       f"{request.args.get('error_description', '')}")
    answer = issuer.token(t, HttpRequest(
        method="POST", url=f"{issuer_url}/token",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        form={"grant_type": "authorization_code", "code": request.args.get("code", ""),
              "redirect_uri": f"{svc.settings.public_url}/demo/callback", "client_id": CLIENT_ID,
              "code_verifier": txn["verifier"]},
    ))
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status != 200 or not isinstance(body.get("id_token"), str):
        return _failed(f"The token request failed: {body.get('error', answer.status)} "
                       f"{body.get('error_description', '')}")
    header, claims = _validate_id_token(t, body["id_token"], issuer_url, txn["nonce"])
    upstream = svc.extras["login"].result("session:" + str(claims.get("sid", "")))
    result = {
        "binding": txn["binding"], "connection": txn["connection"], "header": header, "claims": claims,
        "upstream": upstream,
    }
    handle = secrets.token_urlsafe(24)
    svc.state.put(RESULT_PREFIX + handle, json.dumps(result).encode(), ttl=TTL)
    resp = redirect_to(f"{svc.settings.public_url}/demo/result/{handle}")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _validate_id_token(t: Tenant, token: str, issuer_url: str, nonce: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """OIDC Core §3.1.3.7: signature against the tenant's JWKS, then iss, aud, exp/iat, nonce."""
    keys = KeySet.import_key_set(services().extras["issuer"].jwks(t))
    try:
        decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256"])
        JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": issuer_url}, aud={"essential": True, "value": CLIENT_ID},
            exp={"essential": True}, iat={"essential": True}, nonce={"essential": True, "value": nonce},
        ).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise ValidationFailed("The ID token did not validate.", code="demo_id_token_invalid",
                               detail=f"{type(exc).__name__}: {exc}") from None
    return dict(decoded.header), dict(decoded.claims)


def _json_block(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))}</pre>"


def _table(rows: dict[str, Any]) -> str:
    out = []
    for k, v in rows.items():
        if isinstance(v, bool):
            shown = "true" if v else "false"
        else:
            shown = ", ".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)
        out.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(shown)}</td></tr>")
    return "<table>" + "".join(out) + "</table>"


@bp.get("/result/<handle>")
def result(handle: str) -> Response:
    svc = services()
    cookie = request.cookies.get(COOKIE, "")
    raw = svc.state.get(RESULT_PREFIX + handle) if _HANDLE.match(handle) else None
    data: dict[str, Any] | None = json.loads(raw) if raw is not None else None
    if data is None or not cookie or not hmac.compare_digest(data["binding"], _binding(cookie)):
        return _failed("This result has expired or belongs to another browser. Sign in again.", 404)
    claims = dict(data["claims"])
    if "sid" in claims:
        claims["sid"] = "(hidden: the broker session id)"
    upstream = data.get("upstream")
    e = html.escape
    parts = [f'<p class="ok">Signed in through connection <code>{e(data["connection"])}</code>. '
             "The ID token's signature, issuer, audience, expiry and nonce were checked against the tenant's "
             "JWKS.</p>", _buttons()]
    parts.append("<h2>Normalized profile</h2>")
    if upstream is not None:
        profile = {k: v for k, v in upstream["profile"].items()
                   if v not in (None, "", [], {}) and k not in ("tenant_id", "connection_id")}
        parts.append('<div id="profile">' + _table(profile) + "</div>")
    else:
        parts.append('<p class="muted">Not available (kept for 10 minutes after a login).</p>')
    parts.append("<h2>ID token</h2><p class=\"muted\">Header</p>")
    parts.append('<div id="id-token-header">' + _json_block(data["header"]) + "</div>")
    parts.append('<p class="muted">Claims</p><div id="id-token-claims">' + _json_block(claims) + "</div>")
    parts.append("<h2>Raw upstream attributes</h2>")
    if upstream is not None:
        meta = {"protocol": upstream.get("protocol"), "issuer": upstream.get("issuer"),
                "subject": upstream.get("subject"), "subject format": upstream.get("subject_format"),
                "authn context": upstream.get("authn_context")}
        parts.append(_table({k: v for k, v in meta.items() if v}))
        parts.append('<div id="raw-attributes">' + _table(upstream.get("attributes") or {}) + "</div>")
        if upstream.get("warnings"):
            parts.append("<p>Warnings</p>" + _table({str(i + 1): w for i, w in enumerate(upstream["warnings"])}))
    else:
        parts.append('<p class="muted">Not available.</p>')
    return _page("Signed in", "".join(parts))

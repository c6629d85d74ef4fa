"""HTTP surface of the development IdP at /dev/idp/... (registered only when BROKER_DEV_IDP is on, in dev).

SAML: /dev/idp/saml/metadata, /dev/idp/saml/sso (HTTP-Redirect and HTTP-POST). OIDC (issuer
/dev/idp/oidc): discovery, jwks, authorize, token, userinfo. Both send the browser to one login page,
/dev/idp/login, that asks for an email address and a name and lets the person tick groups. The protocol
work is in broker/devidp; this module only translates HTTP.
"""

from __future__ import annotations

import base64
import html
import threading
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, request

from broker.devidp import pending, saml
from broker.devidp.keys import DevIdpKeys, dev_dir, load_or_create
from broker.devidp.oidc import AuthorizeRefused, DevOp, TokenAnswer
from broker.devidp.users import DEFAULT_EMAIL, DEFAULT_NAME, GROUPS, user_from_form
from broker.errors import BrokerError, ValidationFailed
from broker.upstream.base import AutoPost
from broker.web.context import services
from broker.web.errors import redirect_to
from broker.web.steps import render_step

bp = Blueprint("dev_idp", __name__, url_prefix="/dev/idp")

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class DevIdp:
    keys: DevIdpKeys
    op: DevOp
    public_url: str


def dev_idp() -> DevIdp:
    """This process's dev IdP: keys loaded (or created once, atomically) on first use, then cached."""
    found = current_app.extensions.get("dev_idp")
    if isinstance(found, DevIdp):
        return found
    with _lock:
        found = current_app.extensions.get("dev_idp")
        if isinstance(found, DevIdp):
            return found
        svc = services()
        keys = load_or_create(dev_dir(svc.settings.database_url))
        public = svc.settings.public_url
        idp = DevIdp(keys=keys, public_url=public,
                     op=DevOp(keys, public_url=public, state=svc.state, config=svc.config, clock=svc.clock))
        current_app.extensions["dev_idp"] = idp
        return idp


def _json(answer: TokenAnswer) -> Response:
    resp = jsonify(answer.body)
    resp.status_code = answer.status
    for k, v in answer.headers.items():
        resp.headers[k] = v
    return resp


def _public_json(body: object) -> Response:
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "public, max-age=60"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Development IdP</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}
code{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}}</style></head>
<body><h1>Development IdP</h1>
<p>A real SAML 2.0 IdP and OpenID Provider for trying the broker out. It exists only with
<code>BROKER_ENV=dev</code> and trusts only this broker's connections.</p>
<ul><li>SAML metadata (entityID): <a href="{saml_md}">{saml_md}</a></li>
<li>OIDC issuer: <code>{issuer}</code> (<a href="{discovery}">discovery</a>)</li></ul>
</body></html>"""

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Development IdP: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}}
.banner{{background:#fff4d6;border:1px solid #e0b44a;padding:.5rem .8rem;border-radius:6px;font-size:.9rem}}
label{{display:block;margin-top:.8rem}} input[type=text],input[type=email]{{font-size:1rem;padding:.5rem;
width:100%;box-sizing:border-box}} fieldset{{margin-top:1rem;border:1px solid #ccc;border-radius:6px}}
fieldset label{{display:inline-block;margin:.2rem 1rem .2rem 0}}
button{{margin-top:1.2rem;font-size:1rem;padding:.6rem 1.4rem;background:#1d4ed8;color:#fff;border:0;
border-radius:6px;cursor:pointer}} .err{{color:#a00}} .muted{{color:#666;font-size:.9rem}}</style></head>
<body><p class="banner">Development IdP &mdash; for trying the broker out; never enabled in production.</p>
<h1>Sign in</h1>
<p class="muted">{protocol} sign-in for <code>{target}</code>. No password: type who you want to be.</p>
{error}<form method="post" action="{action}">
<input type="hidden" name="req" value="{handle}">
<label for="email">Email</label>
<input id="email" name="email" type="email" required autofocus value="{email}">
<label for="name">Name</label>
<input id="name" name="name" type="text" required maxlength="100" value="{name}">
<fieldset><legend>Groups</legend>{groups}</fieldset>
<button type="submit" id="sign-in">Sign in</button></form></body></html>"""


def _page(body: str, status: int = 200) -> Response:
    resp = Response(body, status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    return resp


def _login_page(handle: str, waiting: dict[str, object], *, email: str = DEFAULT_EMAIL, name: str = DEFAULT_NAME,
                groups: tuple[str, ...] = ("Everyone",), error: str | None = None, status: int = 200) -> Response:
    e = html.escape
    boxes = "".join(
        f'<label><input type="checkbox" name="groups" value="{e(g)}" id="group-{e(g.lower())}"'
        f'{" checked" if g in groups else ""}> {e(g)}</label>' for g in GROUPS
    )
    protocol = "SAML" if waiting.get("protocol") == "saml" else "OpenID Connect"
    body = LOGIN.format(protocol=protocol, target=e(f"{waiting.get('tenant')}/{waiting.get('connection')}"),
                        action=e(f"{dev_idp().public_url}/dev/idp/login"), handle=e(handle), email=e(email),
                        name=e(name), groups=boxes, error=f'<p class="err">{e(error)}</p>' if error else "")
    return _page(body, status)


def _expired() -> ValidationFailed:
    return ValidationFailed("This sign-in request has expired or was already used. Start again from the app.",
                            code="dev_idp_request_expired")


@bp.get("/")
def index() -> Response:
    idp = dev_idp()
    e = html.escape
    return _page(INDEX.format(saml_md=e(saml.entity_id(idp.public_url)), issuer=e(idp.op.issuer),
                              discovery=e(idp.op.issuer + "/.well-known/openid-configuration")))


# --- SAML ----------------------------------------------------------------------------------------------------


@bp.get("/saml/metadata")
def saml_metadata() -> Response:
    idp = dev_idp()
    resp = Response(saml.metadata_xml(idp.keys, idp.public_url), mimetype="application/samlmetadata+xml")
    resp.headers["Cache-Control"] = "public, max-age=60"
    return resp


@bp.route("/saml/sso", methods=["GET", "POST"])
def saml_sso() -> Response:
    idp = dev_idp()
    svc = services()
    params = dict(request.args.items()) if request.method == "GET" else dict(request.form.items())
    info = saml.parse_authn_request(params, redirect_binding=request.method == "GET")
    target = saml.trusted_target(info, svc.config, idp.public_url)
    handle = pending.park(svc.state, "saml", {
        "tenant": target.tenant, "connection": target.connection, "acs_url": target.acs_url,
        "audience": target.audience, "request_id": info.id, "relay_state": info.relay_state,
    })
    return redirect_to(f"{idp.public_url}/dev/idp/login?req={handle}")


# --- OIDC ----------------------------------------------------------------------------------------------------


@bp.get("/oidc/.well-known/openid-configuration")
def oidc_discovery() -> Response:
    return _public_json(dev_idp().op.discovery())


@bp.get("/oidc/jwks")
def oidc_jwks() -> Response:
    return _public_json(dev_idp().op.jwks())


@bp.get("/oidc/authorize")
def oidc_authorize() -> Response:
    idp = dev_idp()
    try:
        outcome = idp.op.authorize(dict(request.args.items()))
    except AuthorizeRefused as refused:
        raise ValidationFailed(refused.message, code="dev_idp_unknown_client") from None
    if outcome.redirect is not None:
        return redirect_to(outcome.redirect)
    assert outcome.pending is not None
    handle = pending.park(services().state, "oidc", outcome.pending)
    return redirect_to(f"{idp.public_url}/dev/idp/login?req={handle}")


@bp.post("/oidc/token")
def oidc_token() -> Response:
    form = dict(request.form.items()) if request.mimetype == "application/x-www-form-urlencoded" else {}
    return _json(dev_idp().op.token(form, request.headers.get("Authorization")))


@bp.route("/oidc/userinfo", methods=["GET", "POST"])
def oidc_userinfo() -> Response:
    return _json(dev_idp().op.userinfo(request.headers.get("Authorization")))


# --- the shared login page ------------------------------------------------------------------------------------


@bp.get("/login")
def login_page() -> Response:
    handle = request.args.get("req", "")
    waiting = pending.peek(services().state, handle)
    if waiting is None:
        raise _expired()
    return _login_page(handle, waiting)


@bp.post("/login")
def login_submit() -> Response:
    idp = dev_idp()
    svc = services()
    handle = request.form.get("req", "")
    waiting = pending.peek(svc.state, handle)
    if waiting is None:
        raise _expired()
    groups = request.form.getlist("groups")
    try:
        user = user_from_form(dict(request.form.items()), groups)
    except BrokerError as err:
        return _login_page(handle, waiting, email=request.form.get("email", "")[:200],
                           name=request.form.get("name", "")[:200], groups=tuple(groups), error=err.message,
                           status=400)
    waiting = pending.take(svc.state, handle)  # exactly once: a second submit finds nothing
    if waiting is None:
        raise _expired()
    if waiting["protocol"] == "saml":
        target = saml.SpTarget(tenant=waiting["tenant"], connection=waiting["connection"],
                               acs_url=waiting["acs_url"], audience=waiting["audience"])
        xml = saml.build_response(idp.keys, public_url=idp.public_url, target=target,
                                  in_response_to=waiting["request_id"], user=user, now=svc.clock.now())
        fields = {"SAMLResponse": base64.b64encode(xml).decode("ascii")}
        if waiting.get("relay_state") is not None:
            fields["RelayState"] = str(waiting["relay_state"])
        return render_step(AutoPost(url=target.acs_url, fields=fields))
    return redirect_to(idp.op.issue_code(waiting, user))

"""Admin pages at /admin/ui: server-rendered HTML over the same AdminService as the admin API.

Sign-in takes an admin key once (AdminService.authenticate) and opens a server-side UI session in the
StateStore; the browser holds only a random session id (HttpOnly, SameSite=Strict, Secure on https). Each
session has a CSRF token that every POST must echo (constant-time compare). The session remembers the key's
digest, never the key, and the key is looked up again on every request, so a removed key ends its sessions.
Every read and write goes through AdminService (or LoginService for "test this connection"): there is no
second validation path here, only translation of forms into the bodies the admin API takes.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from flask import Blueprint, Response, g, render_template, request
from werkzeug.datastructures import FileStorage

from broker.admin.schema import DuplicateKey, TooDeep, loads_admin_json
from broker.admin.service import AdminKeyExpired, metadata_text
from broker.claims.presets import PRESET_NAMES
from broker.errors import BrokerError, Conflict, NotFound, StateStoreError, ValidationFailed
from broker.model import AdminKey, Connection, Tenant
from broker.samlxml.metadata import to_json
from broker.upstream.base import Redirect
from broker.web.context import Services, services
from broker.web.cookies import browser_binding
from broker.web.errors import redirect_to
from broker.web.steps import render_step

bp = Blueprint("admin_ui", __name__, url_prefix="/admin/ui", template_folder="templates")

COOKIE = "broker_admin_ui"
SESSION_PREFIX = "admin-ui:"
DRAFT_PREFIX = "admin-ui-draft:"
ONCE_PREFIX = "admin-ui-once:"  # a new-key form already used: its key was shown, a resubmission shows none
ONCE_TTL = 12 * 3600.0
SIGNIN_COUNTER = "admin-ui-signin:"
SIGNIN_WINDOW_END = "admin-ui-signin-end:"  # when an address's current counting window ends (for Retry-After)
ANON_TTL = 15 * 60  # a sign-in form's session
IDLE_TTL = 60 * 60  # signed in: sliding idle timeout...
MAX_AGE = 12 * 3600  # ...and an absolute one
DRAFT_TTL = 60 * 60
SIGNIN_LIMIT = 30  # attempts per address per SIGNIN_WINDOW
SIGNIN_WINDOW = 300
MAX_TESTS = 20
AUDIT_PAGE = 50
DOMAIN_SPLIT = re.compile(r"[\s,;]+")
SAMPLE_ATTRIBUTES = {
    "email": ["alice@example.com"], "firstName": ["Alice"], "lastName": ["Liddell"], "groups": ["Everyone"],
}


# -- the UI session ------------------------------------------------------------------------------------


@dataclass
class UiSession:
    id: str
    csrf: str
    created: float
    key_digest: str | None = None
    tests: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps({"csrf": self.csrf, "created": self.created, "key_digest": self.key_digest,
                           "tests": self.tests}).encode()


class SignInRequired(Exception):
    """No (valid) UI session: the browser is sent to the sign-in page."""


class CsrfRefused(Exception):
    """A POST without the session's CSRF token."""


def _new_session(svc: Services, key_digest: str | None) -> UiSession:
    sess = UiSession(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), created=svc.clock.now(),
                     key_digest=key_digest)
    _save(svc, sess)
    return sess


def _save(svc: Services, sess: UiSession) -> None:
    ttl = IDLE_TTL if sess.key_digest else ANON_TTL
    remaining = sess.created + MAX_AGE - svc.clock.now()
    svc.state.put(SESSION_PREFIX + sess.id, sess.to_json(), ttl=max(1.0, min(ttl, remaining)))


def _load(svc: Services) -> UiSession | None:
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 100:
        return None
    raw = svc.state.get(SESSION_PREFIX + sid)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        sess = UiSession(id=sid, csrf=str(data["csrf"]), created=float(data["created"]),
                         key_digest=data.get("key_digest"), tests=[str(t) for t in data.get("tests", [])])
    except (ValueError, KeyError, TypeError):
        return None
    if sess.created + MAX_AGE < svc.clock.now():
        svc.state.delete(SESSION_PREFIX + sid)
        return None
    return sess


def _set_cookie(resp: Response, svc: Services, sess: UiSession) -> None:
    resp.set_cookie(COOKIE, sess.id, httponly=True, secure=svc.settings.secure_cookies, samesite="Strict",
                    path="/admin/ui")


def _csrf_ok(sess: UiSession) -> bool:
    sent = request.form.get("csrf", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), sess.csrf.encode())


@dataclass(frozen=True)
class Ctx:
    svc: Services
    session: UiSession
    key: AdminKey


def _ctx() -> Ctx:
    """The signed-in admin for this request; on POST also the CSRF check. Raises instead of returning None."""
    svc = services()
    sess = _load(svc)
    if sess is None or sess.key_digest is None:
        raise SignInRequired()
    key = svc.admin.store.admin_key_by_hash(sess.key_digest)
    if key is None or key.expired(svc.clock.now()):
        svc.state.delete(SESSION_PREFIX + sess.id)
        raise SignInRequired()
    if request.method == "POST" and not _csrf_ok(sess):
        raise CsrfRefused()
    _save(svc, sess)  # sliding idle timeout
    g.admin_ui = sess
    g.admin_key = key
    return Ctx(svc, sess, key)


# -- rendering -----------------------------------------------------------------------------------------


def _nonce() -> str:
    nonce: str | None = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def _page(template: str, status: int = 200, **ctx: Any) -> Response:
    sess: UiSession | None = g.get("admin_ui")
    key: AdminKey | None = g.get("admin_key")
    body = render_template(
        f"admin/{template}", nonce=_nonce(), csrf=sess.csrf if sess else "", signed_in=key is not None,
        key_scope=(key.tenant_slug or "(tenant)") if key is not None and key.tenant_id else "global",
        **ctx,
    )
    return Response(body, status=status, mimetype="text/html")


def _see_other(path: str, **query: str) -> Response:
    resp = redirect_to(f"/admin/ui{path}" + (f"?{urlencode(query)}" if query else ""))
    resp.status_code = 303
    return resp


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    if resp.mimetype == "text/html" and "Content-Security-Policy" not in resp.headers:
        nonce = _nonce()
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        )
    return resp


@bp.before_request
def _refuse_nul() -> None:
    """A form value with a NUL character (%00) cannot be stored (PostgreSQL text) and is never meant: refused
    before any view reads it, with the form's usual error page, and nothing written."""
    if request.method == "POST" and any("\x00" in value for value in request.form.values()):
        raise ValidationFailed("A field of this form holds a NUL character (%00), which cannot be stored. "
                               "Nothing was changed.", code="invalid_request")


def _cross_site_navigation() -> bool:
    """A GET from another site's link or redirect: the SameSite=Strict session cookie was withheld, so this
    browser may well be signed in. Answering with the sign-in page (and its new anonymous cookie) would sign
    it out; a same-site reload first brings the cookie along."""
    return request.method == "GET" and (request.headers.get("Sec-Fetch-Site") or "").lower() == "cross-site"


def _reload_same_site() -> Response:
    return _page("reload.html", message="Loading…", target=request.full_path.rstrip("?"))


@bp.errorhandler(SignInRequired)
def _to_sign_in(_: SignInRequired) -> Response:
    if _cross_site_navigation():
        return _reload_same_site()
    if request.method == "GET":
        return _see_other("/sign-in", next=request.full_path.rstrip("?"))
    return _see_other("/sign-in")


@bp.errorhandler(CsrfRefused)
def _csrf_refused(_: CsrfRefused) -> Response:
    return _page("error.html", 403, title="Form expired",
                 message="This form could not be accepted (its security token is missing or out of date). "
                         "Go back, reload the page and try again. Nothing was changed.")


@bp.errorhandler(BrokerError)
def _broker_error(err: BrokerError) -> Response:
    if isinstance(err, StateStoreError) or err.status >= 500:
        return _page("error.html", 503, title="Temporarily unavailable",
                     message="The service is temporarily unavailable. Please try again shortly.")
    title = "Not found" if err.status == 404 else "Request refused"
    return _page("error.html", err.status, title=title, message=err.message, code=err.code)


def _fmt_time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = str(value)
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return text


@bp.app_template_filter("admin_time")
def _admin_time(value: Any) -> str:
    return _fmt_time(value) or "—"


@bp.app_template_filter("admin_json")
def _admin_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


# -- sign-in / sign-out ----------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of the admin pages only. Dot-segments (also percent-encoded) are
    refused, since the browser resolves `/admin/ui/../../x` to `/x` after this check."""
    if not value or not value.startswith("/admin/ui/") or "//" in value or "\\" in value:
        return "/admin/ui/"
    path = unquote(urlsplit(value).path)
    if any(segment in (".", "..") for segment in path.split("/")) or "\\" in path or not value.isascii():
        return "/admin/ui/"
    return value


def _sign_in_page(svc: Services, status: int = 200, error: str | None = None) -> Response:
    sess = _load(svc)
    if sess is None or sess.key_digest is not None:
        sess = _new_session(svc, None)
    g.admin_ui = sess
    resp = _page("sign_in.html", status, error=error, next=_safe_next(request.values.get("next")))
    _set_cookie(resp, svc, sess)
    return resp


def _sign_in_wait(svc: Services, address: str) -> int:
    """Count a sign-in attempt from `address`: 0 while it is within SIGNIN_LIMIT, else the seconds until its
    window ends and it may try again (at least 1). The window is fixed and starts with its first attempt
    (StateStore.incr), which the store cannot be asked about, so that first attempt notes when it ends; a
    missing note (its writer died in between) means the whole window, the longest the wait can be."""
    now = svc.clock.now()
    count = svc.state.incr(SIGNIN_COUNTER + address, ttl=SIGNIN_WINDOW)
    if count == 1:
        svc.state.put(SIGNIN_WINDOW_END + address, repr(now + SIGNIN_WINDOW).encode(), ttl=SIGNIN_WINDOW)
    if count <= SIGNIN_LIMIT:
        return 0
    raw = svc.state.get(SIGNIN_WINDOW_END + address)
    try:
        end = float(raw) if raw is not None else now + SIGNIN_WINDOW
    except ValueError:
        end = now + SIGNIN_WINDOW
    return max(1, min(SIGNIN_WINDOW, math.ceil(end - now)))


@bp.get("/sign-in")
def sign_in_form() -> Response:
    if _cross_site_navigation():  # another site must not be able to replace a signed-in session's cookie
        return _reload_same_site()
    return _sign_in_page(services())


@bp.post("/sign-in")
def sign_in() -> Response:
    svc = services()
    sess = _load(svc)
    if sess is None or not _csrf_ok(sess):
        return _sign_in_page(svc, 403, "The sign-in form expired. Please enter the key again.")
    value = request.form.get("admin_key", "").strip()
    if not value:
        return _sign_in_page(svc, 400, "Enter an admin key.")
    # Only refused keys count towards the limit, and a valid key signs in whatever the count: behind one
    # address (a NAT, or a proxy the broker is not told of), anyone's wrong guesses must not lock the admins
    # out. Keys are 40+ random characters: the limit is against noise, not a search that could succeed.
    try:
        svc.admin.authenticate(f"Bearer {value}")
    except BrokerError as err:
        wait = _sign_in_wait(svc, request.remote_addr or "unknown")
        if wait:
            resp = _sign_in_page(svc, 429, "Too many sign-in attempts from this address. Wait a few minutes.")
            resp.headers["Retry-After"] = str(wait)  # RFC 6585 §4, RFC 9110 §10.2.3
            return resp
        expired = isinstance(err, AdminKeyExpired)
        return _sign_in_page(svc, 401, "That admin key has expired." if expired else "That admin key is not valid.")
    svc.state.delete(SESSION_PREFIX + sess.id)  # a fresh id after sign-in (no session fixation)
    signed = _new_session(svc, svc.admin.hasher.digest(value))
    resp = redirect_to(_safe_next(request.form.get("next")))
    resp.status_code = 303
    _set_cookie(resp, svc, signed)
    return resp


@bp.post("/sign-out")
def sign_out() -> Response:
    ctx = _ctx()
    ctx.svc.state.delete(SESSION_PREFIX + ctx.session.id)
    resp = _see_other("/sign-in")
    resp.delete_cookie(COOKIE, path="/admin/ui")
    return resp


# -- tenants -----------------------------------------------------------------------------------------------


@bp.get("/")
def home() -> Response:
    ctx = _ctx()
    tenants = ctx.svc.admin.list_tenants(ctx.key)["tenants"]
    if len(tenants) == 1:
        return _see_other(f"/tenants/{tenants[0]['slug']}/connections")
    return _see_other("/tenants")


@bp.get("/tenants")
def tenants() -> Response:
    ctx = _ctx()
    return _page("tenants.html", tenants=ctx.svc.admin.list_tenants(ctx.key)["tenants"])


@bp.get("/tenants/<t>")
def tenant_home(t: str) -> Response:
    ctx = _ctx()
    tenant = ctx.svc.admin.tenant_for(ctx.key, t)
    return _see_other(f"/tenants/{tenant.slug}/connections")


def _tenant(ctx: Ctx, t: str) -> Tenant:
    tenant = ctx.svc.admin.tenant_for(ctx.key, t)
    g.tenant = tenant
    return tenant


def _tenant_ctx(tenant: Tenant, section: str) -> dict[str, Any]:
    return {"tenant": {"slug": tenant.slug, "name": tenant.name,
                       "issuer": services().admin.urls.tenant(tenant.slug)},
            "section": section}


# -- connections: list and status ----------------------------------------------------------------------------


def _last_logins(svc: Services, tenant: Tenant) -> dict[str, str | None] | None:
    return {str(k): _fmt_time(v) for k, v in dict(svc.config.last_logins(tenant.id)).items()}


def _cert_status(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The soonest-expiring signing certificate of a metadata summary."""
    if not meta or "certificates" not in meta:
        return None
    signing = [c for c in meta["certificates"] if "signing" in c.get("use", [])]
    if not signing:
        return None
    soonest = min(signing, key=lambda c: c["days_left"])
    return {"not_after": soonest["not_after"], "days_left": soonest["days_left"], "expired": soonest["expired"]}


def _status_row(svc: Services, tenant: Tenant, c: Connection, last: dict[str, str | None] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"slug": c.slug, "protocol": c.protocol, "domains": list(c.domains), "enabled": c.enabled,
                           "last_login": (last or {}).get(c.slug), "last_login_known": last is not None}
    if c.protocol == "saml":
        meta = svc.admin.metadata_summary(c)
        row["entity_id"] = (meta or {}).get("entity_id")
        row["cert"] = _cert_status(meta)
        row["metadata_error"] = (meta or {}).get("error")
        row["has_metadata"] = bool(meta and "entity_id" in meta)
        row["source"] = "url" if c.settings.get("metadata_url") else ("file" if c.settings.get("metadata_xml")
                                                                     else None)
        row["refresh"] = (meta or {}).get("refresh")
    else:
        row["entity_id"] = c.settings.get("issuer")
    return row


@bp.get("/tenants/<t>/connections")
def connections(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    last = _last_logins(ctx.svc, tenant)
    rows = [_status_row(ctx.svc, tenant, c, last) for c in ctx.svc.admin.store.connections(tenant.id)]
    return _page("connections.html", connections=rows, notice=_notice(), **_tenant_ctx(tenant, "connections"))


NOTICES = {
    "created": "The connection was saved. Give the IdP administrator the values below, then test it.",
    "mapping_saved": "The mapping was saved.",
    "deleted": "The connection was deleted.",
    "metadata_saved": "The new IdP metadata was saved.",
    "key_revoked": "The admin key was revoked. It no longer works anywhere.",
    "signing_key_rotated": "A new signing key was made; it signs from now on. The previous one stays published "
                           "for the tokens it signed.",
    "signing_key_staged": "A new signing key was published; the current key signs until the time shown, then the "
                          "new one does.",
    "signing_key_revoked": "The signing key was revoked: it is out of the JWKS and its tokens are refused.",
    "key_already_created": "This form was already sent and its key created (shown only that once): no second "
                           "key was made. Revoke it below if it was not copied, and create a new one.",
}


def _notice() -> str | None:
    return NOTICES.get(request.args.get("notice", ""))


# -- connections: create a SAML connection (two steps) ----------------------------------------------------------


def _draft_key(sess: UiSession, draft_id: str) -> str:
    return f"{DRAFT_PREFIX}{sess.id}:{draft_id}"


def _read_upload(svc: Services, upload: FileStorage) -> bytes:
    limit = svc.admin.max_metadata_bytes
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise ValidationFailed(f"The metadata file is larger than {limit} bytes.", code="metadata_invalid")
    return data


def _understand(svc: Services, source: str, value: str | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 1: fetch or read the metadata and parse it with AdminService's parser. Nothing is saved.

    Returns (the `saml` settings a save would send, what was understood).
    """
    if source == "url":
        assert isinstance(value, str)
        meta, _ = svc.admin.preview_metadata(url=value)
        settings: dict[str, Any] = {"metadata_url": value}
    else:
        raw = value.encode() if isinstance(value, str) else value
        settings = {"metadata_xml": metadata_text(raw)}
        meta, _ = svc.admin.preview_metadata(xml=raw)
    return settings, to_json(meta, now=datetime.fromtimestamp(svc.clock.now(), UTC))


@bp.get("/tenants/<t>/connections/new")
def new_connection(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    return _page("connection_new.html", form={}, **_tenant_ctx(tenant, "connections"))


@bp.post("/tenants/<t>/connections/new")
def new_connection_preview(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    url = request.form.get("metadata_url", "").strip()
    xml = request.form.get("metadata_xml", "").strip()
    upload = request.files.get("metadata_file")
    has_file = upload is not None and bool(upload.filename)
    form = {"metadata_url": url, "metadata_xml": xml}
    given = [n for n, v in (("file", has_file), ("url", bool(url)), ("xml", bool(xml))) if v]
    if len(given) != 1:
        message = ("Give the IdP metadata one way: upload the file, paste its URL, or paste the XML."
                   if not given else "Give the IdP metadata only one way (file, URL or pasted XML), not several.")
        return _page("connection_new.html", 400, form=form, error=message, **_tenant_ctx(tenant, "connections"))
    try:
        if given[0] == "file":
            assert upload is not None
            settings, understood = _understand(ctx.svc, "file", _read_upload(ctx.svc, upload))
        elif given[0] == "url":
            settings, understood = _understand(ctx.svc, "url", url)
        else:
            settings, understood = _understand(ctx.svc, "xml", xml)
    except ValidationFailed as err:
        return _page("connection_new.html", 400, form=form, error=err.message, **_tenant_ctx(tenant, "connections"))
    draft_id = secrets.token_urlsafe(12)
    ctx.svc.state.put(_draft_key(ctx.session, draft_id),
                      json.dumps({"tenant": tenant.slug, "saml": settings, "understood": understood}).encode(),
                      ttl=DRAFT_TTL)
    return _page("connection_preview.html", draft=draft_id, understood=understood, source=given[0],
                 metadata_url=settings.get("metadata_url"), presets=PRESET_NAMES,
                 form={"slug": _suggest_slug(understood), "preset": "generic-saml", "domains": ""},
                 **_tenant_ctx(tenant, "connections"))


def _suggest_slug(understood: dict[str, Any]) -> str:
    entity = str(understood.get("entity_id") or "")
    host = re.sub(r"^[a-z]+://", "", entity.lower()).split("/")[0].split(":")[0]
    common = ("www", "com", "net", "org", "sso", "idp", "localhost")
    words = [w for w in re.split(r"[^a-z0-9]+", host) if w and not w.isdigit() and w not in common]
    slug = "-".join(words[:2])[:40].strip("-")
    return slug or "saml"


@bp.post("/tenants/<t>/connections/new/save")
def new_connection_save(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    draft_id = request.form.get("draft", "")
    raw = ctx.svc.state.get(_draft_key(ctx.session, draft_id)) if 0 < len(draft_id) <= 40 else None
    draft = json.loads(raw) if raw is not None else None
    if draft is None or draft.get("tenant") != tenant.slug:
        return _page("connection_new.html", 400, form={},
                     error="That preview expired. Give the IdP metadata again.", **_tenant_ctx(tenant, "connections"))
    form = {"slug": request.form.get("slug", "").strip(), "preset": request.form.get("preset", ""),
            "domains": request.form.get("domains", ""), "restrict": bool(request.form.get("restrict_to_domains"))}
    body = {
        "slug": form["slug"],
        "protocol": "saml",
        "domains": [d for d in DOMAIN_SPLIT.split(str(form["domains"])) if d],
        "restrict_to_domains": form["restrict"],
        "mapping": {"preset": form["preset"] or None},
        "saml": draft["saml"],
    }
    try:
        created = ctx.svc.admin.create_connection(ctx.key, tenant, body)
    except BrokerError as err:
        if err.status >= 500:
            raise
        return _page("connection_preview.html", 400, draft=draft_id, understood=draft["understood"],
                     source="url" if "metadata_url" in draft["saml"] else "file",
                     metadata_url=draft["saml"].get("metadata_url"), presets=PRESET_NAMES, form=form,
                     error=err.message, **_tenant_ctx(tenant, "connections"))
    ctx.svc.state.delete(_draft_key(ctx.session, draft_id))
    return _see_other(f"/tenants/{tenant.slug}/connections/{created['slug']}", notice="created")


# -- one connection: SP values, metadata, mapping editor, test --------------------------------------------------


def _connection_page(ctx: Ctx, tenant: Tenant, c: str, status: int = 200, **extra: Any) -> Response:
    conn = ctx.svc.admin.get_connection(ctx.key, tenant.slug, c)
    model = ctx.svc.admin.store.connection(tenant.id, c)
    assert model is not None
    row = _status_row(ctx.svc, tenant, model, _last_logins(ctx.svc, tenant))
    editor = extra.pop("editor", None) or {
        "preset": conn["mapping"]["preset"],
        "rules": json.dumps(conn["mapping"]["rules"], indent=2),
        "sample": json.dumps(SAMPLE_ATTRIBUTES, indent=2),
        "subject": "",
    }
    sample_from = request.args.get("sample")
    if sample_from and sample_from in ctx.session.tests and "editor" not in extra:
        result = ctx.svc.extras["login"].result(sample_from)
        if result is not None and result.get("connection") == c:
            editor["sample"] = json.dumps(result["attributes"], indent=2)
            editor["subject"] = result.get("subject") or ""
    return _page("connection.html", status, conn=conn, row=row, editor=editor, presets=PRESET_NAMES,
                 notice=_notice(), **extra, **_tenant_ctx(tenant, "connections"))


@bp.get("/tenants/<t>/connections/<c>")
def connection(t: str, c: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    return _connection_page(ctx, tenant, c)


def _json_field(name: str, label: str, kind: type) -> Any:
    raw = request.form.get(name, "").strip()
    if not raw:
        return kind()
    try:
        value = loads_admin_json(raw)
    except DuplicateKey as dup:
        raise ValidationFailed(f"{label} names {json.dumps(dup.key[:200])} more than once in one object.") from None
    except TooDeep:
        raise ValidationFailed(f"{label} is nested too deeply.") from None
    except ValueError as exc:
        raise ValidationFailed(f"{label} is not valid JSON (line {getattr(exc, 'lineno', '?')}).") from None
    except RecursionError:
        raise ValidationFailed(f"{label} is nested too deeply.") from None
    if not isinstance(value, kind):
        raise ValidationFailed(f"{label} must be a JSON {'list' if kind is list else 'object'}.")
    return value


@bp.post("/tenants/<t>/connections/<c>/mapping")
def mapping(t: str, c: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    ctx.svc.admin.connection_for(ctx.key, tenant.slug, c)  # 404 before anything else
    action = request.form.get("action", "dry_run")
    editor = {k: request.form.get(k, "") for k in ("preset", "rules", "sample", "subject")}
    try:
        rules = _json_field("rules", "The rules", list)
        preset = editor["preset"] or None
        if action == "save":
            ctx.svc.admin.patch_connection(ctx.key, tenant.slug, c, {"mapping": {"preset": preset, "rules": rules}})
            return _see_other(f"/tenants/{tenant.slug}/connections/{c}", notice="mapping_saved")
        if action != "dry_run":
            raise ValidationFailed("Unknown action.")
        sample = _json_field("sample", "The sample attributes", dict)
        body: dict[str, Any] = {"attributes": sample, "mapping": {"preset": preset, "rules": rules}}
        if editor["subject"].strip():
            body["subject"] = editor["subject"].strip()
        entity_id = (ctx.svc.admin.get_connection(ctx.key, tenant.slug, c).get("metadata") or {}).get("entity_id")
        if entity_id:
            body["issuer"] = entity_id  # as a real login would report it
        dry = ctx.svc.admin.mapping_test(ctx.key, tenant.slug, c, body)
    except BrokerError as err:
        if err.status >= 500 or err.status == 404:
            raise
        problems = [f"{p['field']}: {p['problem']}" for p in err.details.get("errors", [])][1:]
        return _connection_page(ctx, tenant, c, 400, editor=editor, mapping_error=err.message,
                                mapping_problems=problems)
    return _connection_page(ctx, tenant, c, editor=editor, dry_run=dry)


@bp.post("/tenants/<t>/connections/<c>/metadata")
def replace_metadata(t: str, c: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    ctx.svc.admin.connection_for(ctx.key, tenant.slug, c)
    upload = request.files.get("metadata_file")
    try:
        if upload is None or not upload.filename:
            raise ValidationFailed("Choose the IdP metadata file to upload.")
        ctx.svc.admin.put_metadata(ctx.key, tenant.slug, c, _read_upload(ctx.svc, upload))
    except BrokerError as err:
        if err.status >= 500 or err.status == 404:
            raise
        return _connection_page(ctx, tenant, c, 400, metadata_error=err.message)
    return _see_other(f"/tenants/{tenant.slug}/connections/{c}", notice="metadata_saved")


@bp.post("/tenants/<t>/connections/<c>/delete")
def delete_connection(t: str, c: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    if request.form.get("confirm") != c:
        return _connection_page(ctx, tenant, c, 400,
                                delete_error="Type the connection's slug to confirm deleting it.")
    ctx.svc.admin.delete_connection(ctx.key, tenant.slug, c)
    return _see_other(f"/tenants/{tenant.slug}/connections", notice="deleted")


@bp.post("/tenants/<t>/connections/<c>/test")
def start_test(t: str, c: str) -> Response:
    ctx = _ctx()
    tenant, conn = ctx.svc.admin.connection_for(ctx.key, t, c)
    g.tenant = tenant
    binding, set_binding_cookie = browser_binding(request.cookies)
    try:
        started = ctx.svc.extras["login"].begin(tenant, conn, None, browser_binding=binding, purpose="test")
    except BrokerError as err:
        return _connection_page(ctx, tenant, c, 400 if err.status < 500 else 503, test_error=err.message)
    ctx.session.tests = ([started.txn_id] + ctx.session.tests)[:MAX_TESTS]
    _save(ctx.svc, ctx.session)
    # The admin pages' CSP has form-action 'self', which browsers also apply to the redirects that follow a
    # form's submission: a 302 to the IdP would be blocked. A page on our origin hands the browser over to it
    # with a new navigation instead (the HTTP-POST binding's form page carries its own CSP).
    if isinstance(started.step, Redirect):
        resp = _page("to_idp.html", target=started.step.url)
    else:
        resp = render_step(started.step)
    set_binding_cookie(resp)
    return resp


@bp.get("/tenants/<t>/connections/<c>/test/<txn>")
def test_result(t: str, c: str, txn: str) -> Response:
    try:
        ctx = _ctx()
    except SignInRequired:
        # Back from a cross-site IdP the SameSite=Strict cookie is withheld; one same-site reload brings it.
        if request.args.get("r") != "1":
            return _page("reload.html", target=f"{request.path}?r=1")
        raise
    tenant, _ = ctx.svc.admin.connection_for(ctx.key, t, c)
    g.tenant = tenant
    result = ctx.svc.extras["login"].result(txn) if txn in ctx.session.tests else None
    if result is None or result.get("connection") != c or result.get("tenant") != tenant.slug:
        raise NotFound("That test result is not available (it expires after ten minutes, and only the admin "
                       "session that started the test can see it).", code="test_result_not_found")
    profile = dict(result.get("profile") or {})
    extra = profile.pop("extra", {}) or {}
    profile.update(extra)
    return _page("test_result.html", result=result, profile=profile, txn=txn, conn_slug=c,
                 **_tenant_ctx(tenant, "connections"))


# -- apps and audit --------------------------------------------------------------------------------------------


@bp.get("/tenants/<t>/apps")
def apps(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    items = [ctx.svc.admin.app_json(a) for a in ctx.svc.admin.store.apps(tenant.id)]
    return _page("apps.html", apps=items, **_tenant_ctx(tenant, "apps"))


@bp.get("/tenants/<t>/audit")
def audit(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    args = {k: v for k in ("type", "outcome", "cursor") if (v := request.args.get(k, "").strip())}
    filters = {k: v for k, v in args.items() if k != "cursor"}
    try:
        page = ctx.svc.admin.audit(ctx.key, tenant.slug, {**args, "limit": str(AUDIT_PAGE)})
        error = None
    except ValidationFailed as err:
        page, error = {"events": [], "next_cursor": None}, err.message
    next_url = None
    if page.get("next_cursor"):
        next_url = f"/admin/ui/tenants/{tenant.slug}/audit?" + urlencode({**filters, "cursor": page["next_cursor"]})
    first_url = f"/admin/ui/tenants/{tenant.slug}/audit" + (f"?{urlencode(filters)}" if filters else "")
    return _page("audit.html", 400 if error else 200, events=page["events"], filters=filters, error=error,
                 next_url=next_url, first_url=first_url if "cursor" in args else None,
                 **_tenant_ctx(tenant, "audit"))


# -- admin keys --------------------------------------------------------------------------------------------


def _passed(iso_time: str | None, now: float) -> bool:
    """Whether an admin key's expires_at (as the API shows it; None: never) is over."""
    return iso_time is not None and datetime.fromisoformat(iso_time).timestamp() <= now


def _keys_page(ctx: Ctx, tenant: Tenant, status: int = 200, **extra: Any) -> Response:
    now = ctx.svc.clock.now()
    keys = [{**k, "expired": _passed(k["expires_at"], now)}
            for k in ctx.svc.admin.list_admin_keys(ctx.key, tenant.slug)["admin_keys"]]
    return _page("admin_keys.html", status, keys=keys, current=ctx.key.id, notice=_notice(),
                 once=secrets.token_urlsafe(16), **extra, **_tenant_ctx(tenant, "keys"))


@bp.get("/tenants/<t>/admin-keys")
def admin_keys(t: str) -> Response:
    ctx = _ctx()
    return _keys_page(ctx, _tenant(ctx, t))


@bp.post("/tenants/<t>/admin-keys")
def create_admin_key(t: str) -> Response:
    """The new key is shown once, on this answer (never in a URL, never stored in the session)."""
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    label = request.form.get("label", "").strip()
    # the form carries a value of its own: sent again (a reload of this answer, a double click), it makes
    # no second key, whose value nobody would see
    once = request.form.get("once", "")
    once_key = f"{ONCE_PREFIX}{ctx.session.id}:{once}" if re.fullmatch(r"[A-Za-z0-9_-]{16,64}", once) else None
    if once_key is not None and not ctx.svc.state.add_if_absent(once_key, b"1", ONCE_TTL):
        return _see_other(f"/tenants/{tenant.slug}/admin-keys", notice="key_already_created")
    try:
        body: dict[str, Any] = {"label": label}
        expires_in = request.form.get("expires_in", "").strip()
        if expires_in:
            if not re.fullmatch(r"[0-9]{1,12}", expires_in):
                raise ValidationFailed("Choose when the key expires.", details={"field": "expires_in"})
            body["expires_in"] = int(expires_in)
        created = ctx.svc.admin.create_admin_key(ctx.key, tenant.slug, body)
    except BaseException as err:
        if once_key is not None:  # no key was made: the same form may be sent again
            ctx.svc.state.delete(once_key)
        if isinstance(err, ValidationFailed):
            return _keys_page(ctx, tenant, 400, create_error=err.message)
        raise
    return _keys_page(ctx, tenant, created=created)


@bp.post("/tenants/<t>/admin-keys/<key_id>/revoke")
def revoke_admin_key(t: str, key_id: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    ctx.svc.admin.revoke_admin_key(ctx.key, tenant.slug, key_id)
    return _see_other(f"/tenants/{tenant.slug}/admin-keys", notice="key_revoked")


# -- signing keys ------------------------------------------------------------------------------------------

ROTATE_DELAYS = ("0", "3600", "86400", "604800")  # the page's choices: at once, in an hour, a day, a week


def _signing_keys_page(ctx: Ctx, tenant: Tenant, status: int = 200, **extra: Any) -> Response:
    keys = ctx.svc.admin.signing_keys(ctx.key, tenant.slug)["keys"]
    return _page("signing_keys.html", status, keys=keys, notice=_notice(), **extra,
                 **_tenant_ctx(tenant, "signing"))


@bp.get("/tenants/<t>/signing-keys")
def signing_keys(t: str) -> Response:
    ctx = _ctx()
    return _signing_keys_page(ctx, _tenant(ctx, t))


@bp.post("/tenants/<t>/signing-keys/rotate")
def rotate_signing_key(t: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    alg, delay = request.form.get("alg", "RS256"), request.form.get("activate_after", "0")
    try:
        if delay not in ROTATE_DELAYS:
            raise ValidationFailed("Choose when the new key starts to sign.", details={"field": "activate_after"})
        out = ctx.svc.admin.rotate_keys(ctx.key, tenant, {"alg": alg, "activate_after": int(delay)})
    except ValidationFailed as err:
        return _signing_keys_page(ctx, tenant, 400, rotate_error=err.message)
    notice = "signing_key_staged" if "next_kid" in out else "signing_key_rotated"
    return _see_other(f"/tenants/{tenant.slug}/signing-keys", notice=notice)


@bp.post("/tenants/<t>/signing-keys/<kid>/revoke")
def revoke_signing_key(t: str, kid: str) -> Response:
    ctx = _ctx()
    tenant = _tenant(ctx, t)
    if request.form.get("confirm", "") != kid[:8]:
        return _signing_keys_page(ctx, tenant, 400, revoke_error="To revoke a key, type the first 8 characters "
                                                                 "of its kid.")
    try:
        ctx.svc.admin.revoke_signing_key(ctx.key, tenant, kid)
    except Conflict as err:
        return _signing_keys_page(ctx, tenant, 409, revoke_error=err.message)
    return _see_other(f"/tenants/{tenant.slug}/signing-keys", notice="signing_key_revoked")

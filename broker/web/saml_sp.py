"""SAML SP endpoints of a connection: SP metadata and the Assertion Consumer Service (HTTP-POST)."""

from __future__ import annotations

import time
from typing import TypeVar

from flask import Blueprint, Response, request
from werkzeug.datastructures import MultiDict

from broker import logs
from broker.errors import BrokerError, NotFound, PayloadTooLarge, ValidationFailed
from broker.login import LoginFailed
from broker.model import Connection, Tenant
from broker.upstream.base import AutoPost
from broker.upstream.saml import SamlConnector
from broker.web.context import current_request, services
from broker.web.cookies import binding_of
from broker.web.errors import unreadable_body
from broker.web.oidc_op import callback_input, finish_login, load_tenant, unknown_connection
from broker.web.steps import render_step

bp = Blueprint("saml_sp", __name__, url_prefix="/t/<tenant>/connections/<conn>/saml")
log = logs.get("broker.web.saml_sp")
E = TypeVar("E", bound=BrokerError)


def _connection(t: Tenant, slug: str) -> Connection:
    c = services().config.connection(t.id, slug)
    if c is None or c.protocol != "saml":
        raise NotFound("No such SAML connection.", code="connection_not_found")
    logs.connection.set(c.slug)
    return c


@bp.get("/metadata")
def metadata(tenant: str, conn: str) -> Response:
    svc = services()
    t = load_tenant(tenant)
    c = _connection(t, conn)
    connector = svc.extras["registry"].open(c)
    assert isinstance(connector, SamlConnector)
    resp = Response(connector.sp_metadata_xml(), mimetype="application/samlmetadata+xml")
    resp.headers["Content-Disposition"] = f'inline; filename="{t.slug}-{c.slug}-sp-metadata.xml"'
    return resp


@bp.post("/acs")
def acs(tenant: str, conn: str) -> Response:
    started = time.perf_counter()
    svc = services()
    req = current_request()
    limit = svc.settings.max_saml_bytes
    if req.content_length is not None and req.content_length > limit:
        raise _too_large(tenant, conn, limit, f"Content-Length {req.content_length}")
    # Without a Content-Length (chunked), werkzeug stops reading at the app's MAX_CONTENT_LENGTH, which is
    # larger than the limit: such a body is cut off there and refused here.
    try:
        raw = req.get_data(cache=True)
    except Exception as exc:
        if not unreadable_body(exc):
            raise
        raise _refused_post(tenant, conn, ValidationFailed(
            "The SAML message could not be read.", code="saml_response_malformed",
            detail=f"request body: {type(exc).__name__}")) from exc
    if len(raw) > limit:
        raise _too_large(tenant, conn, limit, f"body of {len(raw)} bytes")
    t = load_tenant(tenant)
    c = svc.config.connection(t.id, conn)
    if c is None or c.protocol != "saml":
        raise unknown_connection(t, conn, "saml")
    logs.connection.set(c.slug)
    form: MultiDict[str, str] = req.form
    resubmitted = SAME_SITE_MARK in form
    if resubmitted:
        form = MultiDict([(k, v) for k, v in form.items(multi=True) if k != SAME_SITE_MARK])
    callback = callback_input(t, c, form, handle="RelayState", single=("SAMLResponse",),
                              code="saml_response_malformed")
    if isinstance(callback, Response):
        return callback
    if not (resubmitted or callback.repeated) and _lax_cookie_withheld(svc.settings.secure_cookies):
        return _resubmit_same_site(form)
    try:
        result = svc.extras["login"].finish(t, c, callback, browser_binding=binding_of(req.cookies))
    except LoginFailed as failed:
        result = failed
    resp = finish_login(t, result)
    svc.metrics.step_seconds.labels(step="acs").observe(time.perf_counter() - started)
    return resp


SAME_SITE_MARK = "broker_same_site"


def _lax_cookie_withheld(secure_cookies: bool) -> bool:
    """Plain-http development only: the browser binding cookie is then SameSite=Lax (SameSite=None needs
    Secure, hence https), and a browser does not send it with the IdP's cross-site POST. Browsers say that a
    request is cross-site (Sec-Fetch-Site); a client that does not say so is answered as before."""
    return (not secure_cookies and binding_of(request.cookies) is None
            and request.headers.get("Sec-Fetch-Site") == "cross-site")


def _resubmit_same_site(form: MultiDict[str, str]) -> Response:
    """The same POST again, from this site's own page: a same-site request carries the Lax cookie, so the
    answer is checked against the browser that started the login, as on https. Nothing is decided or consumed
    here; a browser without the cookie still gets the usual refusal on the second POST."""
    fields = {k: v for k, v in form.items()} | {SAME_SITE_MARK: "1"}
    log.info("acs_resubmitted_same_site")
    return render_step(AutoPost(url=request.path, fields=fields))


def _too_large(tenant: str, conn: str, limit: int, detail: str) -> PayloadTooLarge:
    """The 413 for an oversized SAML POST (see _refused_post)."""
    return _refused_post(tenant, conn, PayloadTooLarge(
        f"The SAML message is larger than {limit} bytes.", code="saml_response_too_large", detail=detail))


def _refused_post(tenant: str, conn: str, err: E) -> E:
    """A SAML POST refused before its body is parsed (too large, or unreadable), audited as a refused login
    (SPEC: every rejected login gets an audit event) under the tenant and connection of the URL when they
    exist; an unknown tenant gets the error alone (there is no tenant to record it for)."""
    svc = services()
    t = svc.config.tenant_by_slug(tenant)
    if t is not None:
        logs.tenant.set(t.slug)
        c = svc.config.connection(t.id, conn)
        if c is not None and c.protocol == "saml":
            logs.connection.set(c.slug)
        else:
            c = None
        svc.extras["login"].record_begin_failure(t, c, None, err)
    return err

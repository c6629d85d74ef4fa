"""The upstream OIDC redirect URI of a connection."""

from __future__ import annotations

import time

from flask import Blueprint, Response, request

from broker import logs
from broker.login import LoginFailed
from broker.web.context import services
from broker.web.cookies import binding_of
from broker.web.oidc_op import callback_input, finish_login, load_tenant, unknown_connection

bp = Blueprint("oidc_rp", __name__, url_prefix="/t/<tenant>/connections/<conn>/oidc")


@bp.get("/callback")
def callback(tenant: str, conn: str) -> Response:
    started = time.perf_counter()
    svc = services()
    t = load_tenant(tenant)
    c = svc.config.connection(t.id, conn)
    if c is None or c.protocol != "oidc":
        raise unknown_connection(t, conn, "oidc")
    logs.connection.set(c.slug)
    cb = callback_input(t, c, request.args, handle="state",
                        single=("code", "iss", "error", "error_description", "error_uri"), code="oidc_invalid_response")
    if isinstance(cb, Response):
        return cb
    try:
        result = svc.extras["login"].finish(t, c, cb, browser_binding=binding_of(request.cookies))
    except LoginFailed as failed:
        result = failed
    resp = finish_login(t, result)
    svc.metrics.step_seconds.labels(step="callback").observe(time.perf_counter() - started)
    return resp

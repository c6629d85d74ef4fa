"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from broker.web.context import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    checks = {"database": svc.config.ping(), "state_store": svc.state.ping()}
    ok = all(checks.values())
    resp = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
    resp.status_code = 200 if ok else 503
    return resp


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition. The series name every tenant and connection with their activity, so an operator
    whose public URL reaches this path sets BROKER_METRICS_TOKEN and gives it to the scraper."""
    svc = services()
    token = svc.settings.metrics_token
    if token is not None:
        scheme, _, sent = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.reveal().encode()):
            resp = Response("Send the metrics token: Authorization: Bearer <BROKER_METRICS_TOKEN>\n", status=401,
                            mimetype="text/plain")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return resp
    return Response(svc.metrics.render(), mimetype="text/plain; version=0.0.4")

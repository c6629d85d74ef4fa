"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from flask import Blueprint, Response, jsonify, request

from broker.web.context import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


# A probe must answer within its own timeout (the chart's readiness probe: 3 s) even when a dependency
# accepts connections and never answers: both checks run at once, and one that has not answered within
# READY_DEADLINE counts as down. A check still running from an earlier probe is waited on, not started again,
# so a hung dependency holds at most one thread per check.
READY_DEADLINE = 2.0
_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")
_running: dict[tuple[str, int], Future[bool]] = {}  # (check, id of the store): one app per process, or tests'
_running_lock = threading.Lock()


def _check(name: str, store: object, ping: Callable[[], bool]) -> Future[bool]:
    with _running_lock:
        for key in [k for k, f in _running.items() if f.done()]:
            del _running[key]
        running = _running.get((name, id(store)))
        if running is None:
            running = _running[(name, id(store))] = _checks.submit(ping)
        return running


def _outcome(future: Future[bool], deadline: float) -> bool:
    try:
        return bool(future.result(timeout=max(0.0, deadline - time.monotonic())))
    except FuturesTimeout:
        return False
    except Exception:  # noqa: BLE001 - a ping that raised: that dependency is not ready
        return False


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    deadline = time.monotonic() + READY_DEADLINE
    database = _check("database", svc.config, svc.config.ping)
    state_store = _check("state_store", svc.state, svc.state.ping)
    checks = {"database": _outcome(database, deadline), "state_store": _outcome(state_store, deadline)}
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

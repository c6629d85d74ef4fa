"""create_app(settings): the one composition root. Builds stores and services, registers the web layer."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from broker import logs
from broker.admin.service import AdminService, Urls
from broker.audit import Auditor
from broker.errors import BrokerError, ServiceUnavailable, StateStoreError
from broker.issuer.server import Issuer
from broker.login import LoginService
from broker.metrics import Metrics
from broker.ports import Clock, Fetcher, StateStore, SystemClock
from broker.samlxml.metadata import signing_certificate_expiry
from broker.settings import Settings, load_settings
from broker.store.cached import CachedConfigStore
from broker.store.config_repo import SqlConfigStore
from broker.store.database import check_schema, make_engine, upgrade
from broker.store.last_login import LastLoginWriter
from broker.store.sealing import Sealer, SecretHasher
from broker.store.state import MemoryStateStore
from broker.store.state_redis import RedisStateStore
from broker.upstream.metadata_refresh import MetadataProvider
from broker.upstream.registry import ConnectorRegistry
from broker.web import admin_api, health, oidc_op, oidc_rp, saml_sp
from broker.web.context import Services, bind_services, current_request
from broker.web.errors import admin_error, admin_error_raw, html_error, html_page, oauth_error, unreadable_body

log = logs.get("broker.app")
access = logs.get("broker.access")
PROBES = frozenset({"health.healthz", "health.readyz", "health.metrics"})  # logged at DEBUG: every few seconds

OAUTH_ENDPOINTS = ("/token", "/userinfo", "/introspect", "/revoke", "/jwks", "/.well-known/openid-configuration",
                   "/.well-known/oauth-authorization-server")


def _surface(path: str) -> str:
    if path.startswith("/admin/v1"):
        return "admin"
    if path.startswith("/t/") and path.endswith(OAUTH_ENDPOINTS):
        return "oauth"
    return "html"


def build_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    state: StateStore | None = None,
    fetcher: Fetcher | None = None,
    migrate: bool | None = None,
    worker_boot: bool = False,
) -> Services:
    """`worker_boot`: a gunicorn worker of `broker serve`, whose master has checked the schema at start. It
    boots without the database (a worker replaced during an outage must not fail to boot: gunicorn would then
    stop every worker), and answers 503 until the database is back."""
    engine = make_engine(settings.sqlalchemy_url)
    if migrate if migrate is not None else not settings.is_production:
        upgrade(engine)
    elif not worker_boot:
        check_schema(engine)
    secret = settings.secret_key.reveal()
    previous = [k.reveal() for k in settings.previous_secret_keys]
    if state is None:
        state = RedisStateStore.from_url(settings.redis_url) if settings.redis_url else MemoryStateStore()
    config = CachedConfigStore(SqlConfigStore(engine, Sealer(secret, previous),
                                              certificate_expiry=signing_certificate_expiry), state)
    clock = clock or SystemClock()
    auditor = Auditor(config)
    hasher = SecretHasher(secret, previous)
    if fetcher is None:
        from broker.upstream.sources import RequestsFetcher

        fetcher = RequestsFetcher(allow_private=settings.upstream_allow_private)
    fetch = fetcher

    def fetch_metadata(url: str) -> bytes:
        from broker.upstream.sources import fetch_metadata_bytes

        return fetch_metadata_bytes(fetch, url, timeout=settings.upstream_timeout,
                                    max_bytes=settings.max_metadata_bytes)

    admin = AdminService(
        store=config,
        hasher=hasher,
        auditor=auditor,
        clock=clock,
        urls=Urls(settings.public_url),
        fetch_metadata=fetch_metadata,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    if settings.bootstrap_admin_key is not None:
        try:
            admin.ensure_admin_key(settings.bootstrap_admin_key.reveal())
        except (ServiceUnavailable, SQLAlchemyError) as exc:
            if not worker_boot:
                raise
            # the master checked the database moments ago, and the worker that booted first wrote the key
            log.warning("bootstrap_admin_key_not_checked", extra={"error": type(exc).__name__})
    metrics = Metrics(certificates=config.idp_certificates, metadata=config.metadata_freshness)
    registry = ConnectorRegistry(
        public_url=settings.public_url, state=state, clock=clock, fetcher=fetcher, metrics=metrics,
        upstream_timeout=settings.upstream_timeout,
        metadata_provider=MetadataProvider(config, fetcher, clock, timeout=settings.upstream_timeout,
                                           max_bytes=settings.max_metadata_bytes, metrics=metrics),
    )
    issuer = Issuer(config=config, state=state, clock=clock, secrets=hasher, public_url=settings.public_url,
                    audit=auditor)
    last_logins = LastLoginWriter(config)
    login = LoginService(config=config, state=state, clock=clock, registry=registry, auditor=auditor,
                         metrics=metrics, login_ttl=settings.login_ttl, on_success=last_logins.touch_connection)
    return Services(
        settings=settings, config=config, state=state, clock=clock, auditor=auditor, admin=admin,
        metrics=metrics,
        extras={"engine": engine, "fetcher": fetcher, "issuer": issuer, "login": login, "registry": registry,
                "last_logins": last_logins},
    )


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    svc = build_services(settings, **overrides)
    try:  # the state store's memory (the replay cache's) begins no later than the first server's start
        svc.state.kept_since(svc.clock.now())
    except StateStoreError:
        log.warning("state_store_unavailable_at_start")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_saml_bytes, settings.max_json_bytes,
                                           settings.max_metadata_bytes) * 2
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["broker"] = svc
    if settings.proxy_hops:
        # behind N trusted reverse proxies (ingress, load balancer): the client address is theirs to tell
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops)  # type: ignore[method-assign]
    app.register_blueprint(health.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(oidc_op.bp)
    app.add_url_rule("/.well-known/oauth-authorization-server/t/<tenant>", "rfc8414_metadata",
                     oidc_op.discovery)  # RFC 8414 §3.1: the well-known path inserted before the issuer's path
    app.register_blueprint(saml_sp.bp)
    app.register_blueprint(oidc_rp.bp)
    app.register_blueprint(__import__("broker.web.admin_ui", fromlist=["bp"]).bp)
    if settings.dev_idp and settings.env == "dev":
        # The development IdP (/dev/idp/...) and the demo app (/demo): dev only (settings refuse it in production).
        from broker.web import demo, dev_idp

        app.register_blueprint(dev_idp.bp)
        app.register_blueprint(demo.bp)
    _register_hooks(app, svc)
    log.info("broker_ready", extra={"public_url": settings.public_url, "env": settings.env,
                                    "state_store": "redis" if settings.redis_url else "memory"})
    return app


# Production serves https only (settings refuse an http public URL): browsers are told to never try http, where
# a network attacker could answer first and plant cookies. Not includeSubDomains: other hosts of the domain
# are not the broker's to decide for.
HSTS = "max-age=31536000"
STARTED = "broker.started"  # WSGI environ key: when the request's handling began (time.perf_counter)


def _register_hooks(app: Flask, svc: Services) -> None:
    hsts = HSTS if svc.settings.is_production else None
    access_log = svc.settings.access_log

    @app.before_request
    def _start() -> None:
        bind_services(svc)
        req = current_request()
        rid = req.headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 64 and rid.isascii() and rid.replace("-", "").isalnum()):
            rid = secrets.token_hex(8)
        req.environ[STARTED] = time.perf_counter()
        logs.request_id.set(rid)
        logs.tenant.set(None)
        logs.connection.set(None)
        begin = getattr(svc.config, "begin_request", None)
        if begin is not None:
            begin()

    @app.after_request
    def _finish(resp: Response) -> Response:
        req = current_request()
        headers = resp.headers
        headers["X-Request-Id"] = logs.request_id.get() or ""
        headers.setdefault("X-Content-Type-Options", "nosniff")
        if hsts:
            headers.setdefault("Strict-Transport-Security", hsts)
        rule = req.url_rule
        endpoint = rule.endpoint if rule is not None else "unmatched"
        status = resp.status_code
        svc.metrics.http_requests.labels(endpoint=endpoint, status=str(status)).inc()
        if access_log:
            # the path alone: query strings carry codes, states, login hints and SAML messages
            now = time.perf_counter()
            access.log(logging.DEBUG if endpoint in PROBES else logging.INFO, "request", extra={
                "method": req.method, "path": req.path[:200], "status": status,
                "ms": round((now - req.environ.get(STARTED, now)) * 1000, 1), "client": req.remote_addr})
        return resp

    @app.teardown_request
    def _end(_: BaseException | None) -> None:
        end = getattr(svc.config, "end_request", None)
        if end is not None:
            end()
        # the worker thread lives on: what it logs next outside a request (gunicorn refusing a malformed
        # request, say) must not carry this request's id, tenant and connection
        logs.request_id.set(None)
        logs.tenant.set(None)
        logs.connection.set(None)
        bind_services(None)

    @app.errorhandler(BrokerError)
    def _broker_error(err: BrokerError) -> Response:
        if err.status == 413:
            _drain_body()
        surface = _surface(request.path)
        if err.status >= 500:
            log.warning("request_failed", extra={"code": err.code, "detail": err.detail, "path": request.path})
        if surface == "admin":
            return admin_error(err)
        if surface == "oauth":
            if err.status >= 500:  # RFC 6749 §5.2 codes only; the precise cause is in the log
                return oauth_error(BrokerError("The service is temporarily unavailable; try again shortly.",
                                               code="temporarily_unavailable", status=503))
            return oauth_error(err)
        return html_error(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "invalid_request"}
        code = codes.get(status, "http_error")
        message = {404: "No such resource.", 405: "That method is not allowed here.",
                   413: "The request body is too large."}.get(status, "The request could not be processed.")
        if status == 413:
            _drain_body()
        surface = _surface(request.path)
        if surface == "admin":
            resp = admin_error_raw(status, code, message)
        elif surface == "oauth":
            resp = oauth_error(BrokerError(message, code="invalid_request", status=status))
        else:
            resp = html_page(status, "Error", message, code, logs.request_id.get())
        allow = dict(err.get_headers()).get("Allow")
        if status == 405 and allow:  # RFC 9110 §15.5.6: a 405 names the methods the resource has
            resp.headers["Allow"] = allow
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        if unreadable_body(err):
            log.warning("request_body_unreadable", extra={"path": request.path[:200], "cause": type(err).__name__})
            # gunicorn then closes the connection: its parser fails again on what is left of the body
            return _http_error(BadRequest())
        log.exception("unhandled_error", extra={"path": request.path})
        unavailable = ServiceUnavailable("The service is temporarily unavailable. Please try again shortly.")
        surface = _surface(request.path)
        if surface == "admin":
            return admin_error_raw(500, "internal_error", "An internal error occurred; it has been logged.")
        if surface == "oauth":
            return oauth_error(BrokerError("An internal error occurred.", code="server_error", status=500))
        return html_error(unavailable) if _is_backend_error(err) else html_page(
            500, "Something went wrong", "An internal error occurred; it has been logged.", "internal_error",
            logs.request_id.get())


DRAIN_LIMIT = 32 * 1024 * 1024


def _drain_body() -> None:
    """Read and discard an oversized body we refuse, so that the client receives the 413 instead of a reset
    connection (closing a socket with unread input makes the kernel send RST). Beyond 32 MiB we do not."""
    length = request.content_length
    if length is None or length > DRAIN_LIMIT:
        return
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
    except (OSError, ValueError):
        return


def _is_backend_error(err: Exception) -> bool:
    name = type(err).__module__
    return name.startswith(("sqlalchemy", "redis", "psycopg"))

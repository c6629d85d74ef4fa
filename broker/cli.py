"""The `broker` command: thin wrappers around the services (serve, db, config apply, admin keys, keys)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError

from broker import logs
from broker.errors import BrokerError, ConfigError
from broker.settings import Settings, check_workers, load_settings


def _settings() -> Settings:
    return load_settings()


def default_workers(settings: Settings) -> int:
    if settings.redis_url is None:
        return 1
    return max(2, min(8, (os.cpu_count() or 1) * 2))


MAX_WORKERS = 64  # processes per server; scale out with replicas beyond that
MAX_KEEPALIVE = 3600  # seconds an idle connection may be kept open


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.serving import prepare_metrics_dir, worker_exited

    metrics_dir = prepare_metrics_dir()  # before anything imports prometheus_client (see broker.metrics)
    settings = _settings()
    workers = args.workers if args.workers is not None else default_workers(settings)
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}.")
    check_workers(settings, workers)
    logs.configure(settings.log_level)
    from broker.store.database import check_schema, make_engine, upgrade, wait_for_database

    engine = make_engine(settings.sqlalchemy_url)
    wait_for_database(engine)
    if not settings.is_production:
        upgrade(engine)  # once, in the master, before workers start
    else:
        check_schema(engine)
    engine.dispose()

    from gunicorn.app.base import BaseApplication

    from broker.app import create_app

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "broker.serving.ThreadWorker")  # gthread, lighter heartbeat
            self.cfg.set("threads", args.threads)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("keepalive", args.keepalive)
            self.cfg.set("limit_request_line", MAX_REQUEST_LINE)
            self.cfg.set("max_requests", 0)
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("logger_class", "broker.serving.JsonLogger")  # gunicorn's own lines as JSON too
            # at INFO its lifecycle too: listening, each worker booted and exiting (with its pid), signals
            self.cfg.set("loglevel", "info" if settings.log_level == "DEBUG" else settings.log_level.lower())
            self.cfg.set("preload_app", False)  # each worker opens its own DB pool and Redis client
            if os.path.isdir("/dev/shm"):  # noqa: S108 - the heartbeat file: tmpfs, not a disk write per request
                self.cfg.set("worker_tmp_dir", "/dev/shm")  # noqa: S108
            self.cfg.set("child_exit", worker_exited)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: no socket under $HOME to share
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return create_app(settings, migrate=False, worker_boot=True)

    logs.get("broker.cli").info("serving", extra={"url": settings.public_url, "bind": f"{args.host}:{args.port}",
                                                  "workers": workers, "metrics_dir": metrics_dir})
    Server().run()
    return 0


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    settings = _settings()
    from broker.store.database import make_engine, upgrade

    upgrade(make_engine(settings.sqlalchemy_url))
    print("database schema is up to date")
    return 0


def _services(settings: Settings, *, writes: bool = False, keyed: bool = False) -> Any:
    """The broker's services. `writes`: the command changes configuration, which running servers learn of
    through the state store: check that it answers first, so that a command that cannot announce its change
    does not make it (README: any error, nothing written). `writes` or `keyed`: what the command writes is
    sealed or keyed with BROKER_SECRET_KEY, so check first that the key opens what the database holds."""
    from broker.app import build_services

    svc = build_services(settings)
    if writes and not svc.state.ping():
        svc.extras["engine"].dispose()
        raise ConfigError("The state store (REDIS_URL) cannot be reached; nothing was written. Running servers "
                          "learn of configuration changes through it: try again when it answers.")
    if writes or keyed:
        try:  # what this command writes is sealed or keyed with BROKER_SECRET_KEY: the servers' key, or nothing
            svc.config.check_secret_key()
        except ConfigError as exc:
            svc.extras["engine"].dispose()
            raise ConfigError(f"{exc.message} Nothing was written: this command must run with the servers' "
                              "BROKER_SECRET_KEY.") from None
    if writes and settings.redis_url is None and settings.is_production:
        # production servers run with Redis, through which they learn of changes at once; without it they
        # pick this one up by their cache backstop only (README)
        logs.get("broker.cli").warning("change_not_announced", extra={
            "detail": "REDIS_URL is not set: running servers learn of this change within 10 minutes, not at once; "
                      "run the command with the servers' REDIS_URL"})
    return svc


def cmd_admin_create_key(args: argparse.Namespace) -> int:
    settings = _settings()
    svc = _services(settings, keyed=True)
    body: dict[str, Any] = {"label": args.label or "cli"}
    if args.expires_in_days is not None:
        body["expires_in"] = args.expires_in_days * 86400
    out = svc.admin.create_admin_key(None, args.tenant, body)
    print(out["key"])
    return 0


def cmd_admin_list_keys(args: argparse.Namespace) -> int:
    svc = _services(_settings())
    for k in svc.admin.list_admin_keys(None, args.tenant)["admin_keys"]:
        expires = f"expires {k['expires_at']}" if k["expires_at"] else "no expiry"
        print(f"{k['id']}  {k['tenant'] or '(global)'}  {k['created_at']}  {expires}  {k['label']}")
    return 0


def cmd_admin_revoke_key(args: argparse.Namespace) -> int:
    svc = _services(_settings())
    svc.admin.revoke_admin_key(None, args.tenant, args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def _keys_command(args: argparse.Namespace, act: Callable[[Any, Any], dict[str, Any]]) -> int:
    """A signing-key command on the tenant `--tenant` names; prints the answer as the admin API gives it."""
    svc = _services(_settings(), writes=True)
    tenant = svc.config.tenant_by_slug(args.tenant)
    if tenant is None:
        raise ConfigError(f"No tenant {args.tenant!r}.")
    print(json.dumps(act(svc, tenant), indent=2))
    _announced(svc)
    return 0


def _announced(svc: Any) -> None:
    """After a write that committed: fail the command (exit 2) when the running servers could not be told of
    it, since no later request of this process will retry the announcement."""
    if getattr(svc.config, "announcement_owed", False):  # the store went away between check and announcement
        raise ConfigError("The change was written, but running servers could not be told of it (the state store "
                          "stopped answering): each one picks it up on its own within 10 minutes.")


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    body = {"alg": args.alg, "activate_after": args.activate_after}
    return _keys_command(args, lambda svc, tenant: svc.admin.rotate_keys(None, tenant, body))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    return _keys_command(args, lambda svc, tenant: svc.admin.revoke_signing_key(None, tenant, args.kid))


def cmd_metadata_refresh(args: argparse.Namespace) -> int:
    """Refresh every metadata_url connection whose document is due (or all with --force): for a cron job, so
    that logins never wait for a fetch. A failed refresh keeps the last good copy and is reported."""
    settings = _settings()
    svc = _services(settings)
    provider = svc.extras["registry"].metadata_provider
    log = logs.get("broker.cli")
    failures = 0
    try:
        for tenant in svc.config.tenants():
            for conn in svc.config.connections(tenant.id):
                if conn.protocol != "saml" or not conn.settings.get("metadata_url"):
                    continue
                logs.tenant.set(tenant.slug)  # on every line the refresh logs, as in a server's request
                logs.connection.set(conn.slug)
                try:
                    if args.force:
                        from broker.upstream.sources import MetadataCacheEntry

                        previous = MetadataCacheEntry.from_state(svc.config.metadata_state(conn.id))
                        provider.refresh(conn, str(conn.settings["metadata_url"]), previous, svc.clock.now())
                    else:
                        provider(conn)
                except (BrokerError, OSError) as exc:  # this connection's refresh failed as such: reported below
                    log.warning("metadata_refresh_failed", extra={"tenant": tenant.slug, "connection": conn.slug,
                                                                 "error": repr(exc)[:300]})
                except Exception:  # a bug on one connection's document must not stop every later refresh
                    log.exception("metadata_refresh_crashed", extra={"tenant": tenant.slug,
                                                                      "connection": conn.slug})
                    failures += 1
                    print(f"FAILED {tenant.slug}/{conn.slug}: internal error (see the log)")
                    continue
                state = svc.config.metadata_state(conn.id)
                ok = state.xml is not None and not state.last_error
                failures += 0 if ok else 1
                print(f"{'ok    ' if ok else 'FAILED'} {tenant.slug}/{conn.slug}"
                      + (f": {state.last_error}" if state.last_error else ""))
    finally:
        logs.tenant.set(None)
        logs.connection.set(None)
        svc.extras["engine"].dispose()
    return 1 if failures else 0


def cmd_audit_prune(args: argparse.Namespace) -> int:
    """Delete audit events older than --older-than days (retention; for a daily cron job)."""
    svc = _services(_settings())
    before = datetime.fromtimestamp(svc.clock.now() - args.older_than * 86400, UTC)
    try:
        deleted = svc.config.prune_audit(before)
    finally:
        svc.extras["engine"].dispose()
    logs.get("broker.cli").info("audit_pruned", extra={"deleted": deleted, "before": before.isoformat()})
    print(f"deleted {deleted} audit events older than {before.isoformat().replace('+00:00', 'Z')}")
    return 0


def cmd_secrets_reseal(_: argparse.Namespace) -> int:
    """After rotating BROKER_SECRET_KEY (old key in BROKER_SECRET_KEY_PREVIOUS): re-seal everything."""
    settings = _settings()
    svc = _services(settings, writes=True)
    try:
        count = svc.config.reseal_all()
    finally:
        svc.extras["engine"].dispose()
    print(f"resealed {count} value(s) under the current BROKER_SECRET_KEY")
    _announced(svc)
    return 0


def cmd_config_apply(args: argparse.Namespace) -> int:
    settings = _settings()
    svc = _services(settings, writes=not args.dry_run)
    from broker.admin.apply import apply_config

    try:
        result = apply_config(svc.admin, args.dir, dry_run=args.dry_run, prune=args.prune)
    except BrokerError as exc:
        if getattr(svc.config, "announcement_owed", False):  # a write committed before the error, unannounced
            raise ConfigError("The change was written, but running servers could not be told of it (the state "
                              "store stopped answering): each one picks it up on its own within 10 minutes. "
                              f"({exc.message})") from None
        raise
    finally:
        svc.extras["engine"].dispose()
    print(result.render())
    _announced(svc)
    return 1 if args.exit_code and result.changes else 0


DEMO_DATABASE_URL = "sqlite:///broker-demo.db"


def _demo_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment `broker demo` runs with: dev, in-process state, an SQLite file unless DATABASE_URL is set,
    and a public URL for the bound port unless BROKER_PUBLIC_URL is set."""
    env = dict(os.environ)
    if (env.get("BROKER_ENV") or "dev").strip().lower() != "dev":
        raise ConfigError("`broker demo` runs with BROKER_ENV=dev only: it serves the development IdP.")
    env["BROKER_ENV"] = "dev"
    env.pop("REDIS_URL", None)  # one worker, the in-process state store
    env["DATABASE_URL"] = env.get("DATABASE_URL") or DEMO_DATABASE_URL
    if not env.get("BROKER_PUBLIC_URL"):
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 - comparing
        env["BROKER_PUBLIC_URL"] = f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"
    return env


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker.settings import project_root

    env = _demo_env(args)
    settings = load_settings(env)
    if not settings.dev_idp:
        raise ConfigError("`broker demo` needs the development IdP: unset BROKER_DEV_IDP (or set it to true).")
    config_path = Path(args.config) if args.config else project_root() / "config" / "demo.yaml"
    if not config_path.is_file():
        raise ConfigError(f"The demo config {config_path} does not exist (install from a source checkout, or "
                          "pass --config PATH).")
    logs.configure(settings.log_level)

    from broker.admin.apply import apply_config
    from broker.app import build_services
    from broker.devidp.keys import demo_client_secret, dev_dir, load_or_create
    from broker.devidp.local_fetch import DevIdpLocalFetcher
    from broker.upstream.sources import RequestsFetcher

    keys = load_or_create(dev_dir(settings.database_url))  # before any worker starts: one set of keys
    svc = build_services(settings, migrate=True,
                         fetcher=DevIdpLocalFetcher(RequestsFetcher(), keys, settings.public_url))
    apply_env = {**env, "BROKER_PUBLIC_URL": settings.public_url,
                 "BROKER_DEMO_OIDC_CLIENT_SECRET": demo_client_secret(settings.secret_key.reveal())}
    apply_env.pop("BROKER_CONFIG_ENV_ALLOW", None)  # an allow-list for the user's own files, not the demo's
    try:
        result = apply_config(svc.admin, config_path, env=apply_env)
    finally:
        svc.extras["engine"].dispose()
    print(f"{config_path.name}: " + result.render().replace("\n", "\n  "), file=sys.stderr, flush=True)

    from gunicorn.app.base import BaseApplication

    from broker.app import create_app

    url = f"{settings.public_url}/demo"

    def when_ready(_server: Any) -> None:
        print(f"\nThe broker demo is running. Open {url}\n"
              f"(development IdP: {settings.public_url}/dev/idp/ ; database: {settings.database_url} ; "
              "Ctrl-C stops it)\n", flush=True)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", 1)  # the in-process state store is single-process
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)  # the OIDC connector calls the dev OP on this same server
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 5)
            self.cfg.set("keepalive", 5)
            self.cfg.set("limit_request_line", MAX_REQUEST_LINE)
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("logger_class", "broker.serving.JsonLogger")  # gunicorn's own lines as JSON too
            self.cfg.set("loglevel", "warning")
            self.cfg.set("preload_app", False)
            self.cfg.set("when_ready", when_ready)

        def load(self) -> Any:
            return create_app(settings, migrate=False, worker_boot=True)

    Server().run()
    return 0


def _whole_number(low: int, high: int, refusal: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else `refusal` (argparse names the option)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(refusal)
        return n

    return parse


_thread_count = _whole_number(1, 256, "must be a whole number from 1 to 256")
# gunicorn's largest request line (its default is 4094): an /authorize URL with an id_token_hint (an ID token
# of a few KB, more with many groups) fits; a longer request still gets gunicorn's 414
MAX_REQUEST_LINE = 8190

_keepalive = _whole_number(1, MAX_KEEPALIVE, f"must be a whole number of seconds from 1 to {MAX_KEEPALIVE}")
_port = _whole_number(0, 65535, "must be a TCP port number from 0 to 65535")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="broker", description="SAML 2.0 / OIDC federation broker")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the production server (gunicorn)")
    serve.add_argument("--host", default="0.0.0.0",  # noqa: S104 - a server binds all interfaces by default
                       help="the address to listen on (default 0.0.0.0: every interface)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: 1 without Redis, else 2x cores up to 8)")
    serve.add_argument("--threads", type=_thread_count, default=4, help="threads per worker (1-256)")
    serve.add_argument("--keepalive", type=_keepalive, default=5, metavar="SECONDS",
                       help="how long an idle client connection is kept open (default 5; behind a load balancer "
                            "that reuses connections, set it above the balancer's idle timeout)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the demo: SQLite, a demo tenant and the development IdP; prints where to click")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--threads", type=_thread_count, default=8, help="threads of the one worker (1-256)")
    demo.add_argument("--config", default=None, help="the demo config file (default: config/demo.yaml)")
    demo.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply schema migrations")
    up.set_defaults(func=cmd_db_upgrade)

    config = sub.add_parser("config", help="declarative config (YAML files)")
    csub = config.add_subparsers(dest="config_command", required=True)
    ap = csub.add_parser("apply", help="create or update what the YAML files in DIR say, idempotently")
    ap.add_argument("dir", metavar="DIR", help="directory of *.yaml / *.yml files (or one file)")
    ap.add_argument("--dry-run", action="store_true", help="print the changes; write nothing")
    ap.add_argument("--prune", action="store_true",
                    help="also delete connections and apps of the named tenants that the files do not name")
    ap.add_argument("--exit-code", action="store_true",
                    help="exit 1 when there were changes (with --dry-run: when the files and the database "
                         "differ), 0 when none; errors stay 2")
    ap.set_defaults(func=cmd_config_apply)

    admin = sub.add_parser("admin", help="admin keys")
    adsub = admin.add_subparsers(dest="admin_command", required=True)
    ck = adsub.add_parser("create-key", help="print a new admin key once")
    ck.add_argument("--tenant", default=None, help="scope the key to this tenant slug (default: global)")
    ck.add_argument("--label", default=None)
    ck.add_argument("--expires-in-days", type=_whole_number(1, 1825, "must be a whole number of days from 1 to 1825"),
                    default=None, metavar="DAYS",
                    help="the key stops working after this many days (default: until revoked)")
    ck.set_defaults(func=cmd_admin_create_key)
    lk = adsub.add_parser("list-keys", help="list admin keys (id, tenant, created, expiry, label; never the key)")
    lk.add_argument("--tenant", default=None, help="only this tenant's keys (default: every key)")
    lk.set_defaults(func=cmd_admin_list_keys)
    rk = adsub.add_parser("revoke-key", help="revoke an admin key by id (it stops working at once)")
    rk.add_argument("key_id", metavar="ID")
    rk.add_argument("--tenant", default=None, help="the key's tenant slug (checked when given)")
    rk.set_defaults(func=cmd_admin_revoke_key)

    keys = sub.add_parser("keys", help="tenant signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    rot = ksub.add_parser("rotate", help="rotate a tenant's signing key")
    rot.add_argument("--tenant", required=True)
    rot.add_argument("--alg", default="RS256", choices=["RS256", "ES256"])
    rot.add_argument("--activate-after", type=int, default=0, metavar="SECONDS",
                     help="publish the new key now, sign with it from SECONDS on (default 0: at once)")
    rot.set_defaults(func=cmd_keys_rotate)
    rev = ksub.add_parser("revoke", help="revoke a signing key that leaked: out of the JWKS at once, its tokens "
                                         "refused (not the key that signs now: rotate first)")
    rev.add_argument("--tenant", required=True)
    rev.add_argument("--kid", required=True)
    rev.set_defaults(func=cmd_keys_revoke)

    sec = sub.add_parser("secrets", help="secrets at rest")
    secsub = sec.add_subparsers(dest="secrets_command", required=True)
    rs = secsub.add_parser("reseal", help="re-seal stored secrets under the current BROKER_SECRET_KEY")
    rs.set_defaults(func=cmd_secrets_reseal)

    md = sub.add_parser("metadata", help="IdP metadata of metadata_url connections")
    mdsub = md.add_subparsers(dest="metadata_command", required=True)
    ref = mdsub.add_parser("refresh", help="refresh the due metadata_url documents (for a cron job)")
    ref.add_argument("--force", action="store_true", help="refresh every one, due or not")
    ref.set_defaults(func=cmd_metadata_refresh)

    au = sub.add_parser("audit", help="audit events")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    pr = ausub.add_parser("prune", help="delete audit events older than a number of days (for a cron job)")
    pr.add_argument("--older-than", type=_whole_number(1, 36500, "must be a whole number of days from 1 to 36500"),
                    required=True, metavar="DAYS", help="keep this many days of events")
    pr.set_defaults(func=cmd_audit_prune)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # warnings of one-shot commands are JSON lines too (serve: its level)
        logs.configure("WARNING")
    try:
        code: int = args.func(args)
        return code
    except BrokerError as exc:
        print(f"broker: {exc.message}", file=sys.stderr)
        return 2
    except DBAPIError as exc:  # the database cannot be reached (or is not the broker's): a sentence, no trace
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else exc.__class__.__name__
        print(f"broker: The database (DATABASE_URL) cannot be used: {reason[:300]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

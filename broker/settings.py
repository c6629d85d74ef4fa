"""Frozen Settings read from the environment once at start, validated with clear messages.

See SPEC "Settings (environment)". Secrets are wrapped in `Secret`, which prints as ***.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, urlsplit

from broker.errors import ConfigError

DEV_SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"
DEFAULT_SQLITE = "sqlite:///broker-dev.db"


class Secret:
    """A string that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    public_url: str
    database_url: str
    redis_url: str | None
    secret_key: Secret
    env: str  # "dev" | "production"
    bootstrap_admin_key: Secret | None
    max_saml_bytes: int = 512 * 1024
    max_json_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 2 * 1024 * 1024
    upstream_timeout: float = 10.0
    login_ttl: int = 600
    config_cache_seconds: float = 2.0
    dev_idp: bool = False
    log_level: str = "INFO"
    upstream_allow_private: bool = True
    previous_secret_keys: tuple[Secret, ...] = ()
    proxy_hops: int = 0
    metrics_token: Secret | None = None  # set: /metrics wants "Authorization: Bearer <it>"
    access_log: bool = True  # one "request" line per answered request

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with postgresql:// mapped to the psycopg 3 driver."""
        url = self.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}.")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def _check_port(name: str, parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018 - urllib checks the port (digits, at most 65535) when it is read
    except ValueError:
        raise ConfigError(f"{name} has an invalid port.") from None


def _check_database_url(url: str) -> None:
    """What SQLAlchemy would accept but no one means: an in-memory SQLite database (every process its own,
    gone at exit: a command would report success into nothing), or a PostgreSQL URL with no database name
    (libpq would pick one after the OS user)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - read to validate
    except (ArgumentError, ValueError):
        raise ConfigError("DATABASE_URL cannot be read as a database URL (check its host, port and quoting).") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file::memory:"):
            raise ConfigError("DATABASE_URL names an in-memory SQLite database; name a file: sqlite:///path/broker.db.")
    elif not parsed.database:
        raise ConfigError("DATABASE_URL must name the PostgreSQL database: postgresql://user@host:5432/dbname.")


def _check_redis_url(url: str) -> None:
    """redis-py reads a database number it cannot parse as database 0 and fails late on a bad port."""
    parts = urlsplit(url)
    _check_port("REDIS_URL", parts)
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.lstrip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ConfigError(f"REDIS_URL's path must be a database number (redis://host:6379/0), got {parts.path!r}.")
    db_param = parse_qs(parts.query).get("db")
    if db_param and not all(v.isascii() and v.isdigit() for v in db_param):
        raise ConfigError("REDIS_URL's db parameter must be a database number.")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment. Raises ConfigError with a sentence an operator can act on."""
    env = os.environ if env is None else env
    mode = (env.get("BROKER_ENV") or "dev").strip().lower()
    if mode not in ("dev", "production"):
        raise ConfigError(f"BROKER_ENV must be 'dev' or 'production', got {mode!r}.")

    public_url = (env.get("BROKER_PUBLIC_URL") or "http://127.0.0.1:8000").strip().rstrip("/")
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"BROKER_PUBLIC_URL must be an absolute http(s) URL, got {public_url!r}.")
    if parts.query or parts.fragment:
        raise ConfigError("BROKER_PUBLIC_URL must not have a query or fragment.")
    if mode == "production" and parts.scheme != "https":
        raise ConfigError("BROKER_ENV=production refuses an http:// BROKER_PUBLIC_URL; use https://.")
    _check_port("BROKER_PUBLIC_URL", parts)

    database_url = (env.get("DATABASE_URL") or DEFAULT_SQLITE).strip()
    if not database_url.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")):
        raise ConfigError(
            "DATABASE_URL must start with sqlite:///, postgresql:// or postgresql+psycopg://."
        )
    _check_database_url(database_url)

    redis_url = (env.get("REDIS_URL") or "").strip() or None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://.")
    if redis_url is not None:
        _check_redis_url(redis_url)

    raw_secret = env.get("BROKER_SECRET_KEY") or ""
    if raw_secret:
        if len(raw_secret) < 32:
            raise ConfigError("BROKER_SECRET_KEY must be at least 32 characters long.")
        if len(raw_secret.strip()) < 32:  # used exactly as given (a trailing newline stays part of it)
            raise ConfigError("BROKER_SECRET_KEY must be at least 32 characters long, not counting spaces.")
        secret = Secret(raw_secret)
    elif mode == "production":
        raise ConfigError("BROKER_ENV=production requires BROKER_SECRET_KEY (at least 32 characters).")
    else:
        secret = Secret(DEV_SECRET_KEY)

    previous: list[Secret] = []
    for value in (env.get("BROKER_SECRET_KEY_PREVIOUS") or "").split():
        if len(value) < 32:
            raise ConfigError("Each key in BROKER_SECRET_KEY_PREVIOUS must be at least 32 characters long.")
        previous.append(Secret(value))

    bootstrap = env.get("BROKER_BOOTSTRAP_ADMIN_KEY") or None
    if bootstrap is not None and len(bootstrap) < 16:
        raise ConfigError("BROKER_BOOTSTRAP_ADMIN_KEY must be at least 16 characters long.")

    dev_idp = _bool(env, "BROKER_DEV_IDP", mode == "dev")
    if dev_idp and mode == "production":
        raise ConfigError("The development IdP cannot be enabled with BROKER_ENV=production.")

    allow_private = _bool(env, "BROKER_UPSTREAM_ALLOW_PRIVATE", mode == "dev")

    metrics_token = env.get("BROKER_METRICS_TOKEN") or None
    if metrics_token is not None and len(metrics_token) < 16:
        raise ConfigError("BROKER_METRICS_TOKEN must be at least 16 characters long.")

    level = (env.get("BROKER_LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("BROKER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR.")

    return Settings(
        public_url=public_url,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=secret,
        env=mode,
        bootstrap_admin_key=Secret(bootstrap) if bootstrap else None,
        max_saml_bytes=_int(env, "BROKER_MAX_SAML_BYTES", 512 * 1024),
        max_json_bytes=_int(env, "BROKER_MAX_JSON_BYTES", 1024 * 1024),
        # a connection's own oidc.timeout is at most 60 s, and this is every connection's default
        upstream_timeout=float(_int(env, "BROKER_UPSTREAM_TIMEOUT", 10, maximum=60)),
        login_ttl=_int(env, "BROKER_LOGIN_TTL", 600, minimum=30, maximum=86400),
        dev_idp=dev_idp,
        log_level=level,
        upstream_allow_private=allow_private,
        previous_secret_keys=tuple(previous),
        proxy_hops=_int(env, "BROKER_PROXY_HOPS", 0, minimum=0),
        metrics_token=Secret(metrics_token) if metrics_token else None,
        access_log=_bool(env, "BROKER_ACCESS_LOG", True),
    )


def check_workers(settings: Settings, workers: int) -> None:
    """SPEC: the in-process state store is single-process only."""
    if workers > 1 and settings.redis_url is None:
        raise ConfigError(
            f"Refusing to start {workers} workers with the in-process state store: "
            "set REDIS_URL so workers share login state, or use --workers 1."
        )
    if workers > 1 and settings.database_url.startswith("sqlite:") and settings.is_production:
        raise ConfigError("Several workers on SQLite in production is not supported; use PostgreSQL.")


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent

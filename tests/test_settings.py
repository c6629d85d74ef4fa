"""Settings: read once from the environment, validated with sentences an operator can act on."""

from __future__ import annotations

import pytest

from broker.errors import ConfigError
from broker.settings import DEV_SECRET_KEY, check_workers, load_settings

GOOD_SECRET = "x" * 32


def test_defaults_are_the_embedded_dev_setup() -> None:
    s = load_settings({})
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.database_url.startswith("sqlite:///")
    assert s.redis_url is None
    assert s.env == "dev"
    assert s.secret_key.reveal() == DEV_SECRET_KEY
    assert s.max_saml_bytes == 512 * 1024


def test_secret_never_prints() -> None:
    s = load_settings({"BROKER_SECRET_KEY": GOOD_SECRET, "BROKER_BOOTSTRAP_ADMIN_KEY": "b" * 20})
    assert GOOD_SECRET not in repr(s) and GOOD_SECRET not in str(s)
    assert "b" * 20 not in repr(s)


def test_production_requires_secret_key() -> None:
    with pytest.raises(ConfigError, match="BROKER_SECRET_KEY"):
        load_settings({"BROKER_ENV": "production", "BROKER_PUBLIC_URL": "https://sso.example.com"})


def test_production_refuses_http_public_url() -> None:
    with pytest.raises(ConfigError, match="https"):
        load_settings({"BROKER_ENV": "production", "BROKER_SECRET_KEY": GOOD_SECRET,
                       "BROKER_PUBLIC_URL": "http://sso.example.com"})


def test_production_refuses_dev_idp() -> None:
    with pytest.raises(ConfigError, match="development IdP"):
        load_settings({"BROKER_ENV": "production", "BROKER_SECRET_KEY": GOOD_SECRET,
                       "BROKER_PUBLIC_URL": "https://sso.example.com", "BROKER_DEV_IDP": "true"})


def test_short_secret_refused() -> None:
    with pytest.raises(ConfigError, match="32"):
        load_settings({"BROKER_SECRET_KEY": "short"})


@pytest.mark.parametrize(
    "env, match",
    [
        ({"BROKER_ENV": "staging"}, "BROKER_ENV"),
        ({"BROKER_PUBLIC_URL": "ftp://x"}, "BROKER_PUBLIC_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"BROKER_MAX_SAML_BYTES": "lots"}, "BROKER_MAX_SAML_BYTES"),
        # beyond what a connection accepts as its timeout (was: every OIDC login refused)
        ({"BROKER_UPSTREAM_TIMEOUT": "61"}, "BROKER_UPSTREAM_TIMEOUT must be at most 60"),
        # beyond what Redis takes as a TTL (was: every /authorize a 503)
        ({"BROKER_LOGIN_TTL": "99999999999999999999999"}, "BROKER_LOGIN_TTL must be at most 86400"),
        ({"BROKER_LOGIN_TTL": "29"}, "BROKER_LOGIN_TTL must be at least 30"),
        ({"BROKER_METRICS_TOKEN": "short"}, "BROKER_METRICS_TOKEN must be at least 16"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env)


def test_postgres_urls_use_psycopg3() -> None:
    assert load_settings({"DATABASE_URL": "postgresql://u@h/db"}).sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert load_settings({"DATABASE_URL": "postgresql+psycopg://u@h/db"}).sqlalchemy_url.startswith(
        "postgresql+psycopg://")


def test_several_workers_need_redis() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        check_workers(load_settings({}), 2)
    check_workers(load_settings({}), 1)
    check_workers(load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0"}), 4)


def test_proxy_hops_set_the_client_address_from_x_forwarded_for(tmp_path: object) -> None:
    from flask import request

    from broker.app import create_app

    settings = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/p.db", "BROKER_PROXY_HOPS": "1"})
    app = create_app(settings)

    @app.get("/_addr")
    def addr() -> str:
        return request.remote_addr or ""

    r = app.test_client().get("/_addr", headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.data == b"203.0.113.7"
    direct = create_app(load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}))
    direct.add_url_rule("/_addr", "addr", addr)
    assert direct.test_client().get("/_addr", headers={"X-Forwarded-For": "203.0.113.7"}).data != b"203.0.113.7"


def test_the_largest_timeouts_allowed_are_usable() -> None:
    settings = load_settings({"BROKER_UPSTREAM_TIMEOUT": "60", "BROKER_LOGIN_TTL": "86400"})
    assert settings.upstream_timeout == 60.0 and settings.login_ttl == 86400


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DATABASE_URL", "sqlite://", "in-memory"),
    ("DATABASE_URL", "sqlite:///", "in-memory"),
    ("DATABASE_URL", "sqlite:///:memory:", "in-memory"),
    ("DATABASE_URL", "postgresql://", "name the PostgreSQL database"),
    ("DATABASE_URL", "postgresql://broker@db.internal:5432/", "name the PostgreSQL database"),
    ("DATABASE_URL", "postgresql://::bad", "cannot be read"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:notaport/x", "cannot be read"),
    ("REDIS_URL", "redis://127.0.0.1:6379/abc", "database number"),
    ("REDIS_URL", "redis://127.0.0.1:notaport/6", "invalid port"),
    ("REDIS_URL", "unix:///run/redis.sock?db=x", "database number"),
    ("BROKER_PUBLIC_URL", "https://sso.example.com:99999", "invalid port"),
    ("BROKER_SECRET_KEY", " " * 40, "not counting spaces"),
])
def test_values_no_one_means_are_refused_with_a_sentence(name: str, value: str, says: str) -> None:
    """Each was accepted and then failed late (a traceback in every worker), or silently did something else:
    an in-memory database that a command 'applied' to and that vanished, Redis database 0 for '/abc'."""
    with pytest.raises(ConfigError, match=says) as err:
        load_settings({name: value})
    assert name in err.value.message or name == "BROKER_SECRET_KEY"


@pytest.mark.parametrize(("name", "value"), [
    ("DATABASE_URL", "sqlite:///relative/broker.db"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    ("DATABASE_URL", "postgresql+psycopg://u:p%40ss@db:5432/broker?sslmode=require"),
    ("DATABASE_URL", "postgresql:///broker?host=/var/run/postgresql"),
    ("REDIS_URL", "redis://127.0.0.1:6379"),
    ("REDIS_URL", "rediss://:pw@redis.internal:6380/3"),
    ("REDIS_URL", "unix:///run/redis.sock?db=2"),
    ("BROKER_SECRET_KEY", "k" * 40 + "\n"),  # used exactly as given: a key read from a file keeps its newline
])
def test_usual_values_are_accepted(name: str, value: str) -> None:
    load_settings({name: value})

"""Shared fixtures: settings, a migrated database per test (SQLite, and PostgreSQL when configured),
the Flask app and client, and admin keys. PostgreSQL runs when TEST_DATABASE_URL points at a
server (never DATABASE_URL: that is the broker's own); each test gets its own schema there."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from broker.ports import FrozenClock

pytest_plugins = ["tests.conftest_state"]

ROOT = Path(__file__).resolve().parents[1]
VENDOR_SAMPLES = ROOT.parent / "shared" / "vendor-samples"
PG_SKIP_REASON = (
    "PostgreSQL tests need TEST_DATABASE_URL pointing at a server, e.g. postgresql://postgres@127.0.0.1:5432/test"
    " (DATABASE_URL is never used: a shell set up to run the broker cannot point the tests at its database)"
)
BOOTSTRAP_KEY = "test-bootstrap-admin-key-0123456789"
SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnop"


def configured_pg_url() -> str | None:
    url = os.environ.get("TEST_DATABASE_URL") or ""
    return url if url.startswith(("postgresql", "postgres://")) else None


def _psycopg(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = configured_pg_url()
    if not url:
        pytest.skip(PG_SKIP_REASON)
    engine = create_engine(_psycopg(url), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001
        pytest.skip(PG_SKIP_REASON + " (the server did not answer)")
    finally:
        engine.dispose()
    return _psycopg(url)


@pytest.fixture
def pg_schema_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database URL whose search_path is a fresh schema, dropped afterwards."""
    base = request.getfixturevalue("pg_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def clock() -> FrozenClock:
    import time

    return FrozenClock(time.time())


def make_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "BROKER_SECRET_KEY": SECRET_KEY,
        "BROKER_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP_KEY,
        "BROKER_PUBLIC_URL": "http://broker.test",
    }
    env.update(extra)
    return env


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    from broker.app import create_app
    from broker.settings import load_settings

    application = create_app(load_settings(make_env(database_url)))
    application.config["TESTING"] = True
    yield application
    close_app(application)


def close_app(application: Flask) -> None:
    """End of a test's app: write the last-login stamps it still holds (the writer would otherwise try at
    interpreter exit, after the test's PostgreSQL schema is gone), then close its database connections."""
    extras = application.extensions["broker"].extras
    extras["last_logins"].flush()
    extras["engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}


class AdminClient:
    """Thin helper over the Flask test client for admin API calls."""

    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.open(f"/admin/v1{path}", method=method, json=body, headers=self.headers, **kw)

    def tenant(self, slug: str = "acme", name: str = "Acme Corp") -> dict[str, Any]:
        r = self.call("POST", "/tenants", {"slug": slug, "name": name})
        assert r.status_code == 201, r.get_json()
        out: dict[str, Any] = r.get_json()
        return out


@pytest.fixture
def admin(client: FlaskClient) -> AdminClient:
    return AdminClient(client, BOOTSTRAP_KEY)

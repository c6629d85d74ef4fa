"""broker.web.context: services() answers the app that handles the request, and outside a request the app of
the current app context."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from broker.web.context import current_request, services
from tests.conftest import close_app, make_env


def _app(tmp_path: Path, name: str) -> Flask:
    from broker.app import create_app
    from broker.settings import load_settings

    app = create_app(load_settings(make_env(f"sqlite:///{tmp_path / name}.db",
                                            BROKER_PUBLIC_URL=f"http://{name}.test")))
    app.config["TESTING"] = True
    seen: list[object] = []

    @app.get("/_which")
    def which() -> dict[str, object]:
        seen.append(current_request())
        return {"public_url": services().settings.public_url, "path": current_request().path}

    app.extensions["seen"] = seen
    return app


def test_each_request_sees_its_own_apps_services_and_none_leak_out(tmp_path: Path) -> None:
    a, b = _app(tmp_path, "a"), _app(tmp_path, "b")
    try:
        for app, url in ((a, "http://a.test"), (b, "http://b.test"), (a, "http://a.test")):
            r = app.test_client().get("/_which")
            assert r.status_code == 200
            assert r.get_json() == {"public_url": url, "path": "/_which"}
        with b.app_context():  # outside a request: the app context's app, not the last request's
            assert services().settings.public_url == "http://b.test"
        with a.test_request_context("/x"):  # a request context without the request hooks
            assert services().settings.public_url == "http://a.test"
            assert current_request().path == "/x"
        assert all(type(req).__name__ == "Request" for req in a.extensions["seen"])  # the object, not the proxy
    finally:
        close_app(a)
        close_app(b)

"""The SAML HTTP-POST binding page (broker.web.steps.render_step) in real Chromium, under its own CSP: the
form submits itself, and no script but its own would run."""

from __future__ import annotations

from typing import Any

from flask import Flask

from broker.upstream.base import AutoPost
from broker.web.steps import SUBMIT, render_step

START = "https://broker.example/start"
TARGET = "https://idp.example/sso"


def _autopost(fields: dict[str, str], *, extra_script: str | None = None) -> tuple[str, dict[str, str]]:
    with Flask(__name__).app_context():
        resp = render_step(AutoPost(url=TARGET, fields=fields))
    body = resp.get_data(as_text=True)
    if extra_script is not None:  # what an injection would add: under the page's CSP it must not run
        body = body.replace(f"<script>{SUBMIT}</script>", f"<script>{extra_script}</script><script>{SUBMIT}</script>")
    return body, dict(resp.headers)


def _serve(page: Any, body: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    posted: list[dict[str, Any]] = []

    def start(route: Any) -> None:
        route.fulfill(status=200, body=body, headers=headers)

    def target(route: Any) -> None:
        req = route.request
        posted.append({"method": req.method, "body": req.post_data})
        route.fulfill(status=200, body="<p>received</p>", headers={"Content-Type": "text/html"})

    page.route(START, start)
    page.route(TARGET, target)
    return posted


def test_the_page_posts_its_fields_to_the_idp_under_its_csp(page: Any) -> None:
    body, headers = _autopost({"SAMLRequest": "PHNhbWxwOkF1dGhuUmVxdWVzdC8+", "RelayState": "a&b<c>"})
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    posted = _serve(page, body, headers)
    page.goto(START)
    page.wait_for_url(TARGET)
    assert posted == [{"method": "POST", "body": "SAMLRequest=PHNhbWxwOkF1dGhuUmVxdWVzdC8%2B&RelayState=a%26b%3Cc%3E"}]


def test_an_inline_script_other_than_its_own_does_not_run(page: Any) -> None:
    body, headers = _autopost({"SAMLRequest": "x"}, extra_script="document.title = 'injected'")
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    posted = _serve(page, body, headers)
    page.goto(START)
    page.wait_for_url(TARGET)
    assert len(posted) == 1, "the page's own script still ran"
    assert any("script" in v for v in violations), violations


APP = "https://app.example/callback"


def test_a_form_post_answer_tells_the_app_the_broker_s_origin(page: Any) -> None:
    """response_mode=form_post: the app receives Origin: https://broker.example (an app whose framework checks
    Origin on POSTs can trust the broker), and the Referer is that origin alone, never the page's URL."""
    with Flask(__name__).app_context():
        resp = render_step(AutoPost(url=APP, fields={"code": "c0de", "state": "s"}), framed_by=APP)
    seen: list[dict[str, str]] = []

    def target(route: Any) -> None:
        seen.append(route.request.all_headers())
        route.fulfill(status=200, body="<p>received</p>", headers={"Content-Type": "text/html"})

    page.route(START + "?client_id=app&login_hint=alice%40acme.test",
               lambda route: route.fulfill(status=200, body=resp.get_data(as_text=True), headers=dict(resp.headers)))
    page.route(APP, target)
    page.goto(START + "?client_id=app&login_hint=alice%40acme.test")
    page.wait_for_url(APP)
    assert len(seen) == 1
    assert seen[0].get("origin") == "https://broker.example"
    assert seen[0].get("referer") in (None, "https://broker.example/")
